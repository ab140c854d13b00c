//! Who may see and change what, as the gateway forwards end users: read
//! and write scopes differ, workflows belong to who stored them, and
//! idempotency keys are per submitter.

mod common;

use std::time::Duration;

use common::mesh::{AsUser, Db, Mesh};
use devcycle::proto::scheduler::v1 as pb;
use devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient;
use tonic::Code;

type Client = SchedulerClient<AsUser>;

fn as_user(m: &Mesh, subject: &str, roles: &str) -> Client {
    SchedulerClient::new(m.as_user(subject, roles))
}

fn hang(key: &str) -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest {
        task: Some(pb::TaskSpec {
            id: "t".into(),
            target: Some(pb::task_spec::Target::Agent(pb::AgentRef {
                name: "hang".into(),
                version: String::new(),
            })),
            input: "{}".into(),
            ..Default::default()
        }),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

#[track_caller]
fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, want: Code) -> String {
    match r {
        Err(s) if s.code() == want => s.message().to_owned(),
        other => panic!("expected {want:?}, got {other:?}"),
    }
}

/// Defect: a developer who is also a viewer could cancel or retry anyone's
/// run, because the viewer's see-all scope was applied to writes.
#[tokio::test]
async fn seeing_every_run_is_not_changing_every_run() {
    let m = Mesh::start(Db::Sqlite).await;
    let _w = m.worker("w1", 4);
    let mut dana = as_user(&m, "dana", "developer");
    let mut eve = as_user(&m, "eve", "developer,viewer");
    let mut carl = as_user(&m, "carl", "developer");
    let mut admin = as_user(&m, "root", "admin");
    let run = dana
        .submit_task(hang(""))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let task_id = run.tasks[0].id.clone();
    // Eve sees it; Carl does not.
    eve.get_run(pb::GetRunRequest {
        run_id: run.id.clone(),
    })
    .await
    .unwrap();
    code(
        carl.get_run(pb::GetRunRequest {
            run_id: run.id.clone(),
        })
        .await,
        Code::NotFound,
    );
    let cancel = |reason: &str| pb::CancelRunRequest {
        run_id: run.id.clone(),
        reason: reason.into(),
    };
    let msg = code(
        eve.cancel_run(cancel("mine now")).await,
        Code::PermissionDenied,
    );
    assert!(msg.contains("belongs to user/dana"), "{msg}");
    code(carl.cancel_run(cancel("")).await, Code::NotFound);
    // The owner and admins change it.
    admin.cancel_run(cancel("by an admin")).await.unwrap();
    let retry = || pb::RetryTaskRequest {
        task_id: task_id.clone(),
    };
    code(eve.retry_task(retry()).await, Code::PermissionDenied);
    code(carl.retry_task(retry()).await, Code::NotFound);
    dana.retry_task(retry()).await.unwrap();
    dana.cancel_run(cancel("done")).await.unwrap();
}

