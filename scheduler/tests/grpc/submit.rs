//! Submitting runs: validation that names the field, idempotency keys,
//! and bounded input rendering.

use devcycle::identity::Kind;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::testkit::expect_err;
use devcycle_scheduler::spec_file;
use tonic::Code;

use crate::common::mesh::{Db, Mesh};
use crate::{inline, task};

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
    let wf = spec_file::parse(include_str!("../../../examples/workflows/hello.yaml")).unwrap();
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
