//! `devcycle agent ...` and `devcycle worker ...`: the registry from the
//! command line.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;
use devcycle::proto::registry::v1 as pb;
use serde_json::{Value, json};
use tonic::Code;

use crate::connect::Clients;
use crate::manifest::Manifest;
use crate::output::{self, or_dash, table, time};
use crate::page::paginate;

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Create the agent a manifest describes.
    Create { file: PathBuf },
    /// Publish the version a manifest describes (versions are immutable).
    Publish { file: PathBuf },
    /// Create the agent if missing, publish the version if new, optionally deploy it.
    Apply {
        file: PathBuf,
        #[arg(long)]
        deploy: bool,
    },
    /// Make a published version live.
    Deploy { name: String, version: String },
    /// Make the previously live version live again.
    Rollback { name: String },
    /// List agents.
    List {
        #[arg(long)]
        owner: Option<String>,
    },
    /// Show an agent and its live version.
    Get { name: String },
    /// List an agent's versions, newest first.
    Versions { name: String },
    /// Show an agent's deployment history, newest first.
    History { name: String },
    /// Find agents by capability and labels.
    Find {
        #[arg(long)]
        capability: Option<String>,
        /// key=value; repeat for several.
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
    },
    /// Resolve a version's dependencies against live versions.
    Check {
        name: String,
        /// Defaults to the live version.
        #[arg(long)]
        version: Option<String>,
    },
    /// Delete an agent with its versions and history.
    Delete { name: String },
}

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

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