/// Defect: workflows had no owner, so any developer could replace one that
/// another user runs by name.
#[tokio::test]
async fn workflows_belong_to_who_stored_them() {
    let m = Mesh::start(Db::Postgres).await;
    let mut dana = as_user(&m, "dana", "developer");
    let mut eve = as_user(&m, "eve", "developer,viewer");
    let mut mia = as_user(&m, "mia", "maintainer");
    let spec = |agent: &str| pb::PutWorkflowRequest {
        spec: Some(pb::WorkflowSpec {
            name: "deploy".into(),
            tasks: vec![pb::TaskSpec {
                id: "go".into(),
                target: Some(pb::task_spec::Target::Agent(pb::AgentRef {
                    name: agent.into(),
                    version: String::new(),
                })),
                input: "{}".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    };
    let w = dana
        .put_workflow(spec("noop"))
        .await
        .unwrap()
        .into_inner()
        .workflow
        .unwrap();
    assert_eq!((w.owner.as_str(), w.revision), ("user/dana", 1));
    let msg = code(eve.put_workflow(spec("hang")).await, Code::PermissionDenied);
    assert!(msg.contains("spec.name") && msg.contains("deploy"), "{msg}");
    let w = mia
        .put_workflow(spec("echo"))
        .await
        .unwrap()
        .into_inner()
        .workflow
        .unwrap();
    assert_eq!(
        (w.owner.as_str(), w.revision),
        ("user/dana", 2),
        "a maintainer's revision keeps the owner"
    );
    let w = dana
        .put_workflow(spec("noop"))
        .await
        .unwrap()
        .into_inner()
        .workflow
        .unwrap();
    assert_eq!(w.revision, 3);
    let stored = eve
        .get_workflow(pb::GetWorkflowRequest {
            name: "deploy".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .workflow
        .unwrap();
    let target = &stored.spec.unwrap().tasks[0].target;
    assert!(matches!(target, Some(pb::task_spec::Target::Agent(a)) if a.name == "noop"));
}

/// Defect: idempotency keys were global, so a predictable key (a commit
/// SHA) could be squatted by another user.
#[tokio::test]
async fn idempotency_keys_are_per_submitter() {
    let m = Mesh::start(Db::Postgres).await;
    let mut dana = as_user(&m, "dana", "developer");
    let mut eve = as_user(&m, "eve", "developer");
    let key = "4e1db7f0c9";
    let squat = eve.submit_task(hang(key)).await.unwrap().into_inner();
    assert!(squat.created);
    let mine = dana.submit_task(hang(key)).await.unwrap().into_inner();
    assert!(mine.created, "eve's key does not take dana's");
    assert_ne!(
        mine.run.as_ref().unwrap().id,
        squat.run.as_ref().unwrap().id
    );
    let again = dana.submit_task(hang(key)).await.unwrap().into_inner();
    assert!(!again.created);
    assert_eq!(again.run.unwrap().id, mine.run.unwrap().id);
}

/// A schedule belongs to who created it: its runs are theirs, and only
/// they, maintainers and admins pause, resume or delete it.
#[tokio::test]
async fn schedules_and_their_runs_belong_to_their_creator() {
    let m = Mesh::start(Db::Sqlite).await;
    let mut dana = as_user(&m, "dana", "developer");
    let mut carl = as_user(&m, "carl", "developer");
    let mut mia = as_user(&m, "mia", "maintainer");
    let mut plain = m.client();
    common::schedule::put_workflow(&mut plain, "cron-owned", "hang").await;
    let s = common::schedule::every_second("dana-s", "cron-owned", pb::OverlapPolicy::Skip);
    let created = dana
        .create_schedule(pb::CreateScheduleRequest { schedule: Some(s) })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(created.owner, "user/dana");
    let s = common::schedule::until(&mut plain, "dana-s", Duration::from_secs(20), |s| {
        s.fired >= 1
    })
    .await;
    let run_id = s.last_run_id.clone();
    let get = |run_id: &str| pb::GetRunRequest {
        run_id: run_id.into(),
    };
    let run = dana
        .get_run(get(&run_id))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.created_by, "user/dana");
    code(carl.get_run(get(&run_id)).await, Code::NotFound);

    let name = || "dana-s".to_owned();
    let msg = code(
        carl.pause_schedule(pb::PauseScheduleRequest { name: name() })
            .await,
        Code::PermissionDenied,
    );
    assert!(msg.contains("belongs to user/dana"), "{msg}");
    code(
        carl.delete_schedule(pb::DeleteScheduleRequest { name: name() })
            .await,
        Code::PermissionDenied,
    );
    // Reading is open to every reader.
    carl.get_schedule(pb::GetScheduleRequest { name: name() })
        .await
        .unwrap();
    mia.pause_schedule(pb::PauseScheduleRequest { name: name() })
        .await
        .unwrap();
    dana.resume_schedule(pb::ResumeScheduleRequest { name: name() })
        .await
        .unwrap();
    dana.delete_schedule(pb::DeleteScheduleRequest { name: name() })
        .await
        .unwrap();
}

/// An approval is decided only by the approvers it names (maintainers when
/// it names none), and always by admins.
#[tokio::test]
async fn only_named_approvers_decide() {
    let m = Mesh::start(Db::Sqlite).await;
    let mut dana = as_user(&m, "dana", "developer");
    let mut carl = as_user(&m, "carl", "developer");
    let mut mia = as_user(&m, "mia", "maintainer");
    let mut root = as_user(&m, "root", "admin");
    let gate = |approvers: &[&str]| pb::SubmitRunRequest {
        workflow: Some(pb::submit_run_request::Workflow::Spec(pb::WorkflowSpec {
            name: "gated".into(),
            tasks: vec![pb::TaskSpec {
                id: "gate".into(),
                target: Some(pb::task_spec::Target::Approval(pb::ApprovalSpec {
                    approvers: approvers.iter().map(|a| a.to_string()).collect(),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    };
    let decide = |run: &pb::Run| pb::DecideApprovalRequest {
        task_id: run.tasks[0].id.clone(),
        approve: true,
        comment: String::new(),
    };
    let submit =
        async |c: &mut Client, req| c.submit_run(req).await.unwrap().into_inner().run.unwrap();

    // Carl by name: not the submitter, not a maintainer.
    let run = submit(&mut dana, gate(&["user/carl"])).await;
    let msg = code(
        dana.decide_approval(decide(&run)).await,
        Code::PermissionDenied,
    );
    assert!(msg.contains("only by user/carl and admins"), "{msg}");
    code(
        mia.decide_approval(decide(&run)).await,
        Code::PermissionDenied,
    );
    carl.decide_approval(decide(&run)).await.unwrap();

    // Nobody named: maintainers and admins.
    let run = submit(&mut dana, gate(&[])).await;
    code(
        carl.decide_approval(decide(&run)).await,
        Code::PermissionDenied,
    );
    mia.decide_approval(decide(&run)).await.unwrap();
    let run = submit(&mut dana, gate(&["role/viewer"])).await;
    code(
        mia.decide_approval(decide(&run)).await,
        Code::PermissionDenied,
    );
    root.decide_approval(decide(&run)).await.unwrap();
}
