//! `devcycle run ...`: workflow runs.

use clap::Subcommand;
use devcycle::proto::scheduler::v1 as pb;
use serde_json::{Value, json};

use super::follow::follow_run;
use super::tasks::InRun;
use crate::connect::Clients;
use crate::output::{self, Render, or_dash, print_list, print_table, time};
use crate::page;

#[derive(Debug, Subcommand)]
pub enum RunCmd {
    /// List runs, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        workflow: Option<String>,
        /// At most this many (newest first); 0 lists all.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show a run and its tasks.
    Get { id: String },
    /// Cancel a run; running tasks are told to stop.
    Cancel {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Follow a run's progress until it ends.
    Watch {
        id: String,
        /// Resume after this event sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

impl Render for pb::Run {
    fn columns() -> &'static [&'static str] {
        &["RUN", "WORKFLOW", "STATE", "CREATED", "BY"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            or_dash(&self.workflow),
            state(self.state).into(),
            time(&self.create_time),
            self.created_by.clone(),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "id": self.id, "workflow": self.workflow, "state": state(self.state),
            "inputs": serde_json::from_str::<Value>(&self.inputs).unwrap_or(Value::Null),
            "created_by": self.created_by, "create_time": time(&self.create_time), "end_time": time(&self.end_time),
            "tasks": self.tasks.iter().map(Render::json).collect::<Vec<_>>(),
        })
    }
}

pub fn state(s: i32) -> &'static str {
    match pb::RunState::try_from(s) {
        Ok(pb::RunState::Running) => "running",
        Ok(pb::RunState::Succeeded) => "succeeded",
        Ok(pb::RunState::Failed) => "failed",
        Ok(pb::RunState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

fn parse_state(s: &str) -> anyhow::Result<i32> {
    Ok(match s {
        "running" => pb::RunState::Running,
        "succeeded" => pb::RunState::Succeeded,
        "failed" => pb::RunState::Failed,
        "cancelled" => pb::RunState::Cancelled,
        _ => anyhow::bail!("--state: {s:?} is not running, succeeded, failed or cancelled"),
    } as i32)
}

/// A run and the table of its tasks.
pub fn show(r: &pb::Run, as_json: bool) {
    if as_json {
        output::json(&r.json());
        return;
    }
    println!(
        "run {}  {}  workflow {}",
        r.id,
        state(r.state),
        or_dash(&r.workflow)
    );
    let tasks: Vec<InRun> = r.tasks.iter().map(InRun).collect();
    print_table(&tasks);
}

pub async fn run(cmd: RunCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut c = clients.scheduler()?;
    match cmd {
        RunCmd::List {
            state,
            workflow,
            limit,
        } => {
            let state = state.as_deref().map(parse_state).transpose()?;
            let state = state.unwrap_or(0);
            let workflow = workflow.unwrap_or_default();
            let limit = (limit > 0).then_some(limit as usize);
            let runs = page::all(limit, async |page_token, page_size| {
                let req = pb::ListRunsRequest {
                    state,
                    workflow: workflow.clone(),
                    page_size,
                    page_token,
                    ..Default::default()
                };
                c.list_runs(req).await
            })
            .await?;
            print_list(&runs, as_json);
        }
        RunCmd::Get { id } => {
            let r = c.get_run(pb::GetRunRequest { run_id: id }).await?;
            show(&r.into_inner().run.unwrap_or_default(), as_json);
        }
        RunCmd::Cancel { id, reason } => {
            let req = pb::CancelRunRequest { run_id: id, reason };
            let r = c.cancel_run(req).await?;
            show(&r.into_inner().run.unwrap_or_default(), as_json);
        }
        RunCmd::Watch { id, after } => follow_run(clients, &id, after, as_json, true).await?,
    }
    Ok(())
}
