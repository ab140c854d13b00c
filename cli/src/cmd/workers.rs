//! `devcycle worker ...`: executors, as the registry sees them and as each
//! reports itself.

use clap::Subcommand;
use devcycle::proto::executor::v1 as ex;
use devcycle::proto::registry::v1 as pb;
use serde_json::{Value, json};

use crate::connect::Clients;
use crate::output::{self, Render, print_list, print_table, time};
use crate::page;

#[derive(Debug, Subcommand)]
pub enum WorkerCmd {
    /// List executors and their liveness (from the registry).
    List {
        #[arg(long)]
        agent: Option<String>,
    },
    /// An executor's status: slots, running tasks, resource use, isolation.
    Status,
    /// Tasks an executor is running.
    Tasks,
    /// Kill a running task's process group.
    Cancel { task_id: String },
    /// Follow a running task's log lines.
    Logs { task_id: String },
    /// Stop taking work; running tasks finish or are handed back.
    Drain {
        #[arg(long, default_value_t = 30_000)]
        deadline_ms: u32,
    },
}

impl Render for pb::Worker {
    fn columns() -> &'static [&'static str] {
        &["ID", "STATE", "BUSY", "AGENTS", "LAST HEARTBEAT"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            state(self.state).into(),
            format!("{}/{}", self.in_flight, self.capacity),
            if self.agents.is_empty() {
                "*".into()
            } else {
                self.agents.join(",")
            },
            time(&self.last_heartbeat_time),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "id": self.id, "agents": self.agents, "capacity": self.capacity, "in_flight": self.in_flight,
            "address": self.address, "state": state(self.state),
            "last_heartbeat_time": time(&self.last_heartbeat_time),
        })
    }
}

impl Render for ex::RunningTask {
    fn columns() -> &'static [&'static str] {
        &["TASK", "ATTEMPT", "AGENT", "PID", "STARTED"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.task_id.clone(),
            self.attempt.to_string(),
            format!("{}@{}", self.agent, self.agent_version),
            self.pid.to_string(),
            time(&self.start_time),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "task_id": self.task_id, "attempt": self.attempt, "agent": self.agent,
            "agent_version": self.agent_version, "pid": self.pid, "start_time": time(&self.start_time),
        })
    }
}

fn state(s: i32) -> &'static str {
    match pb::WorkerState::try_from(s) {
        Ok(pb::WorkerState::Up) => "up",
        Ok(pb::WorkerState::Draining) => "draining",
        Ok(pb::WorkerState::Down) => "down",
        _ => "unknown",
    }
}

pub async fn run(cmd: WorkerCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut c = clients.registry()?;
    match cmd {
        WorkerCmd::Status => {
            let s = clients
                .executor()?
                .get_status(ex::GetStatusRequest {})
                .await?
                .into_inner();
            let iso = s.isolation.unwrap_or_default();
            let usage = s.usage.unwrap_or_default();
            let v = json!({
                "worker_id": s.worker_id,
                "state": ex::ExecutorState::try_from(s.state).map(|x| x.as_str_name()).unwrap_or("UNKNOWN").trim_start_matches("EXECUTOR_STATE_").to_lowercase(),
                "slots": s.slots, "running": s.running, "agents": s.agents,
                "rss_bytes": usage.rss_bytes, "cpu_time_ms": usage.cpu_time_ms,
                "bubblewrap": iso.bubblewrap, "cgroups": iso.cgroups, "cgroup_version": iso.cgroup_version, "rlimits": iso.rlimits,
            });
            if as_json {
                output::json(&v);
            } else {
                for (k, val) in v.as_object().into_iter().flatten() {
                    println!("{k:<14} {val}");
                }
            }
        }
        WorkerCmd::Tasks => {
            let r = clients
                .executor()?
                .list_running_tasks(ex::ListRunningTasksRequest {})
                .await?
                .into_inner();
            // A table even with --json, as it always printed.
            print_table(&r.tasks);
        }
        WorkerCmd::Cancel { task_id } => {
            clients
                .executor()?
                .cancel_task(ex::CancelTaskRequest {
                    task_id: task_id.clone(),
                    reason: "cancelled from the CLI".into(),
                })
                .await?;
            println!("cancelled {task_id}");
        }
        WorkerCmd::Logs { task_id } => {
            let mut s = clients
                .executor()?
                .stream_task_logs(ex::StreamTaskLogsRequest { task_id })
                .await?
                .into_inner();
            while let Some(l) = s.message().await? {
                println!("{} [{}] {}", time(&l.time), l.stream, l.line);
            }
        }
        WorkerCmd::Drain { deadline_ms } => {
            let r = clients
                .executor()?
                .drain(ex::DrainRequest { deadline_ms })
                .await?
                .into_inner();
            println!("draining; {} task(s) were running", r.running);
        }
        WorkerCmd::List { agent } => {
            let agent = agent.unwrap_or_default();
            let workers = page::all(None, async |page_token, page_size| {
                let req = pb::ListWorkersRequest {
                    agent: agent.clone(),
                    page_size,
                    page_token,
                };
                c.list_workers(req).await
            })
            .await?;
            print_list(&workers, as_json);
        }
    }
    Ok(())
}
