//! Failures of real processes: executors killed or stopped mid-task, a run
//! cancelled from the CLI, a scheduler killed while it works.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use devcycle::proto::scheduler::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_executor_task_is_retried_elsewhere_as_the_next_attempt() {
    let cluster = Cluster::start(true).await;
    cluster.apply(&sleeper("nap", "sleep 30"));
    let a = cluster.spawn_executor("exec-a", 1);
    let run = cluster
        .scheduler_client()
        .submit_task(task("nap", "{}", 1500, 3))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let t = cluster
        .wait_leased(&run.id, "t", Duration::from_secs(10))
        .await;
    assert_eq!((t.worker_id.as_str(), t.attempt), ("exec-a", 1));
    a.signal("KILL");
    let _b = cluster.spawn_executor("exec-b", 1);
    let done = cluster.wait_run(&run.id, Duration::from_secs(20)).await;
    assert_eq!(done.state, pb::RunState::Succeeded as i32);
    let t = &done.tasks[0];
    assert_eq!((t.worker_id.as_str(), t.attempt), ("exec-b", 2));
    assert_eq!(t.output, r#"{"attempt":2}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_executor_late_result_is_rejected_and_its_sandbox_torn_down() {
    let cluster = Cluster::start(true).await;
    let marker = format!("sleep 3.{}", std::process::id());
    cluster.apply(&sleeper("slow", &marker));
    let a = cluster.spawn_executor("stop-a", 1);
    let run = cluster
        .scheduler_client()
        .submit_task(task("slow", "{}", 1000, 3))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    cluster
        .wait_leased(&run.id, "t", Duration::from_secs(10))
        .await;
    a.signal("STOP");
    // The lease expires; another executor runs attempt 2.
    let _b = cluster.spawn_executor("stop-b", 1);
    let done = cluster.wait_run(&run.id, Duration::from_secs(20)).await;
    assert_eq!(done.state, pb::RunState::Succeeded as i32);
    assert_eq!(done.tasks[0].output, r#"{"attempt":2}"#);
    // Attempt 1 finished while its executor was stopped. Resumed, the
    // executor either reads the scheduler's cancellation first and drops the
    // result, or reports it and the scheduler refuses it: either way it is
    // not recorded.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    a.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = a.log_text();
        if log.contains("result rejected")
            || log.contains("cancelled by the scheduler: no heartbeat")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the late result was neither dropped nor rejected: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(processes_with(&marker), 0, "attempt 1's sandbox is gone");
    let after = cluster.wait_run(&run.id, Duration::from_secs(1)).await;
    assert_eq!(
        after.tasks[0].output, r#"{"attempt":2}"#,
        "recorded once, from attempt 2"
    );
    let events = cluster
        .scheduler_client()
        .watch_run(pb::WatchRunRequest {
            run_id: run.id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<i32> =
        tokio_stream::StreamExt::collect::<Vec<_>>(tokio_stream::StreamExt::map(events, |e| {
            e.unwrap().event.unwrap().kind
        }))
        .await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == pb::RunEventKind::TaskSucceeded as i32)
            .count(),
        1
    );

    // A stopped executor whose task is still running when it resumes: the
    // lost lease tears the sandbox down.
    let marker = format!("sleep 60.{}", std::process::id());
    cluster.apply(&sleeper("slower", &marker));
    drop(_b);
    let run = cluster
        .scheduler_client()
        .submit_task(task("slower", "{}", 1000, 3))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let t = cluster
        .wait_leased(&run.id, "t", Duration::from_secs(10))
        .await;
    assert_eq!(t.worker_id, "stop-a");
    a.signal("STOP");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        processes_with(&marker) > 0,
        "the sandbox runs on while its executor is stopped"
    );
    a.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_with(&marker) > 0 {
        assert!(
            Instant::now() < deadline,
            "the sandbox of a lost lease was not torn down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_the_cli_kills_the_process_tree_within_a_second() {
    let cluster = Cluster::start(true).await;
    let marker = format!("sleep 77.{}", std::process::id());
    cluster.apply(&sleeper("long", &format!("{marker} & {marker}")));
    let _a = cluster.spawn_executor("cancel-a", 1);
    let run = cluster
        .scheduler_client()
        .submit_task(task("long", "{}", 30_000, 1))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    cluster
        .wait_leased(&run.id, "t", Duration::from_secs(10))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_with(&marker) < 2 {
        assert!(Instant::now() < deadline, "the agent did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = cluster.cli(&["run", "cancel", &run.id, "--reason", "not needed"]);
    let cancelled_at = Instant::now();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    while processes_with(&marker) > 0 {
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(1),
            "the process tree outlived the cancel by a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let run = cluster.wait_run(&run.id, Duration::from_secs(1)).await;
    assert_eq!(run.state, pb::RunState::Cancelled as i32);
}

/// Submits with retries under an idempotency key until accepted.
async fn submit_until_accepted(
    cluster: &Cluster,
    key: &str,
    req: &pb::SubmitTaskRequest,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut r = req.clone();
        r.idempotency_key = key.into();
        if let Ok(resp) = cluster.scheduler_client().submit_task(r).await {
            return resp.into_inner().run.unwrap().id;
        }
        assert!(Instant::now() < deadline, "submit {key} never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_scheduler_loses_nothing_records_nothing_twice_and_timers_fire() {
    let cluster = Cluster::start(false).await;
    cluster.apply("examples/agents/echo.yaml");
    cluster.apply(
        &sleeper("twice", "exit 3")
            .replace("capabilities: [test.sleep]", "capabilities: [test.twice]"),
    );
    let mut scheduler = cluster.spawn_scheduler();
    let _x = cluster.spawn_executor("crash-x", 8);

    // A task whose retry timer (4 s) is pending across the crashes.
    let mut timer = task("twice", "{}", 30_000, 3);
    timer.task.as_mut().unwrap().retry = Some(pb::RetryPolicy {
        max_attempts: 3,
        initial_backoff_ms: 4000,
        ..Default::default()
    });
    let timer_run = submit_until_accepted(&cluster, "timer", &timer).await;

    let mut runs = Vec::new();
    for i in 0..300 {
        let key = format!("k-{i}");
        runs.push(
            submit_until_accepted(
                &cluster,
                &key,
                &task("echo", &format!(r#"{{"i":{i}}}"#), 30_000, 3),
            )
            .await,
        );
        if i == 100 {
            // Mid-claim: the executor is claiming and reporting under load.
            scheduler.signal("KILL");
            let _ = scheduler.child.wait();
            scheduler = cluster.spawn_scheduler();
        }
        if i == 200 {
            // Right after a commit that was acknowledged.
            scheduler.signal("KILL");
            let _ = scheduler.child.wait();
            scheduler = cluster.spawn_scheduler();
        }
    }
    let distinct: HashSet<&String> = runs.iter().collect();
    assert_eq!(
        distinct.len(),
        300,
        "one run per key: nothing submitted twice"
    );
    for (i, id) in runs.iter().enumerate() {
        let run = cluster.wait_run(id, Duration::from_secs(60)).await;
        assert_eq!(run.state, pb::RunState::Succeeded as i32, "run {i} {run:?}");
        assert_eq!(run.tasks[0].output, format!(r#"{{"i":{i}}}"#));
    }
    // Nothing recorded twice: one success event per run.
    let mut c = cluster.scheduler_client();
    for id in runs.iter().step_by(7) {
        let events: Vec<pb::RunEvent> =
            tokio_stream::StreamExt::collect::<Vec<_>>(tokio_stream::StreamExt::map(
                c.watch_run(pb::WatchRunRequest {
                    run_id: id.clone(),
                    after_sequence: 0,
                })
                .await
                .unwrap()
                .into_inner(),
                |e| e.unwrap().event.unwrap(),
            ))
            .await;
        let ok = events
            .iter()
            .filter(|e| e.kind == pb::RunEventKind::TaskSucceeded as i32)
            .count();
        assert_eq!(ok, 1, "run {id}: {events:?}");
    }
    // The retry timer set before the crashes still fired.
    let run = cluster.wait_run(&timer_run, Duration::from_secs(30)).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32);
    assert_eq!(run.tasks[0].attempt, 2);
    drop(scheduler);
}
