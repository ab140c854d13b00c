//! `devcycle workflow ...`: submit, store and list workflow definitions.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use devcycle::proto::scheduler::v1 as pb;
use devcycle_scheduler::spec_file;
use serde_json::{Value, json};

use super::follow::follow_run;
use crate::connect::Clients;
use crate::output::{self, Render, print_table, time};
use crate::page;

#[derive(Debug, Subcommand)]
pub enum WorkflowCmd {
    /// Start a run of a workflow file.
    Submit {
        file: PathBuf,
        /// name=value; the value is JSON, or a string if it is not JSON.
        #[arg(long = "input", value_parser = spec_file::input_arg)]
        inputs: Vec<(String, String)>,
        /// The same key returns the same run instead of starting another.
        #[arg(long)]
        key: Option<String>,
        /// Show the run's progress live until it ends.
        #[arg(long)]
        follow: bool,
    },
    /// Store a workflow definition (a new revision if the name exists).
    Put { file: PathBuf },
    /// List stored workflows.
    List,
}

impl Render for pb::Workflow {
    fn columns() -> &'static [&'static str] {
        &["NAME", "REVISION", "TASKS", "CREATED"]
    }
    fn row(&self) -> Vec<String> {
        let s = self.spec.clone().unwrap_or_default();
        vec![
            s.name,
            self.revision.to_string(),
            s.tasks.len().to_string(),
            time(&self.create_time),
        ]
    }
    fn json(&self) -> Value {
        let s = self.spec.clone().unwrap_or_default();
        json!({
            "name": s.name, "revision": self.revision, "tasks": s.tasks.len(),
            "create_time": time(&self.create_time),
        })
    }
}

fn read_spec(file: &Path) -> anyhow::Result<pb::WorkflowSpec> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    spec_file::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

pub async fn run(cmd: WorkflowCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut c = clients.scheduler()?;
    match cmd {
        WorkflowCmd::Submit {
            file,
            inputs,
            key,
            follow,
        } => {
            let spec = read_spec(&file)?;
            let r = c
                .submit_run(pb::SubmitRunRequest {
                    workflow: Some(pb::submit_run_request::Workflow::Spec(spec)),
                    inputs: inputs.into_iter().collect(),
                    idempotency_key: key.unwrap_or_default(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let run = r.run.unwrap_or_default();
            if follow {
                return follow_run(clients, &run.id, 0, as_json, true).await;
            }
            if as_json {
                output::json(&json!({"created": r.created, "run": run.json()}));
            } else {
                println!(
                    "{} run {}",
                    if r.created { "started" } else { "existing" },
                    run.id
                );
                println!("follow it: devcycle run watch {}", run.id);
            }
        }
        WorkflowCmd::Put { file } => {
            let spec = read_spec(&file)?;
            let w = c
                .put_workflow(pb::PutWorkflowRequest { spec: Some(spec) })
                .await?
                .into_inner()
                .workflow
                .unwrap_or_default();
            let name = w.spec.map(|s| s.name).unwrap_or_default();
            println!("stored workflow {name} revision {}", w.revision);
        }
        WorkflowCmd::List => {
            let workflows = page::all(None, async |page_token, page_size| {
                let req = pb::ListWorkflowsRequest {
                    page_size,
                    page_token,
                };
                c.list_workflows(req).await
            })
            .await?;
            // A table even with --json, as it always printed.
            print_table(&workflows);
        }
    }
    Ok(())
}
