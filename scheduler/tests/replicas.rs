//! Two schedulers on one PostgreSQL database behave as one: whichever
//! replica a call reaches, waiting submits are answered when the run ends,
//! cancellations reach the worker wherever it is connected, and a worker
//! that moves is served only by its newest stream.

mod common;

use std::time::{Duration, Instant};

use common::mesh::{Db, Mesh};
use devcycle::proto::scheduler::v1 as pb;

fn task(agent: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        id: "t".into(),
        target: Some(pb::task_spec::Target::Agent(pb::AgentRef {
            name: agent.into(),
            version: String::new(),
        })),
        input: "{}".into(),
        ..Default::default()
    }
}

/// Defect: a waiting submit answered by a replica whose engine did not
/// finish the run returned only after the whole wait (60 s).
#[tokio::test]
async fn a_waiting_submit_is_answered_by_either_replica() {
    let m = Mesh::start(Db::Postgres).await;
    let other = m.replica().await;
    // The worker is on the first scheduler; callers ask the second.
    let _w = m.worker("w1", 4);
    let mut c = m.client_of(&other);
    for _ in 0..5 {
        let started = Instant::now();
        let run = c
            .submit_task(pb::SubmitTaskRequest {
                task: Some(task("echo")),
                wait: true,
                wait_timeout_ms: 30_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        let answered = devcycle::time::now_ms();
        assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
        let ended = devcycle::time::from_timestamp(run.end_time.as_ref()).unwrap();
        assert!(
            answered - ended < 1000,
            "answered {} ms after the run ended ({:?} in all)",
            answered - ended,
            started.elapsed()
        );
    }
}

/// Defect: CancelRun on one replica did not reach a worker connected to
/// the other.
#[tokio::test]
async fn a_cancel_reaches_the_worker_on_the_other_replica() {
    let m = Mesh::start(Db::Postgres).await;
    let other = m.replica().await;
    let w = m.worker("w1", 2);
    let mut c = m.client_of(&other);
    let run = c
        .submit_task(pb::SubmitTaskRequest {
            task: Some(task("hang")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = c
            .get_run(pb::GetRunRequest {
                run_id: run.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        if r.tasks[0].state == pb::TaskState::Leased as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "never leased");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.cancel_run(pb::CancelRunRequest {
        run_id: run.id.clone(),
        reason: "not needed".into(),
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    while w.cancelled.lock().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the worker was not told within a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(w.cancelled.lock()[0], run.tasks[0].id);
}

/// A worker whose newest stream is on another replica is not served by
/// its older stream here: that one is closed at once, not after a timeout.
#[tokio::test]
async fn a_worker_that_moves_is_served_by_its_newest_stream() {
    let m = Mesh::start(Db::Postgres).await;
    let other = m.replica().await;
    let mut old = m.raw_worker(&m.scheduler, "mover", 1, vec![]).await;
    old.credit(1);
    let mut new = m.raw_worker(&other, "mover", 2, vec![]).await;
    new.credit(1);
    // Keep the new stream talking while the old one is closed.
    let beat = {
        let tx = new.tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let hb = pb::work_request::Msg::Heartbeat(Default::default());
                if tx.send(pb::WorkRequest { msg: Some(hb) }).is_err() {
                    return;
                }
            }
        })
    };
    let closed = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match old.inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(s) => return Some(s),
            }
        }
    })
    .await
    .expect("the old stream is closed within a second");
    let status = closed.expect("with a status");
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    let mut c = m.client();
    c.submit_task(pb::SubmitTaskRequest {
        task: Some(task("echo")),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        new.assignment(Duration::from_secs(5))
            .await
            .lease
            .unwrap()
            .attempt,
        1
    );
    beat.abort();
}

/// Both replicas run a ticker over the same schedules: each tick is
/// claimed by one, so it starts one run and is counted once.
#[tokio::test]
async fn a_cron_tick_starts_one_run_across_replicas() {
    use common::schedule::{create, every_second, put_workflow, runs_of, until};
    let m = Mesh::start(Db::Postgres).await;
    let other = m.replica().await;
    let _w = m.worker("w1", 4);
    let mut c = m.client();
    let mut c2 = m.client_of(&other);
    put_workflow(&mut c, "cron-wf", "echo").await;
    let s = every_second("each-second", "cron-wf", pb::OverlapPolicy::Allow);
    create(&mut c2, s).await;
    until(&mut c, "each-second", Duration::from_secs(30), |s| {
        s.fired >= 4
    })
    .await;
    c.pause_schedule(pb::PauseScheduleRequest {
        name: "each-second".into(),
    })
    .await
    .unwrap();
    // A tick claimed before the pause may still be recorded: settle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = common::schedule::get(&mut c, "each-second").await;
    let runs = runs_of(&mut c, "cron-wf").await;
    assert_eq!(runs.len() as u64, s.fired, "{s:?}");
    // Each tick counted once: no more ticks recorded than passed between
    // the first tick after creation and the last one fired.
    let ms =
        |t: &Option<prost_types::Timestamp>| devcycle::time::from_timestamp(t.as_ref()).unwrap();
    let first_tick = (ms(&s.create_time) / 1000 + 1) * 1000;
    let ticks = (ms(&s.last_fire_time) - first_tick) / 1000 + 1;
    assert!(
        (s.fired + s.skipped + s.missed) as i64 <= ticks,
        "{ticks} ticks passed, {s:?}"
    );
}
