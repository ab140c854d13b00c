//! `devcycle approve ...`: decide approval tasks, or list those waiting.

use clap::Args;
use devcycle::proto::scheduler::v1 as pb;
use serde_json::Value;

use super::tasks;
use crate::connect::Clients;
use crate::output::{self, Render, print_list};
use crate::page;

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The approval task to decide; without it, list those waiting.
    task_id: Option<String>,
    /// Reject instead of approving.
    #[arg(long, requires = "task_id")]
    reject: bool,
    /// Why; recorded with the decision and in the task's output or error.
    #[arg(long, requires = "task_id")]
    comment: Option<String>,
}

/// A waiting approval: where it is and what it asks.
struct Waiting(pb::Task);

impl Render for Waiting {
    fn columns() -> &'static [&'static str] {
        &["TASK", "RUN", "KEY", "APPROVERS", "MESSAGE"]
    }
    fn row(&self) -> Vec<String> {
        let input: Value = serde_json::from_str(&self.0.input).unwrap_or_default();
        let approvers: Vec<&str> = input["approvers"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let approvers = if approvers.is_empty() {
            "role/maintainer".to_owned()
        } else {
            approvers.join(",")
        };
        vec![
            self.0.id.clone(),
            self.0.run_id.clone(),
            self.0.key.clone(),
            approvers,
            input["message"].as_str().unwrap_or_default().to_owned(),
        ]
    }
    fn json(&self) -> Value {
        self.0.json()
    }
}

pub async fn run(args: ApproveArgs, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut c = clients.scheduler()?;
    let Some(task_id) = args.task_id else {
        let waiting = page::all(None, async |page_token, page_size| {
            let req = pb::ListTasksRequest {
                state: pb::TaskState::Waiting as i32,
                page_size,
                page_token,
                ..Default::default()
            };
            c.list_tasks(req).await
        })
        .await?;
        let waiting: Vec<Waiting> = waiting.into_iter().map(Waiting).collect();
        print_list(&waiting, as_json);
        return Ok(());
    };
    let req = pb::DecideApprovalRequest {
        task_id,
        approve: !args.reject,
        comment: args.comment.unwrap_or_default(),
    };
    let t = c
        .decide_approval(req)
        .await?
        .into_inner()
        .task
        .unwrap_or_default();
    if as_json {
        output::json(&t.json());
    } else {
        let verdict = if args.reject { "rejected" } else { "approved" };
        println!("task {} {verdict} ({})", t.id, tasks::state(t.state));
    }
    Ok(())
}
