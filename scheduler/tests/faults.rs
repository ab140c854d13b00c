//! Faults the engine must ride out: timers under steady traffic, leases
//! that never reached their worker, streams that went quiet. Each test
//! drives the Work protocol message by message.

mod common;

use std::time::{Duration, Instant};

use common::mesh::{Db, Mesh};
use devcycle::proto::scheduler::v1 as pb;
use tonic::transport::Channel;

type Client = devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient<Channel>;

fn one(agent: &str, heartbeat_ms: u64, max_attempts: u32) -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest {
        task: Some(pb::TaskSpec {
            id: "t".into(),
            target: Some(pb::task_spec::Target::Agent(pb::AgentRef {
                name: agent.into(),
                version: String::new(),
            })),
            input: "{}".into(),
            retry: Some(pb::RetryPolicy {
                max_attempts,
                ..Default::default()
            }),
            timeouts: Some(pb::Timeouts {
                heartbeat_ms,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn get(c: &mut Client, id: &str) -> pb::Run {
    c.get_run(pb::GetRunRequest { run_id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap()
}

/// Polls until `f` holds for the run, for at most `within`.
async fn until(
    c: &mut Client,
    id: &str,
    within: Duration,
    f: impl Fn(&pb::Run) -> bool,
) -> pb::Run {
    let deadline = Instant::now() + within;
    loop {
        let r = get(c, id).await;
        if f(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn terminal(r: &pb::Run) -> bool {
    r.state != pb::RunState::Running as i32
}

/// Defect: any batch without a sweep pushed the next sweep a second ahead,
/// so under steady traffic (here credits every 200 ms) an expired lease
/// never failed.
#[tokio::test]
async fn timers_fire_under_steady_traffic() {
    let m = Mesh::start(Db::Sqlite).await;
    let mut w = m.raw_worker(&m.scheduler, "steady", 1, vec![]).await;
    w.credit(1);
    let mut c = m.client();
    let run = submit(&mut c, one("hang", 1000, 1)).await;
    w.assignment(Duration::from_secs(5)).await;
    let leased = Instant::now();
    // Traffic that never touches the lease: credits, five times a second.
    let traffic = {
        let tx = w.tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let credit = pb::work_request::Msg::Credit(pb::CreditGrant { credits: 1 });
                if tx.send(pb::WorkRequest { msg: Some(credit) }).is_err() {
                    return;
                }
            }
        })
    };
    // Due one heartbeat timeout after the lease; swept within a second of
    // that (half a second more for a busy machine).
    let r = until(&mut c, &run.id, Duration::from_millis(2500), terminal).await;
    let took = leased.elapsed();
    traffic.abort();
    let e = r.tasks[0].error.as_ref().unwrap();
    assert_eq!(e.kind, "heartbeat_timeout", "{r:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    match w.next(Duration::from_secs(2)).await {
        Some(pb::work_response::Msg::Cancel(_)) => {}
        other => panic!("the worker is told to stop: {other:?}"),
    }
}

async fn submit(c: &mut Client, task: pb::SubmitTaskRequest) -> pb::Run {
    c.submit_task(task).await.unwrap().into_inner().run.unwrap()
}

/// Submits `task`, lets worker `name` (session 1) lease it, then drops
/// that worker's stream. Returns the run.
async fn leased_then_dropped(
    m: &Mesh,
    c: &mut Client,
    name: &str,
    task: pb::SubmitTaskRequest,
) -> pb::Run {
    let w = m.raw_worker(&m.scheduler, name, 1, vec![]).await;
    w.credit(1);
    let run = submit(c, task).await;
    until(c, &run.id, Duration::from_secs(5), |r| {
        r.tasks[0].state == pb::TaskState::Leased as i32
    })
    .await;
    drop(w);
    run
}

/// Defect: a committed lease that never reached the worker cost an
/// attempt. The worker reconnects listing what it holds; the rest goes back
/// unspent (here the only attempt allowed is still there).
#[tokio::test]
async fn a_lease_that_never_arrived_costs_no_attempt() {
    let m = Mesh::start(Db::Postgres).await;
    let mut c = m.client();
    // The stream breaks before the worker read the assignment.
    let run = leased_then_dropped(&m, &mut c, "flaky-net", one("echo", 30_000, 1)).await;
    let mut w = m.raw_worker(&m.scheduler, "flaky-net", 2, vec![]).await;
    w.credit(1);
    let a = w.assignment(Duration::from_secs(5)).await;
    let lease = a.lease.unwrap();
    assert_eq!(lease.attempt, 1, "the undelivered attempt was not spent");
    w.send(pb::work_request::Msg::Result(pb::TaskResult {
        lease: Some(lease),
        outcome: Some(pb::task_result::Outcome::Output("{}".into())),
        ..Default::default()
    }));
    let r = until(&mut c, &run.id, Duration::from_secs(5), terminal).await;
    assert_eq!(r.state, pb::RunState::Succeeded as i32, "{r:?}");
}

/// A new process of a worker lost what the old one held: failed attempts,
/// retried at once rather than after the heartbeat timeout.
#[tokio::test]
async fn a_restarted_worker_loses_its_leases_at_once() {
    let m = Mesh::start(Db::Sqlite).await;
    let mut c = m.client();
    let run = leased_then_dropped(&m, &mut c, "phoenix", one("echo", 60_000, 3)).await;
    let _w = m.raw_worker(&m.scheduler, "phoenix", 1, vec![]).await;
    let r = until(&mut c, &run.id, Duration::from_secs(5), |r| {
        r.tasks[0].state != pb::TaskState::Leased as i32
    })
    .await;
    let t = &r.tasks[0];
    assert_eq!(t.error.as_ref().unwrap().kind, "worker_lost");
    assert_eq!(t.attempt, 1);
}

/// Defect: a stream whose worker went quiet (stopped, or gone behind a
/// half-open connection) kept its credits for ~40 s, and new tasks were
/// leased into it. Silent for three heartbeat intervals, it is closed.
#[tokio::test]
async fn a_silent_stream_loses_its_credits() {
    let m = Mesh::start(Db::Sqlite).await;
    let mut quiet = m.raw_worker(&m.scheduler, "quiet", 1, vec![]).await;
    quiet.credit(5);
    let opened = Instant::now();
    assert!(quiet.next(Duration::from_secs(5)).await.is_none(), "closed");
    // Three intervals of 200 ms, and room for a busy machine.
    assert!(
        opened.elapsed() < Duration::from_secs(2),
        "{:?}",
        opened.elapsed()
    );
    let mut c = m.client();
    let run = submit(&mut c, one("echo", 30_000, 1)).await;
    assert_eq!(
        get(&mut c, &run.id).await.tasks[0].state,
        pb::TaskState::Ready as i32,
        "nothing was leased to the closed stream"
    );
    let mut live = m.raw_worker(&m.scheduler, "live", 1, vec![]).await;
    live.credit(1);
    assert_eq!(
        live.assignment(Duration::from_secs(5))
            .await
            .lease
            .unwrap()
            .attempt,
        1
    );
}

fn logs(lease: &pb::LeaseRef, lines: &[&str]) -> pb::work_request::Msg {
    pb::work_request::Msg::Logs(pb::TaskLogs {
        lease: Some(lease.clone()),
        lines: lines
            .iter()
            .map(|l| pb::LogLine {
                stream: "stdout".into(),
                line: (*l).into(),
                ..Default::default()
            })
            .collect(),
    })
}

/// Defect: any worker could write log lines into any task (log messages
/// were not checked against the lease). Now only the stream holding the
/// lease writes its logs, and only while it holds it.
#[tokio::test]
async fn logs_are_fenced_like_results() {
    let m = Mesh::start(Db::Sqlite).await;
    let mut owner = m.raw_worker(&m.scheduler, "owner", 1, vec![]).await;
    owner.credit(1);
    let mut c = m.client();
    let run = submit(&mut c, one("hang", 30_000, 1)).await;
    let lease = owner
        .assignment(Duration::from_secs(5))
        .await
        .lease
        .unwrap();
    // Another worker that learned the lease writes, then tries to release
    // it; the refusal of the release shows its logs were handled first.
    let mut thief = m.raw_worker(&m.scheduler, "thief", 1, vec![]).await;
    thief.send(logs(&lease, &["forged"]));
    thief.send(pb::work_request::Msg::Release(lease.clone()));
    match thief.next(Duration::from_secs(5)).await {
        Some(pb::work_response::Msg::ResultAck(a)) => assert!(!a.accepted, "{a:?}"),
        other => panic!("{other:?}"),
    }
    owner.send(logs(&lease, &["one", "two"]));
    owner.send(pb::work_request::Msg::Result(pb::TaskResult {
        lease: Some(lease.clone()),
        outcome: Some(pb::task_result::Outcome::Output("{}".into())),
        ..Default::default()
    }));
    match owner.next(Duration::from_secs(5)).await {
        Some(pb::work_response::Msg::ResultAck(a)) => assert!(a.accepted, "{a:?}"),
        other => panic!("{other:?}"),
    }
    // After its result, the owner no longer holds the lease either.
    owner.send(logs(&lease, &["late"]));
    owner.send(pb::work_request::Msg::Heartbeat(pb::LeaseHeartbeat {
        leases: vec![lease.clone()],
    }));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = tokio::time::timeout_at(deadline.into(), owner.inbound.message())
            .await
            .expect("a heartbeat answer")
            .unwrap()
            .unwrap();
        if let Some(pb::work_response::Msg::HeartbeatAck(a)) = m.msg {
            assert_eq!(a.lost.len(), 1);
            break;
        }
    }
    let lines: Vec<String> = c
        .get_task_logs(pb::GetTaskLogsRequest {
            task_id: run.tasks[0].id.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .lines
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(lines, ["one", "two"]);
}
