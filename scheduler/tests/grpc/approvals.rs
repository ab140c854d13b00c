//! Approval tasks over the wire: approved, rejected, timed out, never
//! handed to a worker, and refused bad input.

use std::time::{Duration, Instant};

use devcycle::proto::scheduler::v1 as pb;
use devcycle::testkit::expect_err;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::mesh::{Db, Mesh};
use crate::{inline, task};

type Client = devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient<Channel>;

fn gate(id: &str, approvers: &[&str], timeout_ms: u64) -> pb::TaskSpec {
    pb::TaskSpec {
        id: id.into(),
        target: Some(pb::task_spec::Target::Approval(pb::ApprovalSpec {
            message: "ship ${inputs.v}?".into(),
            approvers: approvers.iter().map(|a| a.to_string()).collect(),
            timeout_ms,
        })),
        ..Default::default()
    }
}

/// gate → after: `after` echoes who approved.
fn gated(approvers: &[&str], timeout_ms: u64) -> pb::SubmitRunRequest {
    let mut req = inline(vec![
        gate("gate", approvers, timeout_ms),
        task(
            "after",
            "echo",
            &["gate"],
            r#"{"by": "${tasks.gate.output.by}"}"#,
        ),
    ]);
    if let Some(pb::submit_run_request::Workflow::Spec(s)) = &mut req.workflow {
        s.inputs = vec![pb::WorkflowInput {
            name: "v".into(),
            default_value: "\"1.2\"".into(),
            ..Default::default()
        }];
    }
    req
}

async fn start(c: &mut Client, req: pb::SubmitRunRequest) -> pb::Run {
    c.submit_run(req).await.unwrap().into_inner().run.unwrap()
}

async fn task_of(c: &mut Client, run: &pb::Run, key: &str) -> pb::Task {
    let id = run.tasks.iter().find(|t| t.key == key).unwrap().id.clone();
    c.get_task(pb::GetTaskRequest { task_id: id })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
}

