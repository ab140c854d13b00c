//! What workers and schedulers, as real processes, promise each other: a
//! worker heartbeats each lease at its task's cadence, a drain does not
//! hand back work that started, and one SQLite database serves one process.

mod common;

use std::time::{Duration, Instant};

use common::*;
use devcycle::proto::scheduler::v1 as pb;

/// Defect: a task whose heartbeat timeout is shorter than the scheduler's
/// heartbeat interval (here 600 ms against 3 s) timed out on every long
/// attempt. The worker heartbeats each lease at a third of its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_heartbeat_timeout_is_kept() {
    let cluster = Cluster::start(false).await;
    let _s = cluster.spawn_scheduler_with(&[("DEVCYCLE_SCHEDULER__HEARTBEAT_INTERVAL_MS", "3000")]);
    cluster.apply(&sleeper("steady", "sleep 2"));
    let _e = cluster.spawn_executor("beater", 1);
    let run = cluster
        .scheduler_client()
        .submit_task(task("steady", "{}", 600, 1))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let done = cluster.wait_run(&run.id, Duration::from_secs(20)).await;
    assert_eq!(done.state, pb::RunState::Succeeded as i32, "{done:?}");
    assert_eq!(done.tasks[0].output, r#"{"attempt":1}"#);
}

/// Defect: a drain handed started tasks back as unstarted (the attempt
/// undone), so a task longer than the drain deadline ran attempt 1 forever.
/// Now it is a failed attempt, retried as attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_task_counts_its_attempt() {
    let cluster = Cluster::start(true).await;
    cluster.apply(&sleeper("long", "sleep 30"));
    let a = cluster.spawn_executor("drained", 1);
    let mut c = cluster.scheduler_client();
    let run = c
        .submit_task(task("long", "{}", 5000, 3))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    cluster
        .wait_leased(&run.id, "t", Duration::from_secs(10))
        .await;
    // SIGTERM drains: 2 s (the cluster's drain_ms) for running tasks.
    a.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let failed = loop {
        let r = c
            .get_run(pb::GetRunRequest {
                run_id: run.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        let t = r.tasks[0].clone();
        if t.error.is_some() {
            break t;
        }
        assert!(Instant::now() < deadline, "no failure reported: {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed.error.as_ref().unwrap().kind, "worker_drained");
    assert_eq!(failed.attempt, 1);
    let _b = cluster.spawn_executor("fresh", 1);
    let done = cluster.wait_run(&run.id, Duration::from_secs(20)).await;
    assert_eq!(done.state, pb::RunState::Succeeded as i32, "{done:?}");
    assert_eq!(done.tasks[0].output, r#"{"attempt":2}"#);
}

/// Defect: two processes on one SQLite file shared event ids and lost
/// outbox events. The second is refused at start, naming the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_one_sqlite_file_is_refused() {
    // This process's scheduler holds the cluster's scheduler database.
    let cluster = Cluster::start(true).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let (mut cmd, log) = cluster.scheduler_command(&listen);
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the second scheduler kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        text.contains("in use by another devcycle process")
            && text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    assert!(
        std::net::TcpStream::connect(&listen).is_err(),
        "it never served"
    );
}
