//! `devcycle agent ...`: agents in the registry from the command line. How
//! agents, versions and deployments show is in `crate::cmd`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;
use devcycle::proto::registry::v1 as pb;
use devcycle_registry::manifest::Manifest;
use tonic::Code;

use crate::cmd::{agents, deploy, versions};
use crate::connect::Clients;
use crate::output::{self, print_list};
use crate::page;

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
            agents::show(&a, None, as_json);
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
                output::json(&versions::json(&v));
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
            let req = pb::DeployRequest {
                agent: name,
                version,
            };
            let d = c.deploy(req).await?.into_inner().deployment;
            deploy::show(&d.unwrap_or_default(), as_json);
        }
        AgentCmd::Rollback { name } => {
            let req = pb::RollbackRequest { agent: name };
            let d = c.rollback(req).await?.into_inner().deployment;
            deploy::show(&d.unwrap_or_default(), as_json);
        }
        AgentCmd::List { owner } => {
            let owner = owner.unwrap_or_default();
            let all = page::all(None, async |page_token, page_size| {
                let req = pb::ListAgentsRequest {
                    page_size,
                    page_token,
                    owner: owner.clone(),
                };
                c.list_agents(req).await
            })
            .await?;
            print_list(&all, as_json);
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
            agents::show(&a, live.as_ref(), as_json);
        }
        AgentCmd::Versions { name } => {
            let all = page::all(None, async |page_token, page_size| {
                let req = pb::ListVersionsRequest {
                    agent: name.clone(),
                    page_size,
                    page_token,
                };
                c.list_versions(req).await
            })
            .await?;
            print_list(&all, as_json);
        }
        AgentCmd::History { name } => {
            let all = page::all(None, async |page_token, page_size| {
                let req = pb::ListDeploymentsRequest {
                    agent: name.clone(),
                    page_size,
                    page_token,
                };
                c.list_deployments(req).await
            })
            .await?;
            print_list(&all, as_json);
        }
        AgentCmd::Find { capability, labels } => {
            let capability = capability.unwrap_or_default();
            let labels: std::collections::HashMap<_, _> = labels.into_iter().collect();
            let all = page::all(None, async |page_token, page_size| {
                let req = pb::FindAgentsRequest {
                    capability: capability.clone(),
                    labels: labels.clone(),
                    page_size,
                    page_token,
                };
                c.find_agents(req).await
            })
            .await?;
            print_list(&all, as_json);
        }
        AgentCmd::Check { name, version } => {
            let req = pb::CheckCompatibilityRequest {
                agent: name,
                version: version.unwrap_or_default(),
            };
            let r = c.check_compatibility(req).await?.into_inner();
            versions::show_check(&r, as_json);
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