async fn until_run(c: &mut Client, id: &str, state: pb::RunState) -> pb::Run {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = c
            .get_run(pb::GetRunRequest { run_id: id.into() })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        if run.state == state as i32 {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run never got to {state:?}: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn decide(task_id: &str, approve: bool, comment: &str) -> pb::DecideApprovalRequest {
    pb::DecideApprovalRequest {
        task_id: task_id.into(),
        approve,
        comment: comment.into(),
    }
}

#[tokio::test]
async fn an_approved_gate_lets_the_run_go_on() {
    let m = Mesh::start(Db::Sqlite).await;
    let _w = m.worker("w1", 4);
    let mut c = m.client();
    let run = start(&mut c, gated(&[], 0)).await;
    let g = task_of(&mut c, &run, "gate").await;
    assert_eq!(g.state, pb::TaskState::Waiting as i32, "{g:?}");
    assert_eq!(g.agent, "@approval");
    let shown: serde_json::Value = serde_json::from_str(&g.input).unwrap();
    assert_eq!(shown["message"], "ship 1.2?");
    // Listed as waiting; a worker with free slots never gets it.
    let waiting = c
        .list_tasks(pb::ListTasksRequest {
            state: pb::TaskState::Waiting as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].id, g.id);

    let decided = c
        .decide_approval(decide(&g.id, true, "looks good"))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(decided.state, pb::TaskState::Succeeded as i32);
    let out: serde_json::Value = serde_json::from_str(&decided.output).unwrap();
    assert_eq!(out["approved"], true);
    assert_eq!(out["comment"], "looks good");
    let run = until_run(&mut c, &run.id, pb::RunState::Succeeded).await;
    let after = run.tasks.iter().find(|t| t.key == "after").unwrap();
    assert_eq!(after.output, r#"{"by":"user/tester"}"#);
    // Decided once.
    let again = c.decide_approval(decide(&g.id, false, "")).await;
    expect_err(again, Code::FailedPrecondition, "not waiting for approval");

    // The run's events say it waited, and who approved.
    let events: Vec<pb::RunEvent> = crate::all_events(&mut c, &run.id).await;
    let waited = events
        .iter()
        .any(|e| e.kind == pb::RunEventKind::TaskWaiting as i32 && e.task_id == g.id);
    assert!(waited, "{events:?}");
    let approved = events.iter().any(|e| {
        e.kind == pb::RunEventKind::TaskSucceeded as i32
            && e.message == "approved by user/tester: looks good"
    });
    assert!(approved, "{events:?}");
}

#[tokio::test]
async fn a_rejected_or_undecided_gate_fails_the_run() {
    let m = Mesh::start(Db::Sqlite).await;
    let _w = m.worker("w1", 4);
    let mut c = m.client();
    let run = start(&mut c, gated(&["role/maintainer"], 0)).await;
    let g = task_of(&mut c, &run, "gate").await;
    c.decide_approval(decide(&g.id, false, "not this week"))
        .await
        .unwrap();
    until_run(&mut c, &run.id, pb::RunState::Failed).await;
    let g = task_of(&mut c, &run, "gate").await;
    let e = g.error.clone().unwrap();
    assert_eq!(g.state, pb::TaskState::Dead as i32);
    assert_eq!(e.kind, "approval_rejected");
    assert_eq!(e.message, "rejected by user/tester: not this week");
    // Requeued from the dead letters, it asks again.
    let again = c
        .requeue_dead_letter(pb::RequeueDeadLetterRequest {
            task_id: g.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(again.state, pb::TaskState::Waiting as i32, "{again:?}");

    // Nobody decides within 300 ms.
    let run = start(&mut c, gated(&[], 300)).await;
    until_run(&mut c, &run.id, pb::RunState::Failed).await;
    let g = task_of(&mut c, &run, "gate").await;
    let e = g.error.unwrap();
    assert_eq!(e.kind, "approval_timeout");
    assert_eq!(e.message, "no decision within 300 ms");
}

#[tokio::test]
async fn bad_approvals_are_refused_naming_the_field() {
    let m = Mesh::start(Db::Sqlite).await;
    let mut c = m.client();
    for (approvers, timeout_ms, field) in [
        (&["boss"][..], 0, "spec.tasks[0].approval.approvers[0]"),
        (&["role/king"][..], 0, "spec.tasks[0].approval.approvers[0]"),
        (&["user/"][..], 0, "spec.tasks[0].approval.approvers[0]"),
        (
            &[][..],
            31 * 24 * 3600 * 1000,
            "spec.tasks[0].approval.timeout_ms",
        ),
    ] {
        let r = c.submit_run(gated(approvers, timeout_ms)).await;
        expect_err(r, Code::InvalidArgument, field);
    }
    let run = start(&mut c, gated(&[], 0)).await;
    let g = task_of(&mut c, &run, "gate").await;
    let long = "x".repeat(4097);
    expect_err(
        c.decide_approval(decide(&g.id, true, &long)).await,
        Code::InvalidArgument,
        "comment",
    );
    expect_err(
        c.decide_approval(decide("nope", true, "")).await,
        Code::InvalidArgument,
        "task_id",
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    expect_err(
        c.decide_approval(decide(&unknown, true, "")).await,
        Code::NotFound,
        &unknown,
    );
    // Only approval tasks are decided.
    let one = c
        .submit_task(pb::SubmitTaskRequest {
            task: Some(task("t", "hang", &[], "{}")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    expect_err(
        c.decide_approval(decide(&one.tasks[0].id, true, "")).await,
        Code::FailedPrecondition,
        "is not an approval",
    );
    // Still waiting: nothing above changed it.
    let g = task_of(&mut c, &run, "gate").await;
    assert_eq!(g.state, pb::TaskState::Waiting as i32);
}
