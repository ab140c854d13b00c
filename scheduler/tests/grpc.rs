//! The scheduler over the wire, with a registry and a scripted worker.

mod common;

/// Runs each named `async fn(Db)` on the embedded log and on the Kafka
/// log: one conformance suite for both (`<case>::sqlite`, `<case>::kafka`).
#[macro_export]
macro_rules! on_both_logs {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test]
            async fn sqlite() {
                super::$case($crate::common::mesh::Db::Sqlite).await
            }
            #[tokio::test]
            async fn kafka() {
                super::$case($crate::common::mesh::Db::Kafka).await
            }
        }
    )*};
}

/// The cases, by area.
mod grpc {
    pub mod approvals;
    pub mod messages;
    pub mod runs;
    pub mod schedules;
    pub mod submit;
    pub mod triggers;
}

use devcycle::proto::scheduler::v1 as pb;

pub fn agent(name: &str) -> Option<pb::task_spec::Target> {
    Some(pb::task_spec::Target::Agent(pb::AgentRef {
        name: name.into(),
        version: String::new(),
    }))
}

pub fn task(id: &str, target: &str, deps: &[&str], input: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        id: id.into(),
        target: agent(target),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        input: input.into(),
        ..Default::default()
    }
}

pub fn inline(tasks: Vec<pb::TaskSpec>) -> pb::SubmitRunRequest {
    pb::SubmitRunRequest {
        workflow: Some(pb::submit_run_request::Workflow::Spec(pb::WorkflowSpec {
            name: "wf".into(),
            tasks,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Every event of a finished run, in order.
pub async fn all_events(
    c: &mut devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient<
        tonic::transport::Channel,
    >,
    run_id: &str,
) -> Vec<pb::RunEvent> {
    use tokio_stream::StreamExt;
    c.watch_run(pb::WatchRunRequest {
        run_id: run_id.into(),
        after_sequence: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .map(|e| e.unwrap().event.unwrap())
    .collect()
    .await
}

#[test]
fn every_scheduler_method_has_a_policy_entry() {
    let policy = devcycle_scheduler::policy();
    let methods: Vec<String> = devcycle::proto::all_methods()
        .into_iter()
        .filter(|m| m.starts_with("/devcycle.scheduler.v1."))
        .collect();
    assert_eq!(methods.len(), 24);
    for m in methods {
        assert!(policy.has_entry(&m), "{m} has no policy entry");
    }
}
