//! `devcycle task ...`: tasks, one-task runs, their logs.

use clap::Subcommand;
use devcycle::proto::scheduler::v1 as pb;
use serde_json::{Value, json};

use super::runs;
use crate::connect::Clients;
use crate::output::{Render, or_dash, print_list, time};
use crate::page;

#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Run one agent as a one-task run.
    Submit {
        agent: String,
        /// Input JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Wait for the result and print it.
        #[arg(long)]
        wait: bool,
    },
    /// List tasks.
    List {
        #[arg(long)]
        run: Option<String>,
        #[arg(long)]
        state: Option<String>,
    },
    /// Retry a failed, dead or cancelled task with a fresh attempt budget.
    Retry { id: String },
    /// Print a task's stored log lines.
    Logs { id: String },
}

/// `task list`: a task with its id.
impl Render for pb::Task {
    fn columns() -> &'static [&'static str] {
        &["ID", "TASK", "STATE", "ATTEMPT", "AGENT", "WORKER", "ERROR"]
    }
    fn row(&self) -> Vec<String> {
        let mut row = InRun(self).row();
        row.insert(0, self.id.clone());
        row
    }
    fn json(&self) -> Value {
        json!({
            "id": self.id, "run_id": self.run_id, "key": self.key, "agent": self.agent, "agent_version": self.agent_version,
            "state": state(self.state), "attempt": self.attempt, "max_attempts": self.max_attempts,
            "input": serde_json::from_str::<Value>(&self.input).unwrap_or(Value::Null),
            "output": serde_json::from_str::<Value>(&self.output).unwrap_or(Value::Null),
            "error": self.error.as_ref().map(|e| json!({"kind": e.kind, "message": e.message})),
            "worker_id": self.worker_id, "start_time": time(&self.start_time), "end_time": time(&self.end_time),
        })
    }
}

/// A task in its run's table, known by its key.
pub struct InRun<'a>(pub &'a pb::Task);

impl Render for InRun<'_> {
    fn columns() -> &'static [&'static str] {
        &["TASK", "STATE", "ATTEMPT", "AGENT", "WORKER", "ERROR"]
    }
    fn row(&self) -> Vec<String> {
        let t = self.0;
        vec![
            t.key.clone(),
            state(t.state).into(),
            format!("{}/{}", t.attempt, t.max_attempts),
            format!("{}@{}", t.agent, t.agent_version),
            or_dash(&t.worker_id),
            error(t),
        ]
    }
    fn json(&self) -> Value {
        self.0.json()
    }
}

/// `kind: message`, or empty.
pub fn error(t: &pb::Task) -> String {
    t.error
        .as_ref()
        .map(|e| format!("{}: {}", e.kind, e.message))
        .unwrap_or_default()
}

pub fn state(s: i32) -> &'static str {
    match pb::TaskState::try_from(s) {
        Ok(pb::TaskState::Pending) => "pending",
        Ok(pb::TaskState::Ready) => "ready",
        Ok(pb::TaskState::Leased) => "running",
        Ok(pb::TaskState::Succeeded) => "succeeded",
        Ok(pb::TaskState::Failed) => "retrying",
        Ok(pb::TaskState::Dead) => "dead",
        Ok(pb::TaskState::Cancelled) => "cancelled",
        Ok(pb::TaskState::Waiting) => "waiting",
        _ => "unknown",
    }
}

fn parse_state(s: &str) -> anyhow::Result<i32> {
    Ok(match s {
        "pending" => pb::TaskState::Pending,
        "ready" => pb::TaskState::Ready,
        "leased" | "running" => pb::TaskState::Leased,
        "succeeded" => pb::TaskState::Succeeded,
        "failed" | "retrying" => pb::TaskState::Failed,
        "dead" => pb::TaskState::Dead,
        "cancelled" => pb::TaskState::Cancelled,
        "waiting" => pb::TaskState::Waiting,
        _ => anyhow::bail!("--state: {s:?} is not a task state"),
    } as i32)
}

pub async fn run(cmd: TaskCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut c = clients.scheduler()?;
    match cmd {
        TaskCmd::Submit { agent, input, wait } => {
            let r = c
                .submit_task(pb::SubmitTaskRequest {
                    task: Some(pb::TaskSpec {
                        id: "task".into(),
                        target: Some(pb::task_spec::Target::Agent(pb::AgentRef {
                            name: agent,
                            version: String::new(),
                        })),
                        input,
                        ..Default::default()
                    }),
                    wait,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let run = r.run.unwrap_or_default();
            if wait && !as_json {
                let t = run.tasks.first().cloned().unwrap_or_default();
                match &t.error {
                    Some(e) => eprintln!("{} {}: {}", state(t.state), e.kind, e.message),
                    None => println!("{}", t.output),
                }
                if run.state != pb::RunState::Succeeded as i32 {
                    std::process::exit(1);
                }
            } else {
                runs::show(&run, as_json);
            }
        }
        TaskCmd::List { run, state } => {
            let run_id = run.unwrap_or_default();
            let state = state.as_deref().map(parse_state).transpose()?;
            let state = state.unwrap_or(0);
            let tasks = page::all(None, async |page_token, page_size| {
                let req = pb::ListTasksRequest {
                    run_id: run_id.clone(),
                    state,
                    page_size,
                    page_token,
                };
                c.list_tasks(req).await
            })
            .await?;
            print_list(&tasks, as_json);
        }
        TaskCmd::Retry { id } => {
            let t = c
                .retry_task(pb::RetryTaskRequest { task_id: id })
                .await?
                .into_inner()
                .task
                .unwrap_or_default();
            println!("task {} is {} again", t.id, state(t.state));
        }
        TaskCmd::Logs { id } => {
            let r = c
                .get_task_logs(pb::GetTaskLogsRequest {
                    task_id: id,
                    limit: 0,
                })
                .await?
                .into_inner();
            for l in &r.lines {
                println!("{} [{}#{}] {}", time(&l.time), l.stream, l.attempt, l.line);
            }
        }
    }
    Ok(())
}
