//! `devcycle dlq ...`: the dead-letter queue.

use clap::Subcommand;
use devcycle::proto::scheduler::v1 as pb;
use serde_json::Value;

use super::tasks;
use crate::connect::Clients;
use crate::output::{Render, print_list, time};
use crate::page;

#[derive(Debug, Subcommand)]
pub enum DlqCmd {
    /// List dead letters.
    List,
    /// Run a dead letter again.
    Requeue { task_id: String },
}

impl Render for pb::DeadLetter {
    fn columns() -> &'static [&'static str] {
        &["TASK", "RUN", "KEY", "AGENT", "DEAD", "ERROR"]
    }
    fn row(&self) -> Vec<String> {
        let t = self.task.clone().unwrap_or_default();
        let err = tasks::error(&t);
        vec![t.id, t.run_id, t.key, t.agent, time(&self.dead_time), err]
    }
    /// The task; a letter without one is left out of `--json`.
    fn json(&self) -> Value {
        self.task.as_ref().map_or(Value::Null, Render::json)
    }
}

pub async fn run(cmd: DlqCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut c = clients.scheduler()?;
    match cmd {
        DlqCmd::List => {
            let letters = page::all(None, async |page_token, page_size| {
                let req = pb::ListDeadLettersRequest {
                    page_size,
                    page_token,
                };
                c.list_dead_letters(req).await
            })
            .await?;
            print_list(&letters, as_json);
        }
        DlqCmd::Requeue { task_id } => {
            let t = c
                .requeue_dead_letter(pb::RequeueDeadLetterRequest { task_id })
                .await?
                .into_inner()
                .task
                .unwrap_or_default();
            println!("task {} requeued ({})", t.id, tasks::state(t.state));
        }
    }
    Ok(())
}
