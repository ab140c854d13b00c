//! `devcycle workflow|run|task|dlq ...`: the scheduler from the command line.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use devcycle::proto::scheduler::v1 as pb;
use devcycle_scheduler::spec_file;
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use crate::connect::Clients;
use crate::output::{self, or_dash, table, time};
use crate::page::paginate;

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

#[derive(Debug, Subcommand)]
pub enum DlqCmd {
    /// List dead letters.
    List,
    /// Run a dead letter again.
    Requeue { task_id: String },
}

fn run_state_name(s: i32) -> &'static str {
    match pb::RunState::try_from(s) {
        Ok(pb::RunState::Running) => "running",
        Ok(pb::RunState::Succeeded) => "succeeded",
        Ok(pb::RunState::Failed) => "failed",
        Ok(pb::RunState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

fn task_state_name(s: i32) -> &'static str {
    match pb::TaskState::try_from(s) {
        Ok(pb::TaskState::Pending) => "pending",
        Ok(pb::TaskState::Ready) => "ready",
        Ok(pb::TaskState::Leased) => "running",
        Ok(pb::TaskState::Succeeded) => "succeeded",
        Ok(pb::TaskState::Failed) => "retrying",
        Ok(pb::TaskState::Dead) => "dead",
        Ok(pb::TaskState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

fn parse_run_state(s: &str) -> anyhow::Result<i32> {
    Ok(match s {
        "running" => pb::RunState::Running,
        "succeeded" => pb::RunState::Succeeded,
        "failed" => pb::RunState::Failed,
        "cancelled" => pb::RunState::Cancelled,
        _ => anyhow::bail!("--state: {s:?} is not running, succeeded, failed or cancelled"),
    } as i32)
}

fn parse_task_state(s: &str) -> anyhow::Result<i32> {
    Ok(match s {
        "pending" => pb::TaskState::Pending,
        "ready" => pb::TaskState::Ready,
        "leased" | "running" => pb::TaskState::Leased,
        "succeeded" => pb::TaskState::Succeeded,
        "failed" | "retrying" => pb::TaskState::Failed,
        "dead" => pb::TaskState::Dead,
        "cancelled" => pb::TaskState::Cancelled,
        _ => anyhow::bail!("--state: {s:?} is not a task state"),
    } as i32)
}

fn task_json(t: &pb::Task) -> Value {
    json!({
        "id": t.id, "run_id": t.run_id, "key": t.key, "agent": t.agent, "agent_version": t.agent_version,
        "state": task_state_name(t.state), "attempt": t.attempt, "max_attempts": t.max_attempts,
        "input": serde_json::from_str::<Value>(&t.input).unwrap_or(Value::Null),
        "output": serde_json::from_str::<Value>(&t.output).unwrap_or(Value::Null),
        "error": t.error.as_ref().map(|e| json!({"kind": e.kind, "message": e.message})),
        "worker_id": t.worker_id, "start_time": time(&t.start_time), "end_time": time(&t.end_time),
    })
}

fn run_json(r: &pb::Run) -> Value {
    json!({
        "id": r.id, "workflow": r.workflow, "state": run_state_name(r.state),
        "inputs": serde_json::from_str::<Value>(&r.inputs).unwrap_or(Value::Null),
        "created_by": r.created_by, "create_time": time(&r.create_time), "end_time": time(&r.end_time),
        "tasks": r.tasks.iter().map(task_json).collect::<Vec<_>>(),
    })
}

fn task_rows(tasks: &[pb::Task]) -> Vec<Vec<String>> {
    tasks
        .iter()
        .map(|t| {
            vec![
                t.key.clone(),
                task_state_name(t.state).into(),
                format!("{}/{}", t.attempt, t.max_attempts),
                format!("{}@{}", t.agent, t.agent_version),
                or_dash(&t.worker_id),
                t.error
                    .as_ref()
                    .map(|e| format!("{}: {}", e.kind, e.message))
                    .unwrap_or_default(),
            ]
        })
        .collect()
}

fn show_run(r: &pb::Run, as_json: bool) {
    if as_json {
        output::json(&run_json(r));
        return;
    }
    println!(
        "run {}  {}  workflow {}",
        r.id,
        run_state_name(r.state),
        or_dash(&r.workflow)
    );
    table(
        &["TASK", "STATE", "ATTEMPT", "AGENT", "WORKER", "ERROR"],
        &task_rows(&r.tasks),
    );
}

pub async fn run_workflow(
    cmd: WorkflowCmd,
    clients: &Clients,
    as_json: bool,
) -> anyhow::Result<()> {
    let mut c = clients.scheduler()?;
    match cmd {
        WorkflowCmd::Submit {
            file,
            inputs,
            key,
            follow,
        } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
            let spec =
                spec_file::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
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
                output::json(&json!({"created": r.created, "run": run_json(&run)}));
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
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
            let spec =
                spec_file::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
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
            let workflows = paginate(None, async |page_token, page_size| {
                let r = c
                    .list_workflows(pb::ListWorkflowsRequest {
                        page_size,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((r.workflows, r.next_page_token))
            })
            .await?;
            let rows: Vec<Vec<String>> = workflows
                .iter()
                .map(|w| {
                    let s = w.spec.clone().unwrap_or_default();
                    vec![
                        s.name,
                        w.revision.to_string(),
                        s.tasks.len().to_string(),
                        time(&w.create_time),
                    ]
                })
                .collect();
            table(&["NAME", "REVISION", "TASKS", "CREATED"], &rows);
        }
    }
    Ok(())
}

pub async fn run_run(cmd: RunCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut c = clients.scheduler()?;
    match cmd {
        RunCmd::List {
            state,
            workflow,
            limit,
        } => {
            let state = state
                .as_deref()
                .map(parse_run_state)
                .transpose()?
                .unwrap_or(0);
            let workflow = workflow.unwrap_or_default();
            let limit = (limit > 0).then_some(limit as usize);
            let runs = paginate(limit, async |page_token, page_size| {
                let r = c
                    .list_runs(pb::ListRunsRequest {
                        state,
                        workflow: workflow.clone(),
                        page_size,
                        page_token,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok((r.runs, r.next_page_token))
            })
            .await?;
            if as_json {
                output::json(&Value::Array(runs.iter().map(run_json).collect()));
            } else {
                let rows: Vec<Vec<String>> = runs
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            or_dash(&r.workflow),
                            run_state_name(r.state).into(),
                            time(&r.create_time),
                            r.created_by.clone(),
                        ]
                    })
                    .collect();
                table(&["RUN", "WORKFLOW", "STATE", "CREATED", "BY"], &rows);
            }
        }
        RunCmd::Get { id } => {
            let r = c
                .get_run(pb::GetRunRequest { run_id: id })
                .await?
                .into_inner()
                .run
                .unwrap_or_default();
            show_run(&r, as_json);
        }
        RunCmd::Cancel { id, reason } => {
            let r = c
                .cancel_run(pb::CancelRunRequest { run_id: id, reason })
                .await?
                .into_inner()
                .run
                .unwrap_or_default();
            show_run(&r, as_json);
        }
        RunCmd::Watch { id, after } => follow_run(clients, &id, after, as_json, true).await?,
    }
    Ok(())
}

async fn follow_run(
    clients: &Clients,
    run_id: &str,
    after: i64,
    as_json: bool,
    logs: bool,
) -> anyhow::Result<()> {
    let run = follow(clients, run_id, after, as_json, logs).await?;
    if run.state != pb::RunState::Succeeded as i32 {
        std::process::exit(1);
    }
    Ok(())
}

/// Follows a run: on a terminal, a live table of its tasks (and the latest
/// log lines) redrawn on every event; otherwise (or with --json) one line
/// per event. Returns the run as it ended.
pub async fn follow(
    clients: &Clients,
    run_id: &str,
    after: i64,
    as_json: bool,
    logs: bool,
) -> anyhow::Result<pb::Run> {
    let mut c = clients.scheduler()?;
    let mut events = c
        .watch_run(pb::WatchRunRequest {
            run_id: run_id.to_owned(),
            after_sequence: after,
        })
        .await?
        .into_inner();
    let live = std::io::stdout().is_terminal() && !as_json;
    let mut drawn = 0usize;
    let mut last_event = String::new();
    let mut tail: Vec<String> = Vec::new();
    let mut run = c
        .get_run(pb::GetRunRequest {
            run_id: run_id.to_owned(),
        })
        .await?
        .into_inner()
        .run
        .unwrap_or_default();
    if live {
        drawn = draw(&run, &last_event, &tail, 0);
    }
    while let Some(e) = events.next().await {
        let e = e?.event.unwrap_or_default();
        let kind = pb::RunEventKind::try_from(e.kind)
            .map(|k| k.as_str_name())
            .unwrap_or("UNKNOWN");
        let kind = kind.trim_start_matches("RUN_EVENT_KIND_").to_lowercase();
        let line = format!(
            "{:>4} {} {:<16} {}{}{}",
            e.sequence,
            time(&e.time),
            kind,
            e.task_key,
            if e.worker_id.is_empty() || e.task_key.is_empty() {
                String::new()
            } else {
                format!(" on {}", e.worker_id)
            },
            if e.message.is_empty() {
                String::new()
            } else {
                format!("  {}", e.message)
            }
        );
        if as_json {
            output::json(
                &json!({"sequence": e.sequence, "kind": kind, "task": e.task_key, "worker": e.worker_id, "message": e.message, "time": time(&e.time)}),
            );
        } else if live {
            run = c
                .get_run(pb::GetRunRequest {
                    run_id: run_id.to_owned(),
                })
                .await?
                .into_inner()
                .run
                .unwrap_or_default();
            last_event = line;
            if logs && !e.task_id.is_empty() {
                let l = c
                    .get_task_logs(pb::GetTaskLogsRequest {
                        task_id: e.task_id.clone(),
                        limit: 0,
                    })
                    .await?
                    .into_inner();
                let start = l.lines.len().saturating_sub(5);
                tail = l.lines[start..]
                    .iter()
                    .map(|l| format!("{}: {}", e.task_key, l.line))
                    .collect();
            }
            drawn = draw(&run, &last_event, &tail, drawn);
        } else {
            println!("{line}");
        }
    }
    run = c
        .get_run(pb::GetRunRequest {
            run_id: run_id.to_owned(),
        })
        .await?
        .into_inner()
        .run
        .unwrap_or_default();
    if live {
        draw(&run, &last_event, &tail, drawn);
    } else if !as_json {
        show_run(&run, false);
    }
    Ok(run)
}

/// Redraws the run's task table in place; returns the lines drawn.
fn draw(run: &pb::Run, last_event: &str, tail: &[String], previous: usize) -> usize {
    let mut out = std::io::stdout().lock();
    if previous > 0 {
        let _ = write!(out, "\x1b[{previous}A\x1b[J");
    }
    let symbol = |s: i32| match pb::TaskState::try_from(s) {
        Ok(pb::TaskState::Succeeded) => "\x1b[32m✔\x1b[0m",
        Ok(pb::TaskState::Leased) => "\x1b[33m▶\x1b[0m",
        Ok(pb::TaskState::Dead) | Ok(pb::TaskState::Failed) => "\x1b[31m✘\x1b[0m",
        Ok(pb::TaskState::Cancelled) => "\x1b[90m-\x1b[0m",
        _ => "·",
    };
    let mut lines = 0;
    let _ = writeln!(out, "run {}  {}", run.id, run_state_name(run.state));
    lines += 1;
    let width = run.tasks.iter().map(|t| t.key.len()).max().unwrap_or(4);
    let keys: HashMap<&str, &pb::Task> = run.tasks.iter().map(|t| (t.key.as_str(), t)).collect();
    for t in &run.tasks {
        let deps = if t.depends_on.is_empty() {
            String::new()
        } else {
            format!(
                "  ← {}",
                t.depends_on
                    .iter()
                    .filter(|d| keys.contains_key(d.as_str()))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = writeln!(
            out,
            "  {} {:<width$}  {:<9} {}/{}{}",
            symbol(t.state),
            t.key,
            task_state_name(t.state),
            t.attempt,
            t.max_attempts,
            deps
        );
        lines += 1;
    }
    if !last_event.is_empty() {
        let _ = writeln!(out, "  last: {last_event}");
        lines += 1;
    }
    for l in tail {
        let short: String = l.chars().take(120).collect();
        let _ = writeln!(out, "    \x1b[90m{short}\x1b[0m");
        lines += 1;
    }
    let _ = out.flush();
    lines
}

pub async fn run_task(cmd: TaskCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
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
                    Some(e) => eprintln!("{} {}: {}", task_state_name(t.state), e.kind, e.message),
                    None => println!("{}", t.output),
                }
                if run.state != pb::RunState::Succeeded as i32 {
                    std::process::exit(1);
                }
            } else {
                show_run(&run, as_json);
            }
        }
        TaskCmd::List { run, state } => {
            let run_id = run.unwrap_or_default();
            let state = state
                .as_deref()
                .map(parse_task_state)
                .transpose()?
                .unwrap_or(0);
            let tasks = paginate(None, async |page_token, page_size| {
                let r = c
                    .list_tasks(pb::ListTasksRequest {
                        run_id: run_id.clone(),
                        state,
                        page_size,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((r.tasks, r.next_page_token))
            })
            .await?;
            if as_json {
                output::json(&Value::Array(tasks.iter().map(task_json).collect()));
            } else {
                let mut rows = task_rows(&tasks);
                for (row, t) in rows.iter_mut().zip(&tasks) {
                    row.insert(0, t.id.clone());
                }
                table(
                    &["ID", "TASK", "STATE", "ATTEMPT", "AGENT", "WORKER", "ERROR"],
                    &rows,
                );
            }
        }
        TaskCmd::Retry { id } => {
            let t = c
                .retry_task(pb::RetryTaskRequest { task_id: id })
                .await?
                .into_inner()
                .task
                .unwrap_or_default();
            println!("task {} is {} again", t.id, task_state_name(t.state));
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

pub async fn run_dlq(cmd: DlqCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut c = clients.scheduler()?;
    match cmd {
        DlqCmd::List => {
            let dead_letters = paginate(None, async |page_token, page_size| {
                let r = c
                    .list_dead_letters(pb::ListDeadLettersRequest {
                        page_size,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((r.dead_letters, r.next_page_token))
            })
            .await?;
            if as_json {
                output::json(&Value::Array(
                    dead_letters
                        .iter()
                        .filter_map(|d| d.task.as_ref())
                        .map(task_json)
                        .collect(),
                ));
            } else {
                let rows: Vec<Vec<String>> = dead_letters
                    .iter()
                    .map(|d| {
                        let t = d.task.clone().unwrap_or_default();
                        let err = t
                            .error
                            .map(|e| format!("{}: {}", e.kind, e.message))
                            .unwrap_or_default();
                        vec![t.id, t.run_id, t.key, t.agent, time(&d.dead_time), err]
                    })
                    .collect();
                table(&["TASK", "RUN", "KEY", "AGENT", "DEAD", "ERROR"], &rows);
            }
        }
        DlqCmd::Requeue { task_id } => {
            let t = c
                .requeue_dead_letter(pb::RequeueDeadLetterRequest { task_id })
                .await?
                .into_inner()
                .task
                .unwrap_or_default();
            println!("task {} requeued ({})", t.id, task_state_name(t.state));
        }
    }
    Ok(())
}
