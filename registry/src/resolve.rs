//! Dependency resolution against live versions: what a version needs,
//! transitively, and what depends on the agent it would replace.

use std::collections::HashMap;

use crate::error::Result;
use crate::model::AgentVersion;
use crate::store::RegistryStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    UnknownAgent,
    NotDeployed,
    VersionMismatch,
    Cycle,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub kind: ConflictKind,
    /// From the checked agent to the failing dependency.
    pub path: Vec<String>,
    pub agent: String,
    pub requirement: String,
    pub live_version: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub agent: String,
    pub requirement: String,
    pub version: String,
    pub depth: usize,
}

#[derive(Debug, Default)]
pub struct Resolution {
    pub resolved: Vec<Resolved>,
    pub conflicts: Vec<Conflict>,
}

impl Resolution {
    pub fn compatible(&self) -> bool {
        self.conflicts.is_empty()
    }

    /// One line naming every conflict, for error messages.
    pub fn summary(&self) -> String {
        self.conflicts
            .iter()
            .map(|c| c.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    OnPath,
    Done,
}

/// Resolves `root` as if it were live: its dependencies (transitively,
/// against live versions), and the live agents that depend on its agent.
pub async fn resolve(store: &dyn RegistryStore, root: &AgentVersion) -> Result<Resolution> {
    let mut out = Resolution::default();
    let mut marks = HashMap::from([(root.agent.clone(), Mark::OnPath)]);
    let mut path = vec![root.agent.clone()];
    walk(store, root, &mut path, &mut marks, &mut out).await?;

    let version = root.version.to_string();
    for d in store.live_dependents(&root.agent).await? {
        let ok = semver::VersionReq::parse(&d.requirement).is_ok_and(|r| r.matches(&root.version));
        if !ok {
            out.conflicts.push(Conflict {
                kind: ConflictKind::VersionMismatch,
                path: vec![d.agent.clone(), root.agent.clone()],
                agent: root.agent.clone(),
                requirement: d.requirement.clone(),
                live_version: Some(version.clone()),
                message: format!(
                    "live {}@{} requires {} {}, which {} does not satisfy",
                    d.agent, d.version, root.agent, d.requirement, version
                ),
            });
        }
    }
    Ok(out)
}

fn walk<'a>(
    store: &'a dyn RegistryStore,
    version: &'a AgentVersion,
    path: &'a mut Vec<String>,
    marks: &'a mut HashMap<String, Mark>,
    out: &'a mut Resolution,
) -> futures::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        for dep in &version.spec.dependencies {
            let mut conflict = |kind, live: Option<String>, message: String| {
                let mut p = path.clone();
                p.push(dep.agent.clone());
                out.conflicts.push(Conflict {
                    kind,
                    path: p,
                    agent: dep.agent.clone(),
                    requirement: dep.requirement.clone(),
                    live_version: live,
                    message,
                });
            };
            if marks.get(&dep.agent) == Some(&Mark::OnPath) {
                let cycle = format!("{} -> {}", path.join(" -> "), dep.agent);
                conflict(
                    ConflictKind::Cycle,
                    None,
                    format!("dependency cycle: {cycle}"),
                );
                continue;
            }
            let Some(agent) = store.get_agent(&dep.agent).await? else {
                conflict(
                    ConflictKind::UnknownAgent,
                    None,
                    format!(
                        "{} depends on {}, which does not exist",
                        version.agent, dep.agent
                    ),
                );
                continue;
            };
            let Some(live) = agent.live_version else {
                conflict(
                    ConflictKind::NotDeployed,
                    None,
                    format!(
                        "{} depends on {}, which has no live version",
                        version.agent, dep.agent
                    ),
                );
                continue;
            };
            let req = semver::VersionReq::parse(&dep.requirement);
            let matches = match (&req, semver::Version::parse(&live)) {
                (Ok(r), Ok(v)) => r.matches(&v),
                _ => false,
            };
            if !matches {
                conflict(
                    ConflictKind::VersionMismatch,
                    Some(live.clone()),
                    format!(
                        "{} requires {} {}, but {} is live",
                        version.agent, dep.agent, dep.requirement, live
                    ),
                );
                continue;
            }
            out.resolved.push(Resolved {
                agent: dep.agent.clone(),
                requirement: dep.requirement.clone(),
                version: live.clone(),
                depth: path.len(),
            });
            if marks.get(&dep.agent) == Some(&Mark::Done) {
                continue;
            }
            let Some(next) = store.get_version(&dep.agent, &live).await? else {
                continue;
            };
            marks.insert(dep.agent.clone(), Mark::OnPath);
            path.push(dep.agent.clone());
            walk(store, &next, path, marks, out).await?;
            path.pop();
            marks.insert(dep.agent.clone(), Mark::Done);
        }
        Ok(())
    })
}
