//! Following a run live: a redrawn table on a terminal, one line per event
//! otherwise.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};

use devcycle::proto::scheduler::v1 as pb;
use serde_json::json;
use tokio_stream::StreamExt;

use super::{runs, tasks};
use crate::connect::{Clients, Conn};

type Scheduler = pb::scheduler_client::SchedulerClient<Conn>;
use crate::output::{self, time};

/// Follows a run to its end; exits 1 unless it succeeded.
pub async fn follow_run(
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
    let mut run = get_run(&mut c, run_id).await?;
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
            run = get_run(&mut c, run_id).await?;
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
    run = get_run(&mut c, run_id).await?;
    if live {
        draw(&run, &last_event, &tail, drawn);
    } else if !as_json {
        runs::show(&run, false);
    }
    Ok(run)
}

async fn get_run(c: &mut Scheduler, run_id: &str) -> anyhow::Result<pb::Run> {
    let req = pb::GetRunRequest {
        run_id: run_id.to_owned(),
    };
    Ok(c.get_run(req).await?.into_inner().run.unwrap_or_default())
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
    let _ = writeln!(out, "run {}  {}", run.id, runs::state(run.state));
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
            tasks::state(t.state),
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
