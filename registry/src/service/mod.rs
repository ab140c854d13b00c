//! The `AgentRegistry` gRPC service: request validation and the rules that
//! span several store calls (deploy, rollback, compatibility).

use std::sync::Arc;
use std::time::Duration;

use devcycle::authz::Caller;
use devcycle::page;
use devcycle::proto::registry::v1 as pb;
use devcycle::proto::registry::v1::agent_registry_server::AgentRegistry;
use devcycle::time::now_ms;
use devcycle::validate::{self, FieldError};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::model::*;
use crate::resolve::resolve;
use crate::store::RegistryStore;
use crate::watch;

mod deploy;
mod workers;

use deploy::resolution_to_pb;
use workers::worker_from_pb;

pub struct Registry {
    pub(crate) store: Arc<dyn RegistryStore>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) shutdown: CancellationToken,
}

/// Answers with this service's error mapped by its `From<Error> for Status`.
fn respond<T>(r: Result<T>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

/// One page of a listing in wire form. `fetch(after, n)` lists up to `n`
/// rows with keys above `after`; it is asked for one row more than the page
/// holds, which tells whether another page follows.
async fn one_page<T, P, Fut>(
    page_size: i32,
    token: &str,
    fetch: impl FnOnce(Option<String>, usize) -> Fut,
    key: impl Fn(&T) -> String,
) -> Result<(Vec<P>, String)>
where
    Fut: Future<Output = Result<Vec<T>>>,
    P: From<T>,
{
    let size = page::page_size(page_size)?;
    let after = page::decode_token(token)?;
    let mut rows = fetch(after, size + 1).await?;
    let next_page_token = page::finish(&mut rows, size, key);
    Ok((rows.into_iter().map(Into::into).collect(), next_page_token))
}

fn not_found(what: String) -> Error {
    Error::NotFound(what)
}

impl Registry {
    async fn agent(&self, name: &str, field: &str) -> Result<Agent> {
        validate::dns_label(field, name)?;
        self.store
            .get_agent(name)
            .await?
            .ok_or_else(|| not_found(format!("{field}: agent {name} does not exist")))
    }

    /// A version by string, or the live one when `version` is empty.
    async fn version_or_live(&self, agent: &str, version: &str) -> Result<AgentVersion> {
        let a = self.agent(agent, "agent").await?;
        let version = if version.is_empty() {
            a.live_version.ok_or_else(|| {
                Error::FailedPrecondition(format!("agent {agent} has no live version"))
            })?
        } else {
            parse_version("version", version)?.to_string()
        };
        self.store
            .get_version(agent, &version)
            .await?
            .ok_or_else(|| {
                not_found(format!(
                    "version: {version} of agent {agent} is not published"
                ))
            })
    }
}

#[tonic::async_trait]
impl AgentRegistry for Registry {
    async fn create_agent(
        &self,
        req: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::CreateAgentResponse>, Status> {
        let actor = Caller::of(&req)?.actor();
        respond(
            async {
                let a = validate::present("agent", req.into_inner().agent)?;
                let fields = AgentFields::from_pb(a, "agent")?;
                let agent = self.store.create_agent(&fields, &actor, now_ms()).await?;
                Ok(pb::CreateAgentResponse {
                    agent: Some(agent.into()),
                })
            }
            .await,
        )
    }

    async fn get_agent(
        &self,
        req: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        respond(
            async {
                let agent = self.agent(&req.get_ref().name, "name").await?;
                Ok(pb::GetAgentResponse {
                    agent: Some(agent.into()),
                })
            }
            .await,
        )
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        respond(
            async {
                let r = req.into_inner();
                let owner = (!r.owner.is_empty()).then_some(r.owner.as_str());
                let fetch = |after: Option<String>, n| async move {
                    self.store.list_agents(owner, after.as_deref(), n).await
                };
                let (agents, next_page_token) =
                    one_page(r.page_size, &r.page_token, fetch, |a: &Agent| {
                        a.name.clone()
                    })
                    .await?;
                Ok(pb::ListAgentsResponse {
                    agents,
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn update_agent(
        &self,
        req: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        let actor = Caller::of(&req)?.actor();
        respond(
            async {
                let r = req.into_inner();
                let a = validate::present("agent", r.agent)?;
                let mask = validate::present("update_mask", r.update_mask)?;
                if mask.paths.is_empty() {
                    return Err(
                        FieldError::new("update_mask.paths", "name at least one field").into(),
                    );
                }
                validate::dns_label("agent.name", &a.name)?;
                let mut patch = AgentPatch::default();
                for (i, path) in mask.paths.iter().enumerate() {
                    match path.as_str() {
                        "owner" => {
                            check_owner("agent.owner", &a.owner)?;
                            patch.owner = Some(a.owner.clone());
                        }
                        "description" => {
                            validate::max_bytes("agent.description", &a.description, 1024)?;
                            patch.description = Some(a.description.clone());
                        }
                        "labels" => {
                            validate::labels("agent.labels", &a.labels)?;
                            patch.labels = Some(a.labels.clone().into_iter().collect());
                        }
                        other => {
                            return Err(FieldError::new(
                                format!("update_mask.paths[{i}]"),
                                format!("{other:?} is not updatable (owner, description, labels)"),
                            )
                            .into());
                        }
                    }
                }
                let agent = self
                    .store
                    .update_agent(&a.name, &patch, &actor, now_ms())
                    .await?;
                Ok(pb::UpdateAgentResponse {
                    agent: Some(agent.into()),
                })
            }
            .await,
        )
    }

    async fn delete_agent(
        &self,
        req: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let actor = Caller::of(&req)?.actor();
        respond(
            async {
                let name = &req.get_ref().name;
                validate::dns_label("name", name)?;
                self.store.delete_agent(name, &actor, now_ms()).await?;
                Ok(pb::DeleteAgentResponse {})
            }
            .await,
        )
    }

    async fn publish_version(
        &self,
        req: Request<pb::PublishVersionRequest>,
    ) -> Result<Response<pb::PublishVersionResponse>, Status> {
        let actor = Caller::of(&req)?.actor();
        respond(
            async {
                let v = validate::present("version", req.into_inner().version)?;
                let (agent, version, spec) = version_from_pb(v)?;
                let v = AgentVersion {
                    agent,
                    version,
                    spec,
                    publish_time: now_ms(),
                    published_by: actor.clone(),
                };
                self.store.publish_version(&v, &actor).await?;
                Ok(pb::PublishVersionResponse {
                    version: Some(v.into()),
                })
            }
            .await,
        )
    }

    async fn get_version(
        &self,
        req: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        respond(
            async {
                let r = req.get_ref();
                let v = self.version_or_live(&r.agent, &r.version).await?;
                Ok(pb::GetVersionResponse {
                    version: Some(v.into()),
                })
            }
            .await,
        )
    }

    async fn list_versions(
        &self,
        req: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        respond(
            async {
                let r = req.into_inner();
                self.agent(&r.agent, "agent").await?;
                let size = page::page_size(r.page_size)?;
                let after = page::decode_token(&r.page_token)?
                    .map(|t| parse_version("page_token", &t))
                    .transpose()?;
                let mut versions = self.store.list_versions(&r.agent).await?;
                versions.sort_by(|a, b| b.version.cmp(&a.version));
                if let Some(after) = after {
                    versions.retain(|v| v.version < after);
                }
                versions.truncate(size + 1);
                let next_page_token = page::finish(&mut versions, size, |v| v.version.to_string());
                Ok(pb::ListVersionsResponse {
                    versions: versions.into_iter().map(Into::into).collect(),
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn deploy(
        &self,
        req: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        respond(self.deploy_inner(&caller, req.into_inner()).await)
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        respond(self.rollback_inner(&caller, req.into_inner()).await)
    }

    async fn list_deployments(
        &self,
        req: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        respond(
            async {
                let r = req.into_inner();
                self.agent(&r.agent, "agent").await?;
                let size = page::page_size(r.page_size)?;
                let before = page::decode_token(&r.page_token)?
                    .map(|t| {
                        t.parse::<i64>().map_err(|_| {
                            FieldError::new("page_token", "not a token from a previous response")
                        })
                    })
                    .transpose()?;
                let mut deployments = self
                    .store
                    .list_deployments(&r.agent, before, size + 1)
                    .await?;
                let next_page_token = page::finish(&mut deployments, size, |d| d.id.to_string());
                Ok(pb::ListDeploymentsResponse {
                    deployments: deployments.into_iter().map(Into::into).collect(),
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn check_compatibility(
        &self,
        req: Request<pb::CheckCompatibilityRequest>,
    ) -> Result<Response<pb::CheckCompatibilityResponse>, Status> {
        respond(
            async {
                let r = req.get_ref();
                let v = self.version_or_live(&r.agent, &r.version).await?;
                let resolution = resolve(self.store.as_ref(), &v).await?;
                Ok(resolution_to_pb(resolution))
            }
            .await,
        )
    }

    async fn find_agents(
        &self,
        req: Request<pb::FindAgentsRequest>,
    ) -> Result<Response<pb::FindAgentsResponse>, Status> {
        respond(
            async {
                let r = req.into_inner();
                if !r.capability.is_empty() {
                    validate::token("capability", &r.capability, 64, b"._")?;
                }
                validate::labels("labels", &r.labels)?;
                let size = page::page_size(r.page_size)?;
                let after = page::decode_token(&r.page_token)?;
                let mut labels: Vec<(String, String)> = r.labels.into_iter().collect();
                labels.sort();
                let capability = (!r.capability.is_empty()).then_some(r.capability.as_str());
                let mut found = self
                    .store
                    .find_agents(capability, &labels, after.as_deref(), size + 1)
                    .await?;
                let next_page_token = page::finish(&mut found, size, |(a, _)| a.name.clone());
                Ok(pb::FindAgentsResponse {
                    matches: found
                        .into_iter()
                        .map(|(a, v)| pb::AgentMatch {
                            agent: Some(a.into()),
                            live: Some(v.into()),
                        })
                        .collect(),
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn register_worker(
        &self,
        req: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        respond(
            async {
                let w = worker_from_pb(
                    validate::present("worker", req.into_inner().worker)?,
                    now_ms(),
                )?;
                Self::own_worker(&caller, "worker.id", &w.id)?;
                let w = self.store.register_worker(&w, &caller.actor()).await?;
                Ok(pb::RegisterWorkerResponse {
                    worker: Some(w.into()),
                    heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u32,
                })
            }
            .await,
        )
    }

    async fn worker_heartbeat(
        &self,
        req: Request<pb::WorkerHeartbeatRequest>,
    ) -> Result<Response<pb::WorkerHeartbeatResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        respond(
            async {
                let r = req.into_inner();
                validate::dns_label("worker_id", &r.worker_id)?;
                Self::own_worker(&caller, "worker_id", &r.worker_id)?;
                self.store
                    .heartbeat(&r.worker_id, r.in_flight, r.draining, now_ms())
                    .await?
                    .ok_or_else(|| {
                        not_found(format!(
                            "worker_id: worker {} is not registered",
                            r.worker_id
                        ))
                    })?;
                Ok(pb::WorkerHeartbeatResponse {
                    heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u32,
                })
            }
            .await,
        )
    }

    async fn deregister_worker(
        &self,
        req: Request<pb::DeregisterWorkerRequest>,
    ) -> Result<Response<pb::DeregisterWorkerResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        respond(
            async {
                let id = &req.get_ref().worker_id;
                validate::dns_label("worker_id", id)?;
                Self::own_worker(&caller, "worker_id", id)?;
                if !self
                    .store
                    .deregister_worker(id, &caller.actor(), now_ms())
                    .await?
                {
                    return Err(not_found(format!(
                        "worker_id: worker {id} is not registered"
                    )));
                }
                Ok(pb::DeregisterWorkerResponse {})
            }
            .await,
        )
    }

    async fn list_workers(
        &self,
        req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        respond(
            async {
                let r = req.into_inner();
                if !r.agent.is_empty() {
                    validate::dns_label("agent", &r.agent)?;
                }
                let agent = (!r.agent.is_empty()).then_some(r.agent.as_str());
                let fetch = |after: Option<String>, n| async move {
                    self.store.list_workers(agent, after.as_deref(), n).await
                };
                let (workers, next_page_token) =
                    one_page(r.page_size, &r.page_token, fetch, |w: &Worker| w.id.clone()).await?;
                Ok(pb::ListWorkersResponse {
                    workers,
                    next_page_token,
                })
            }
            .await,
        )
    }

    type WatchStream = watch::WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = req.into_inner();
        respond(watch::start(Arc::clone(&self.store), r, self.shutdown.clone()).await)
    }
}
