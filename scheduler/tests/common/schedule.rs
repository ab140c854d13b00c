//! Schedules in tests: a stored one-task workflow, an every-second
//! schedule of it, and bounded polling of the schedule's counters.

use std::time::{Duration, Instant};

use devcycle::proto::scheduler::v1 as pb;
use devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient;
use tonic::transport::Channel;

pub type Client = SchedulerClient<Channel>;

/// Stores workflow `name`: one task of `agent`, with an optional input
/// `note` it passes on.
pub async fn put_workflow(c: &mut Client, name: &str, agent: &str) {
    let spec = pb::WorkflowSpec {
        name: name.into(),
        inputs: vec![pb::WorkflowInput {
            name: "note".into(),
            default_value: "\"none\"".into(),
            ..Default::default()
        }],
        tasks: vec![pb::TaskSpec {
            id: "t".into(),
            target: Some(pb::task_spec::Target::Agent(pb::AgentRef {
                name: agent.into(),
                version: String::new(),
            })),
            input: r#"{"note": "${inputs.note}"}"#.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    c.put_workflow(pb::PutWorkflowRequest { spec: Some(spec) })
        .await
        .unwrap();
}

/// A schedule firing `workflow` every second.
pub fn every_second(name: &str, workflow: &str, overlap: pb::OverlapPolicy) -> pb::Schedule {
    pb::Schedule {
        name: name.into(),
        cron: "* * * * * *".into(),
        workflow_name: workflow.into(),
        overlap: overlap as i32,
        ..Default::default()
    }
}

pub async fn create(c: &mut Client, s: pb::Schedule) -> pb::Schedule {
    c.create_schedule(pb::CreateScheduleRequest { schedule: Some(s) })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap()
}

pub async fn get(c: &mut Client, name: &str) -> pb::Schedule {
    c.get_schedule(pb::GetScheduleRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap()
}

/// Polls schedule `name` until `done` holds; fails after `within`.
pub async fn until(
    c: &mut Client,
    name: &str,
    within: Duration,
    done: impl Fn(&pb::Schedule) -> bool,
) -> pb::Schedule {
    let deadline = Instant::now() + within;
    loop {
        let s = get(c, name).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "schedule never got there: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The runs of workflow `name`, newest first.
pub async fn runs_of(c: &mut Client, workflow: &str) -> Vec<pb::Run> {
    c.list_runs(pb::ListRunsRequest {
        workflow: workflow.into(),
        page_size: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .runs
}
