//! The lifecycle workflow on the shipped samples, through real executors:
//! the test agent reports the sample's real counts, and a failing test in
//! the broken sample fails the run, named.

mod common;

use common::*;
use devcycle::proto::scheduler::v1 as pb;

const AGENTS: [&str; 6] = ["checkout", "build", "test", "lint", "review", "report"];

async fn ci(cluster: &Cluster, sample: &str) -> pb::Run {
    let text = std::fs::read_to_string(repo().join("examples/workflows/ci.yaml")).unwrap();
    let spec = devcycle_scheduler::spec_file::parse(&text).unwrap();
    let repo_path = repo().join("examples/samples").join(sample);
    let r = cluster
        .scheduler_client()
        .submit_run(pb::SubmitRunRequest {
            workflow: Some(pb::submit_run_request::Workflow::Spec(spec)),
            inputs: [(
                "repo".to_owned(),
                serde_json::Value::from(repo_path.to_string_lossy()).to_string(),
            )]
            .into(),
            wait: true,
            wait_timeout_ms: 120_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.run.unwrap()
}

fn task<'a>(run: &'a pb::Run, key: &str) -> &'a pb::Task {
    run.tasks.iter().find(|t| t.key == key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_workflow_builds_tests_and_reports_the_samples() {
    let cluster = Cluster::start(true).await;
    for a in AGENTS {
        cluster.apply(&format!("examples/agents/{a}.yaml"));
    }
    let _executor = cluster.spawn_executor("ci-1", 4);

    let run = ci(&cluster, "calc").await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:#?}");
    let test: serde_json::Value = serde_json::from_str(&task(&run, "test").output).unwrap();
    assert_eq!(
        (
            test["passed"].as_i64(),
            test["failed"].as_i64(),
            test["total"].as_i64()
        ),
        (Some(6), Some(0), Some(6))
    );
    let review: serde_json::Value = serde_json::from_str(&task(&run, "review").output).unwrap();
    assert_eq!(review["skipped"], true, "no endpoint: skipped, not faked");
    let report: serde_json::Value = serde_json::from_str(&task(&run, "report").output).unwrap();
    assert!(
        report["markdown"]
            .as_str()
            .unwrap()
            .contains("6 passed, 0 failed of 6")
    );
    // test and lint ran in parallel: both started before either ended.
    let ms =
        |ts: &Option<prost_types::Timestamp>| devcycle::time::from_timestamp(ts.as_ref()).unwrap();
    let (t, l) = (task(&run, "test"), task(&run, "lint"));
    assert!(
        ms(&t.start_time) <= ms(&l.end_time) && ms(&l.start_time) <= ms(&t.end_time),
        "test and lint ran in parallel"
    );

    let broken = ci(&cluster, "calc-broken").await;
    assert_eq!(broken.state, pb::RunState::Failed as i32);
    let t = task(&broken, "test");
    assert_eq!(t.state, pb::TaskState::Dead as i32);
    let e = t.error.as_ref().unwrap();
    assert!(
        e.message.contains("1 of 6 tests failed") && e.message.contains("test_mean"),
        "{e:?}"
    );
    for later in ["review", "report"] {
        assert_eq!(task(&broken, later).state, pb::TaskState::Cancelled as i32);
    }
    let logs = cluster
        .scheduler_client()
        .get_task_logs(pb::GetTaskLogsRequest {
            task_id: t.id.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        logs.lines
            .iter()
            .any(|l| l.line.contains("FAIL: test_mean")),
        "the runner's output is stored"
    );
}
