//! The scheduler over the wire, with a registry and a scripted worker.

mod common;

use devcycle::testkit::expect_err;
use std::time::Duration;

use common::mesh::{Db, Mesh};
use devcycle::identity::Kind;
use devcycle::proto::scheduler::v1 as pb;
use devcycle_scheduler::spec_file;
use tokio_stream::StreamExt;
use tonic::Code;

fn agent(name: &str) -> Option<pb::task_spec::Target> {
    Some(pb::task_spec::Target::Agent(pb::AgentRef {
        name: name.into(),
        version: String::new(),
    }))
}

fn task(id: &str, target: &str, deps: &[&str], input: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        id: id.into(),
        target: agent(target),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        input: input.into(),
        ..Default::default()
    }
}

fn inline(tasks: Vec<pb::TaskSpec>) -> pb::SubmitRunRequest {
    pb::SubmitRunRequest {
        workflow: Some(pb::submit_run_request::Workflow::Spec(pb::WorkflowSpec {
            name: "wf".into(),
            tasks,
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_input_is_named() {
    let m = Mesh::start(Db::Sqlite).await;
    let mut c = m.client();
    expect_err(
        c.submit_run(inline(vec![task("a", "ghost", &[], "")]))
            .await,
        Code::InvalidArgument,
        "spec.tasks[0].agent.name",
    );
    expect_err(
        c.submit_run(inline(vec![
            task("a", "noop", &["b"], ""),
            task("b", "noop", &["a"], ""),
        ]))
        .await,
        Code::InvalidArgument,
        "dependency cycle",
    );
    expect_err(
        c.submit_run(inline(vec![task("a", "noop", &["zz"], "")]))
            .await,
        Code::InvalidArgument,
        "spec.tasks[0].depends_on[0]",
    );
    expect_err(
        c.submit_run(inline(vec![
            task("a", "noop", &[], ""),
            task("b", "noop", &[], r#"{"x":"${tasks.a.output}"}"#),
        ]))
        .await,
        Code::InvalidArgument,
        "not upstream",
    );
    expect_err(
        c.submit_run(inline(vec![task("a", "noop", &[], r#"{"x":"${inputs"}"#)]))
            .await,
        Code::InvalidArgument,
        "spec.tasks[0].input",
    );
    expect_err(
        c.submit_run(inline(vec![task("a", "echo", &[], "[1,2]")]))
            .await,
        Code::InvalidArgument,
        "input schema",
    );
    let mut quick = task("a", "noop", &[], "");
    quick.timeouts = Some(pb::Timeouts {
        heartbeat_ms: 50,
        ..Default::default()
    });
    expect_err(
        c.submit_run(inline(vec![quick])).await,
        Code::InvalidArgument,
        "spec.tasks[0].timeouts.heartbeat_ms",
    );
    let mut cap = task("a", "noop", &[], "");
    cap.target = Some(pb::task_spec::Target::Capability("no.such".into()));
    expect_err(
        c.submit_run(inline(vec![cap])).await,
        Code::InvalidArgument,
        "spec.tasks[0].capability",
    );
    expect_err(
        c.submit_run(pb::SubmitRunRequest {
            workflow: Some(pb::submit_run_request::Workflow::WorkflowName(
                "nope".into(),
            )),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "workflow_name",
    );
    expect_err(
        c.submit_run(pb::SubmitRunRequest::default()).await,
        Code::InvalidArgument,
        "workflow_name",
    );
    expect_err(
        c.get_run(pb::GetRunRequest { run_id: "x".into() }).await,
        Code::InvalidArgument,
        "run_id",
    );
    expect_err(
        c.get_run(pb::GetRunRequest {
            run_id: uuid::Uuid::now_v7().to_string(),
        })
        .await,
        Code::NotFound,
        "does not exist",
    );
    expect_err(
        c.list_runs(pb::ListRunsRequest {
            page_token: "junk".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_token",
    );
    expect_err(
        c.list_runs(pb::ListRunsRequest {
            created_after: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "created_after",
    );
    // A NUL byte would make PostgreSQL refuse a whole batch: refused alone.
    expect_err(
        c.submit_task(pb::SubmitTaskRequest {
            task: Some(task("t", "noop", &[], "")),
            idempotency_key: "k\0".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "idempotency_key",
    );
    expect_err(
        c.submit_task(pb::SubmitTaskRequest {
            task: Some(task("t", "ghost", &[], "")),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "task.agent.name",
    );
    expect_err(
        c.submit_task(pb::SubmitTaskRequest {
            task: Some(task("t", "noop", &[], "{")),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "task.input",
    );
    let wf = spec_file::parse(include_str!("../../examples/workflows/hello.yaml")).unwrap();
    c.put_workflow(pb::PutWorkflowRequest { spec: Some(wf) })
        .await
        .unwrap();
    let by_name = |inputs: &[(&str, &str)]| pb::SubmitRunRequest {
        workflow: Some(pb::submit_run_request::Workflow::WorkflowName(
            "hello".into(),
        )),
        inputs: inputs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    expect_err(
        c.submit_run(by_name(&[])).await,
        Code::InvalidArgument,
        "inputs[who]",
    );
    expect_err(
        c.submit_run(by_name(&[("who", "\"x\""), ("extra", "1")]))
            .await,
        Code::InvalidArgument,
        "inputs[extra]",
    );
    expect_err(
        c.submit_run(by_name(&[("who", "not json")])).await,
        Code::InvalidArgument,
        "inputs[who]",
    );
    // Nothing was written by any of the refused submits.
    let runs = c
        .list_runs(pb::ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(runs.runs.is_empty());

    // Only workers take work; a worker only as itself; hello first.
    let mut user_work = m.client();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WorkRequest {
        msg: Some(pb::work_request::Msg::Hello(pb::WorkerHello {
            worker_id: "w1".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    expect_err(
        user_work
            .work(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await,
        Code::PermissionDenied,
        "Work",
    );
    let mut w1 = m.client_as(&m.pki.identity(Kind::Worker, "w1"));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WorkRequest {
        msg: Some(pb::work_request::Msg::Hello(pb::WorkerHello {
            worker_id: "w2".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    expect_err(
        w1.work(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await,
        Code::PermissionDenied,
        "hello.worker_id",
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WorkRequest {
        msg: Some(pb::work_request::Msg::Credit(pb::CreditGrant {
            credits: 1,
        })),
    })
    .await
    .unwrap();
    expect_err(
        w1.work(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await,
        Code::InvalidArgument,
        "hello",
    );
}

#[tokio::test]
async fn a_workflow_runs_to_the_end() {
    let m = Mesh::start(Db::Sqlite).await;
    let _w = m.worker("w1", 4);
    let mut c = m.client();
    let wf = spec_file::parse(include_str!("../../examples/workflows/hello.yaml")).unwrap();
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
async fn concurrent_submits_with_one_key_make_one_run() {
    let m = Mesh::start(Db::Postgres).await;
    let mut calls = Vec::new();
    for _ in 0..10 {
        let mut c = m.client();
        calls.push(tokio::spawn(async move {
            let mut r = inline(vec![task("a", "noop", &[], "")]);
            r.idempotency_key = "once".into();
            c.submit_run(r).await.unwrap().into_inner()
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for call in calls {
        let r = call.await.unwrap();
        created += r.created as usize;
        ids.insert(r.run.unwrap().id);
    }
    assert_eq!((ids.len(), created), (1, 1));
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
    let events: Vec<pb::RunEvent> = c
        .watch_run(pb::WatchRunRequest {
            run_id: run.id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .map(|e| e.unwrap().event.unwrap())
        .collect()
        .await;
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

#[test]
fn every_scheduler_method_has_a_policy_entry() {
    let policy = devcycle_scheduler::policy();
    let methods: Vec<String> = devcycle::proto::all_methods()
        .into_iter()
        .filter(|m| m.starts_with("/devcycle.scheduler.v1."))
        .collect();
    assert_eq!(methods.len(), 17);
    for m in methods {
        assert!(policy.has_entry(&m), "{m} has no policy entry");
    }
}

/// Defect: the input size limit was checked before rendering, so copies of
/// one large input or upstream output rendered to gigabytes and exhausted
/// the scheduler's memory. Rendering is bounded: at submit the input is
/// refused naming its field; downstream, the task dies `input_template`.
#[tokio::test]
async fn template_multiplication_is_bounded() {
    let m = Mesh::start(Db::Sqlite).await;
    let _w = m.worker("w1", 4);
    let mut c = m.client();
    // Just under the 256 KiB input limit, and gigabytes once rendered.
    let copies = |r: &str| serde_json::to_string(&vec![r; 240_000 / (r.len() + 3)]).unwrap();
    let big = serde_json::to_string(&"x".repeat(200 * 1024)).unwrap();
    let mut spec = pb::WorkflowSpec {
        name: "bomb".into(),
        inputs: vec![pb::WorkflowInput {
            name: "x".into(),
            required: true,
            ..Default::default()
        }],
        tasks: vec![task("a", "noop", &[], &copies("${inputs.x}"))],
        ..Default::default()
    };
    let submit = |spec: pb::WorkflowSpec, wait: bool| pb::SubmitRunRequest {
        workflow: Some(pb::submit_run_request::Workflow::Spec(spec)),
        inputs: [("x".to_owned(), big.clone())].into(),
        wait,
        wait_timeout_ms: 20_000,
        ..Default::default()
    };
    expect_err(
        c.submit_run(submit(spec.clone(), false)).await,
        Code::InvalidArgument,
        "spec.tasks[0].input: renders to more than",
    );
    // Downstream: `a` echoes the large input, `b` copies its output.
    spec.tasks = vec![
        task("a", "echo", &[], r#"{"pad": "${inputs.x}"}"#),
        task("b", "noop", &["a"], &copies("${tasks.a.output}")),
    ];
    let run = c
        .submit_run(submit(spec, true))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.state, pb::RunState::Failed as i32, "{run:?}");
    let b = run.tasks.iter().find(|t| t.key == "b").unwrap();
    let e = b.error.as_ref().unwrap();
    assert_eq!(e.kind, "input_template");
    assert!(e.message.contains("renders to more than"), "{e:?}");
}
