//! Agent resolution through the registry, cached. Published versions never
//! change, so they are cached for good; which version is live (and which
//! agent has a capability) is cached for a short time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use devcycle::proto::registry::v1 as reg;
use devcycle::proto::registry::v1::agent_registry_client::AgentRegistryClient;
use hashbrown::HashMap;
use parking_lot::Mutex;
use tonic::Code;
use tonic::transport::Channel;

use crate::error::Error;
use crate::spec::Target;
use devcycle::validate::FieldError;

/// How long "what is live" answers are reused.
pub const LIVE_TTL: Duration = Duration::from_secs(2);
const MAX_CACHED: usize = 10_000;

pub struct Resolver {
    client: AgentRegistryClient<Channel>,
    versions: Mutex<HashMap<(String, String), Arc<reg::AgentVersion>>>,
    live: Mutex<HashMap<Target, (Arc<reg::AgentVersion>, Instant)>>,
}

impl Resolver {
    pub fn new(client: AgentRegistryClient<Channel>) -> Self {
        Self {
            client,
            versions: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
        }
    }

    /// The agent version a task runs. `field` names the target in errors.
    pub async fn resolve(
        &self,
        target: &Target,
        field: &str,
    ) -> Result<Arc<reg::AgentVersion>, Error> {
        if let Target::Agent {
            name,
            version: Some(v),
        } = target
        {
            if let Some(hit) = self.versions.lock().get(&(name.clone(), v.clone())) {
                return Ok(Arc::clone(hit));
            }
        } else if let Some((hit, at)) = self.live.lock().get(target)
            && at.elapsed() < LIVE_TTL
        {
            return Ok(Arc::clone(hit));
        }
        let found = self.fetch(target, field).await?;
        let found = Arc::new(found);
        let mut versions = self.versions.lock();
        if versions.len() >= MAX_CACHED {
            versions.clear();
        }
        versions.insert(
            (found.agent.clone(), found.version.clone()),
            Arc::clone(&found),
        );
        drop(versions);
        if !matches!(
            target,
            Target::Agent {
                version: Some(_),
                ..
            }
        ) {
            let mut live = self.live.lock();
            if live.len() >= MAX_CACHED {
                live.clear();
            }
            live.insert(target.clone(), (Arc::clone(&found), Instant::now()));
        }
        Ok(found)
    }

    async fn fetch(&self, target: &Target, field: &str) -> Result<reg::AgentVersion, Error> {
        let mut client = self.client.clone();
        match target {
            Target::Agent { name, version } => {
                let req = reg::GetVersionRequest {
                    agent: name.clone(),
                    version: version.clone().unwrap_or_default(),
                };
                match client.get_version(devcycle::otel::request(req)).await {
                    Ok(r) => r.into_inner().version.ok_or_else(|| {
                        Error::Unavailable("the registry returned no version".into())
                    }),
                    Err(s) => Err(match s.code() {
                        Code::NotFound => match version {
                            Some(v) => FieldError::new(
                                format!("{field}.version"),
                                format!("{name}@{v} is not published"),
                            )
                            .into(),
                            None => FieldError::new(
                                format!("{field}.name"),
                                format!("agent {name} does not exist"),
                            )
                            .into(),
                        },
                        Code::FailedPrecondition => Error::FailedPrecondition(format!(
                            "{field}.name: agent {name} has no live version; deploy one first"
                        )),
                        Code::InvalidArgument => {
                            FieldError::new(field, s.message().to_owned()).into()
                        }
                        _ => Error::Unavailable(format!("registry: {}", s.message())),
                    }),
                }
            }
            Target::Capability(cap) => {
                let req = reg::FindAgentsRequest {
                    capability: cap.clone(),
                    page_size: 1,
                    ..Default::default()
                };
                let r = client
                    .find_agents(devcycle::otel::request(req))
                    .await
                    .map_err(|s| Error::Unavailable(format!("registry: {}", s.message())))?
                    .into_inner();
                r.matches.into_iter().find_map(|m| m.live).ok_or_else(|| {
                    FieldError::new(field, format!("no live agent has capability {cap}")).into()
                })
            }
            // Callers never resolve approvals: no agent runs them.
            Target::Approval => Err(FieldError::new(field, "an approval has no agent").into()),
        }
    }
}