pub async fn run(cmd: AgentCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut c = clients.registry()?;
    match cmd {
        AgentCmd::Create { file } => {
            let m = Manifest::load(&file)?;
            let a = c
                .create_agent(pb::CreateAgentRequest {
                    agent: Some(m.agent()),
                })
                .await?
                .into_inner()
                .agent
                .unwrap_or_default();
            show_agent(&a, None, as_json);
        }
        AgentCmd::Publish { file } => {
            let m = Manifest::load(&file)?;
            let v = c
                .publish_version(pb::PublishVersionRequest {
                    version: Some(m.version()),
                })
                .await?
                .into_inner()
                .version
                .unwrap_or_default();
            if as_json {
                output::json(&version_json(&v));
            } else {
                println!("published {}@{}", v.agent, v.version);
            }
        }
        AgentCmd::Apply { file, deploy } => {
            let m = Manifest::load(&file)?;
            apply(&mut c, &m, deploy).await?;
            if !as_json {
                println!(
                    "applied {}@{}{}",
                    m.name,
                    m.version,
                    if deploy { " (live)" } else { "" }
                );
            }
        }
        AgentCmd::Deploy { name, version } => {
            let d = c
                .deploy(pb::DeployRequest {
                    agent: name,
                    version,
                })
                .await?
                .into_inner()
                .deployment
                .unwrap_or_default();
            show_deployment(&d, as_json);
        }
        AgentCmd::Rollback { name } => {
            let d = c
                .rollback(pb::RollbackRequest { agent: name })
                .await?
                .into_inner()
                .deployment
                .unwrap_or_default();
            show_deployment(&d, as_json);
        }
        AgentCmd::List { owner } => {
            let all = paginate(None, async |page_token, page_size| {
                let r = c
                    .list_agents(pb::ListAgentsRequest {
                        page_size,
                        page_token,
                        owner: owner.clone().unwrap_or_default(),
                    })
                    .await?
                    .into_inner();
                Ok((r.agents, r.next_page_token))
            })
            .await?;
            if as_json {
                output::json(&Value::Array(all.iter().map(agent_json).collect()));
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.clone(),
                            or_dash(&a.live_version),
                            a.owner.clone(),
                            labels(&a.labels),
                        ]
                    })
                    .collect();
                table(&["NAME", "LIVE", "OWNER", "LABELS"], &rows);
            }
        }
        AgentCmd::Get { name } => {
            let a = c
                .get_agent(pb::GetAgentRequest { name: name.clone() })
                .await?
                .into_inner()
                .agent
                .unwrap_or_default();
            let live = if a.live_version.is_empty() {
                None
            } else {
                c.get_version(pb::GetVersionRequest {
                    agent: name,
                    version: String::new(),
                })
                .await?
                .into_inner()
                .version
            };
            show_agent(&a, live.as_ref(), as_json);
        }
        AgentCmd::Versions { name } => {
            let versions = paginate(None, async |page_token, page_size| {
                let r = c
                    .list_versions(pb::ListVersionsRequest {
                        agent: name.clone(),
                        page_size,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((r.versions, r.next_page_token))
            })
            .await?;
            if as_json {
                output::json(&Value::Array(versions.iter().map(version_json).collect()));
            } else {
                let rows: Vec<Vec<String>> = versions
                    .iter()
                    .map(|v| {
                        vec![
                            v.version.clone(),
                            v.capabilities.join(","),
                            time(&v.publish_time),
                            v.published_by.clone(),
                        ]
                    })
                    .collect();
                table(&["VERSION", "CAPABILITIES", "PUBLISHED", "BY"], &rows);
            }
        }
        AgentCmd::History { name } => {
            let deployments = paginate(None, async |page_token, page_size| {
                let r = c
                    .list_deployments(pb::ListDeploymentsRequest {
                        agent: name.clone(),
                        page_size,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((r.deployments, r.next_page_token))
            })
            .await?;
            if as_json {
                output::json(&Value::Array(
                    deployments.iter().map(deployment_json).collect(),
                ));
            } else {
                let rows: Vec<Vec<String>> = deployments
                    .iter()
                    .map(|d| {
                        vec![
                            d.revision.to_string(),
                            d.version.clone(),
                            kind(d.kind).into(),
                            or_dash(&d.previous_version),
                            time(&d.deploy_time),
                            d.actor.clone(),
                        ]
                    })
                    .collect();
                table(
                    &["REVISION", "VERSION", "KIND", "PREVIOUS", "TIME", "BY"],
                    &rows,
                );
            }
        }
        AgentCmd::Find {
            capability,
            labels: wanted,
        } => {
            let capability = capability.unwrap_or_default();
            let wanted: std::collections::HashMap<_, _> = wanted.into_iter().collect();
            let matches = paginate(None, async |page_token, page_size| {
                let r = c
                    .find_agents(pb::FindAgentsRequest {
                        capability: capability.clone(),
                        labels: wanted.clone(),
                        page_size,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((r.matches, r.next_page_token))
            })
            .await?;
            if as_json {
                let v = matches
                    .iter()
                    .map(|m| {
                        json!({
                            "agent": m.agent.as_ref().map(agent_json),
                            "live": m.live.as_ref().map(version_json),
                        })
                    })
                    .collect();
                output::json(&Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> = matches
                    .iter()
                    .map(|m| {
                        let a = m.agent.clone().unwrap_or_default();
                        let v = m.live.clone().unwrap_or_default();
                        vec![
                            a.name,
                            v.version,
                            v.capabilities.join(","),
                            labels(&a.labels),
                        ]
                    })
                    .collect();
                table(&["NAME", "LIVE", "CAPABILITIES", "LABELS"], &rows);
            }
        }
        AgentCmd::Check { name, version } => {
            let r = c
                .check_compatibility(pb::CheckCompatibilityRequest {
                    agent: name.clone(),
                    version: version.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if as_json {
                output::json(&json!({
                    "compatible": r.compatible,
                    "resolved": r.resolved.iter().map(|d| json!({
                        "agent": d.agent, "requirement": d.requirement, "version": d.version, "depth": d.depth,
                    })).collect::<Vec<_>>(),
                    "conflicts": r.conflicts.iter().map(|c| json!({
                        "kind": conflict_kind(c.kind), "path": c.path, "agent": c.agent,
                        "requirement": c.requirement, "live_version": c.live_version, "message": c.message,
                    })).collect::<Vec<_>>(),
                }));
            } else {
                for d in &r.resolved {
                    println!(
                        "{}{} {} -> {}",
                        "  ".repeat(d.depth as usize),
                        d.agent,
                        d.requirement,
                        d.version
                    );
                }
                for c in &r.conflicts {
                    println!("conflict ({}): {}", conflict_kind(c.kind), c.message);
                }
                println!(
                    "{}",
                    if r.compatible {
                        "compatible"
                    } else {
                        "NOT compatible"
                    }
                );
            }
            if !r.compatible {
                std::process::exit(1);
            }
        }
        AgentCmd::Delete { name } => {
            c.delete_agent(pb::DeleteAgentRequest { name: name.clone() })
                .await?;
            if !as_json {
                println!("deleted {name}");
            }
        }
    }
    Ok(())
}

/// Creates, publishes and deploys as needed: safe to repeat.
pub async fn apply(
    c: &mut pb::agent_registry_client::AgentRegistryClient<crate::connect::Conn>,
    m: &Manifest,
    deploy: bool,
) -> anyhow::Result<()> {
    match c
        .create_agent(pb::CreateAgentRequest {
            agent: Some(m.agent()),
        })
        .await
    {
        Ok(_) => {}
        Err(s) if s.code() == Code::AlreadyExists => {}
        Err(s) => return Err(s.into()),
    }
    match c
        .publish_version(pb::PublishVersionRequest {
            version: Some(m.version()),
        })
        .await
    {
        Ok(_) => {}
        Err(s) if s.code() == Code::AlreadyExists => {
            let existing = c
                .get_version(pb::GetVersionRequest {
                    agent: m.name.clone(),
                    version: m.version.clone(),
                })
                .await?
                .into_inner()
                .version
                .unwrap_or_default();
            let mut mine = m.version();
            mine.publish_time = existing.publish_time;
            mine.published_by = existing.published_by.clone();
            mine.capabilities.sort();
            mine.capabilities.dedup();
            if existing != mine {
                bail!(
                    "{}@{} is already published with different contents; versions are immutable, bump the version",
                    m.name,
                    m.version
                );
            }
        }
        Err(s) => return Err(s.into()),
    }
    if deploy {
        c.deploy(pb::DeployRequest {
            agent: m.name.clone(),
            version: m.version.clone(),
        })
        .await?;
    }
    Ok(())
}

pub async fn run_worker(cmd: WorkerCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    use devcycle::proto::executor::v1 as ex;
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
            let rows: Vec<Vec<String>> = r
                .tasks
                .iter()
                .map(|t| {
                    vec![
                        t.task_id.clone(),
                        t.attempt.to_string(),
                        format!("{}@{}", t.agent, t.agent_version),
                        t.pid.to_string(),
                        time(&t.start_time),
                    ]
                })
                .collect();
            table(&["TASK", "ATTEMPT", "AGENT", "PID", "STARTED"], &rows);
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
            let workers = paginate(None, async |page_token, page_size| {
                let r = c
                    .list_workers(pb::ListWorkersRequest {
                        agent: agent.clone(),
                        page_size,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((r.workers, r.next_page_token))
            })
            .await?;
            if as_json {
                let v = workers
                    .iter()
                    .map(|w| {
                        json!({
                            "id": w.id, "agents": w.agents, "capacity": w.capacity, "in_flight": w.in_flight,
                            "address": w.address, "state": worker_state(w.state),
                            "last_heartbeat_time": time(&w.last_heartbeat_time),
                        })
                    })
                    .collect();
                output::json(&Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> = workers
                    .iter()
                    .map(|w| {
                        vec![
                            w.id.clone(),
                            worker_state(w.state).into(),
                            format!("{}/{}", w.in_flight, w.capacity),
                            if w.agents.is_empty() {
                                "*".into()
                            } else {
                                w.agents.join(",")
                            },
                            time(&w.last_heartbeat_time),
                        ]
                    })
                    .collect();
                table(&["ID", "STATE", "BUSY", "AGENTS", "LAST HEARTBEAT"], &rows);
            }
        }
    }
    Ok(())
}

fn labels(l: &std::collections::HashMap<String, String>) -> String {
    let mut v: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    v.join(",")
}

fn kind(k: i32) -> &'static str {
    match pb::DeploymentKind::try_from(k) {
        Ok(pb::DeploymentKind::Rollback) => "rollback",
        _ => "deploy",
    }
}

fn conflict_kind(k: i32) -> &'static str {
    match pb::ConflictKind::try_from(k) {
        Ok(pb::ConflictKind::UnknownAgent) => "unknown-agent",
        Ok(pb::ConflictKind::NotDeployed) => "not-deployed",
        Ok(pb::ConflictKind::VersionMismatch) => "version-mismatch",
        Ok(pb::ConflictKind::Cycle) => "cycle",
        _ => "unknown",
    }
}

fn worker_state(s: i32) -> &'static str {
    match pb::WorkerState::try_from(s) {
        Ok(pb::WorkerState::Up) => "up",
        Ok(pb::WorkerState::Draining) => "draining",
        Ok(pb::WorkerState::Down) => "down",
        _ => "unknown",
    }
}

fn agent_json(a: &pb::Agent) -> Value {
    json!({
        "name": a.name, "owner": a.owner, "description": a.description, "labels": a.labels,
        "live_version": a.live_version, "create_time": time(&a.create_time), "update_time": time(&a.update_time),
    })
}

fn version_json(v: &pb::AgentVersion) -> Value {
    json!({
        "agent": v.agent, "version": v.version, "capabilities": v.capabilities,
        "runtime": runtime_json(v.runtime.as_ref()),
        "dependencies": v.dependencies.iter().map(|d| json!({"agent": d.agent, "requirement": d.requirement})).collect::<Vec<_>>(),
        "publish_time": time(&v.publish_time), "published_by": v.published_by,
    })
}

fn runtime_json(r: Option<&pb::Runtime>) -> Value {
    use pb::runtime::Kind;
    match r.and_then(|r| r.kind.as_ref()) {
        Some(Kind::Process(p)) => json!({
            "process": { "command": p.command, "args": p.args, "env": p.env,
                "network_allowed": p.network_allowed, "require_isolation": p.require_isolation }
        }),
        Some(Kind::Http(h)) => json!({
            "http": { "url": h.url, "protocol": if h.protocol == pb::HttpProtocol::OpenaiChat as i32 { "openai-chat" } else { "json" },
                "model": h.model, "timeout_ms": h.timeout_ms, "token_env": h.token_env,
                "token_file": h.token_file, "max_retries": h.max_retries }
        }),
        Some(Kind::Builtin(b)) => json!({ "builtin": { "name": b.name } }),
        None => Value::Null,
    }
}

fn deployment_json(d: &pb::Deployment) -> Value {
    json!({
        "agent": d.agent, "version": d.version, "previous_version": d.previous_version,
        "kind": kind(d.kind), "actor": d.actor, "deploy_time": time(&d.deploy_time), "revision": d.revision,
    })
}

fn show_deployment(d: &pb::Deployment, as_json: bool) {
    if as_json {
        output::json(&deployment_json(d));
    } else {
        if kind(d.kind) == "rollback" {
            println!(
                "rolled back: {}@{} is live (revision {})",
                d.agent, d.version, d.revision
            );
        } else {
            println!(
                "deployed: {}@{} is live (was {}, revision {})",
                d.agent,
                d.version,
                or_dash(&d.previous_version),
                d.revision
            );
        }
    }
}

fn show_agent(a: &pb::Agent, live: Option<&pb::AgentVersion>, as_json: bool) {
    if as_json {
        let mut v = agent_json(a);
        if let Some(l) = live {
            v["live"] = version_json(l);
        }
        output::json(&v);
        return;
    }
    println!("name:         {}", a.name);
    println!("owner:        {}", a.owner);
    if !a.description.is_empty() {
        println!("description:  {}", a.description);
    }
    println!("labels:       {}", or_dash(&labels(&a.labels)));
    println!("live version: {}", or_dash(&a.live_version));
    if let Some(v) = live {
        println!("capabilities: {}", or_dash(&v.capabilities.join(", ")));
        for d in &v.dependencies {
            println!("depends on:   {} {}", d.agent, d.requirement);
        }
    }
    println!("created:      {}", time(&a.create_time));
}
