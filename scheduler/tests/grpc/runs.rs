//! Runs over the wire: to the end, watched, retried into the dead-letter
//! queue, and cancelled.

use std::time::Duration;

use devcycle::proto::scheduler::v1 as pb;
use devcycle::testkit::expect_err;
use devcycle_scheduler::spec_file;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::common::mesh::{Db, Mesh};
use crate::{inline, task};

#[tokio::test]
async fn a_workflow_runs_to_the_end() {
    let m = Mesh::start(Db::Sqlite).await;
    let _w = m.worker("w1", 4);
    let mut c = m.client();
    let wf = spec_file::parse(include_str!("../../../examples/workflows/hello.yaml")).unwrap();
    let mut req = pb::SubmitRunRequest {
        workflow: Some(pb::submit_run_request::Workflow::Spec(wf)),
        inputs: [("who".to_owned(), "\"world\"".to_owned())].into(),
        wait: true,
        wait_timeout_ms: 10_000,
        ..Default::default()
    };
    req.idempotency_key = "hello-1".into();
    let run = c.submit_run(req.clone()).await.unwrap().into_inner();
    assert!(run.created);
    let run = run.run.unwrap();
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    let out = |k: &str| -> serde_json::Value {
        serde_json::from_str(&run.tasks.iter().find(|t| t.key == k).unwrap().output).unwrap()
    };
    assert_eq!(out("greet")["greeting"], "hello world");
    assert_eq!(out("left")["heard"], "hello world");
    let join = run.tasks.iter().find(|t| t.key == "join").unwrap();
    let join_input: serde_json::Value = serde_json::from_str(&join.input).unwrap();
    assert_eq!(join_input["right"]["side"], "right");

    // The same key: the same run, not a new one.
    let again = c.submit_run(req).await.unwrap().into_inner();
    assert!(!again.created);
    assert_eq!(again.run.unwrap().id, run.id);

    // A single task.
    let one = c
        .submit_task(pb::SubmitTaskRequest {
            task: Some(task("", "echo", &[], r#"{"n":1}"#)),
            wait: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(one.state, pb::RunState::Succeeded as i32);
    assert_eq!(one.tasks[0].output, r#"{"n":1}"#);
}

#[tokio::test]
async fn watch_replays_resumes_and_ends() {
    let m = Mesh::start(Db::Sqlite).await;
    let mut c = m.client();
    let run = c
        .submit_run(inline(vec![
            task("a", "noop", &[], ""),
            task("b", "noop", &["a"], ""),
        ]))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let mut live = c
        .watch_run(pb::WatchRunRequest {
            run_id: run.id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = live.next().await.unwrap().unwrap().event.unwrap();
    assert_eq!(
        (first.sequence, first.kind),
        (1, pb::RunEventKind::RunStarted as i32)
    );
    // Nothing more until a worker shows up.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), live.next())
            .await
            .is_err()
    );
    let _w = m.worker("w1", 2);
    let mut seqs = vec![1];
    let mut kinds = vec![first.kind];
    while let Some(e) = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .unwrap()
    {
        let e = e.unwrap().event.unwrap();
        seqs.push(e.sequence);
        kinds.push(e.kind);
    }
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "no gaps or duplicates"
    );
    assert_eq!(
        kinds.last(),
        Some(&(pb::RunEventKind::RunSucceeded as i32)),
        "ends after the terminal event"
    );
    // Resume after 3: exactly the rest.
    let rest: Vec<i64> = c
        .watch_run(pb::WatchRunRequest {
            run_id: run.id.clone(),
            after_sequence: 3,
        })
        .await
        .unwrap()
        .into_inner()
        .map(|e| e.unwrap().event.unwrap().sequence)
        .collect()
        .await;
    assert_eq!(rest, (4..=seqs.len() as i64).collect::<Vec<_>>());
    // Resuming after the end returns at once, empty.
    let last = *seqs.last().unwrap();
    let none: Vec<_> = c
        .watch_run(pb::WatchRunRequest {
            run_id: run.id.clone(),
            after_sequence: last,
        })
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert!(none.is_empty());
    expect_err(
        c.watch_run(pb::WatchRunRequest {
            run_id: run.id.clone(),
            after_sequence: last + 1,
        })
        .await,
        Code::FailedPrecondition,
        "after_sequence",
    );
}

#[tokio::test]
async fn always_failing_task_retries_then_dead_letters() {
    let m = Mesh::start(Db::Sqlite).await;
    let w = m.worker("w1", 2);
    let mut c = m.client();
    let mut t = task("f", "flaky", &[], "");
    t.retry = Some(pb::RetryPolicy {
        max_attempts: 4,
        initial_backoff_ms: 100,
        max_backoff_ms: 2000,
        backoff_multiplier: 2.0,
        jitter: 0.2,
        ..Default::default()
    });
    let run = c
        .submit_task(pb::SubmitTaskRequest {
            task: Some(t),
            wait: true,
            wait_timeout_ms: 20_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.state, pb::RunState::Failed as i32);
    let task = &run.tasks[0];
    assert_eq!((task.state, task.attempt), (pb::TaskState::Dead as i32, 4));
    assert_eq!(
        w.done
            .lock()
            .iter()
            .filter(|(id, _)| id == &task.id)
            .count(),
        4,
        "ran exactly max_attempts times"
    );
    // The delays grew: each TASK_FAILED names its delay.
    let events: Vec<pb::RunEvent> = crate::all_events(&mut c, &run.id).await;
    let delays: Vec<i64> = events
        .iter()
        .filter(|e| e.kind == pb::RunEventKind::TaskFailed as i32)
        .map(|e| {
            e.message
                .rsplit("retry in ")
                .next()
                .unwrap()
                .trim_end_matches(" ms")
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(delays.len(), 3);
    assert!(
        (80..=120).contains(&delays[0])
            && (160..=240).contains(&delays[1])
            && (320..=480).contains(&delays[2]),
        "{delays:?}"
    );
    let dlq = c
        .list_dead_letters(pb::ListDeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dlq.dead_letters.len(), 1);
    expect_err(
        c.requeue_dead_letter(pb::RequeueDeadLetterRequest {
            task_id: run.id.clone(),
        })
        .await,
        Code::NotFound,
        "does not exist",
    );
    // Fixed: requeue runs it again, and it succeeds.
    w.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    c.requeue_dead_letter(pb::RequeueDeadLetterRequest {
        task_id: task.id.clone(),
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
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
        if r.state == pb::RunState::Succeeded as i32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "requeued task did not finish: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    expect_err(
        c.requeue_dead_letter(pb::RequeueDeadLetterRequest {
            task_id: task.id.clone(),
        })
        .await,
        Code::FailedPrecondition,
        "not a dead letter",
    );
}

#[tokio::test]
async fn cancel_stops_running_tasks() {
    let m = Mesh::start(Db::Sqlite).await;
    let w = m.worker("w1", 2);
    let mut c = m.client();
    let run = c
        .submit_run(inline(vec![task("h", "hang", &[], "")]))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    // Wait until the worker holds it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
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
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = c
        .cancel_run(pb::CancelRunRequest {
            run_id: run.id.clone(),
            reason: "not needed".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(cancelled.state, pb::RunState::Cancelled as i32);
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while w.cancelled.lock().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker was not told within a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(w.cancelled.lock()[0], cancelled.tasks[0].id);
    expect_err(
        c.cancel_run(pb::CancelRunRequest {
            run_id: run.id.clone(),
            reason: String::new(),
        })
        .await,
        Code::FailedPrecondition,
        "already cancelled",
    );
    // Retry a cancelled task: it runs again.
    c.retry_task(pb::RetryTaskRequest {
        task_id: cancelled.tasks[0].id.clone(),
    })
    .await
    .unwrap();
    let r = c
        .get_run(pb::GetRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(r.state, pb::RunState::Running as i32);
}
