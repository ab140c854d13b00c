//! The registry store, written once for both engines over [`exec`]'s
//! statement runner. Backend-specific code lives in `exec.rs` (beginning a
//! write transaction, announcing a commit) and in `listen.rs` (following
//! other PostgreSQL replicas).

use std::collections::BTreeMap;

use async_trait::async_trait;
use devcycle::db::{Database, Failure, classify};
use sqlx::AssertSqlSafe;
use tokio::sync::watch;

use super::exec::{Arg, Args, On, Tx};
use super::listen::spawn_listener;
use super::rows::*;
use super::sql;
use super::{Dependent, NewDeployment, RegistryStore};
use crate::error::{Error, Result};
use crate::model::*;

pub struct SqlStore {
    db: Database,
    revisions: watch::Sender<i64>,
}

impl SqlStore {
    /// Reads the head revision; on PostgreSQL, also starts following the
    /// commits of other replicas.
    pub async fn new(db: &Database) -> Result<Self> {
        let head = On::Pool(db).scalar(sql::HEAD_REVISION, vec![]).await?;
        let (tx, _) = watch::channel(head);
        if let Database::Postgres(pool) = db {
            spawn_listener(pool.clone(), tx.clone());
        }
        Ok(Self {
            db: db.clone(),
            revisions: tx,
        })
    }

    fn read(&self) -> On<'_> {
        On::Pool(&self.db)
    }

    async fn begin(&self) -> Result<Tx> {
        Tx::begin(&self.db).await
    }

    /// Appends an event under the write lock; returns its revision.
    async fn append(tx: &mut Tx, event: &NewEvent, actor: &str, now: i64) -> Result<i64> {
        let args = event_args(event, actor, now);
        let rev = On::Tx(tx).scalar(sql::APPEND_EVENT, args).await?;
        tx.notify(rev).await?;
        Ok(rev)
    }

    /// Appends `events`, commits and tells local watchers.
    async fn commit(&self, mut tx: Tx, events: &[NewEvent], actor: &str, now: i64) -> Result<i64> {
        let mut rev = 0;
        for e in events {
            rev = Self::append(&mut tx, e, actor, now).await?;
        }
        tx.commit().await?;
        advance(&self.revisions, rev);
        Ok(rev)
    }

    async fn agent_in(tx: &mut Tx, name: &str) -> Result<Option<Agent>> {
        On::Tx(tx)
            .optional::<AgentRow>(sql::AGENT_BY_NAME, vec![name.into()])
            .await?
            .map(Agent::try_from)
            .transpose()
    }

    async fn put_labels(tx: &mut Tx, name: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        On::Tx(tx)
            .execute(sql::DELETE_LABELS, vec![name.into()])
            .await?;
        for (k, v) in labels {
            let args = vec![name.into(), k.into(), v.into()];
            On::Tx(tx).execute(sql::INSERT_LABEL, args).await?;
        }
        Ok(())
    }
}

/// Publishes a committed revision to local watchers; never moves back.
pub(super) fn advance(tx: &watch::Sender<i64>, revision: i64) {
    tx.send_if_modified(|cur| {
        if revision > *cur {
            *cur = revision;
            true
        } else {
            false
        }
    });
}

/// Maps a unique violation to ALREADY_EXISTS with `message`.
fn unique(e: Error, message: impl FnOnce() -> String) -> Error {
    match &e {
        Error::Database(inner) if classify(inner) == Failure::UniqueViolation => {
            Error::AlreadyExists(message())
        }
        _ => e,
    }
}

/// Discovery: agents with a live version, filtered by capability and labels.
fn find_statement(
    capability: Option<&str>,
    labels: &[(String, String)],
    after: Option<&str>,
    limit: usize,
) -> (String, Args) {
    let mut text = sql::FIND_AGENTS.to_owned();
    let mut args: Args = vec![after.unwrap_or("").into()];
    let mut bind = |text: &mut String, arg: Arg| {
        args.push(arg);
        text.push_str(&format!("${}", args.len()));
    };
    if let Some(c) = capability {
        text.push_str(sql::FIND_CAPABILITY);
        bind(&mut text, c.into());
        text.push(')');
    }
    for (k, v) in labels {
        text.push_str(sql::FIND_LABEL);
        bind(&mut text, k.into());
        text.push_str(sql::FIND_LABEL_VALUE);
        bind(&mut text, v.into());
        text.push(')');
    }
    text.push_str(sql::FIND_ORDER);
    bind(&mut text, (limit as i64).into());
    (text, args)
}

#[async_trait]
impl RegistryStore for SqlStore {
    async fn create_agent(&self, a: &AgentFields, actor: &str, now: i64) -> Result<Agent> {
        let mut tx = self.begin().await?;
        On::Tx(&mut tx)
            .execute(sql::INSERT_AGENT, new_agent_args(a, now))
            .await
            .map_err(|e| unique(e, || format!("agent {} already exists", a.name)))?;
        Self::put_labels(&mut tx, &a.name, &a.labels).await?;
        let event = NewEvent::agent(EventKind::AgentCreated, &a.name);
        self.commit(tx, &[event], actor, now).await?;
        Ok(Agent {
            name: a.name.clone(),
            owner: a.owner.clone(),
            description: a.description.clone(),
            labels: a.labels.clone(),
            live_version: None,
            create_time: now,
            update_time: now,
        })
    }

    async fn get_agent(&self, name: &str) -> Result<Option<Agent>> {
        self.read()
            .optional::<AgentRow>(sql::AGENT_BY_NAME, vec![name.into()])
            .await?
            .map(Agent::try_from)
            .transpose()
    }

    async fn list_agents(
        &self,
        owner: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Agent>> {
        let args = vec![
            owner.unwrap_or("").into(),
            after.unwrap_or("").into(),
            (limit as i64).into(),
        ];
        records::<AgentRow, _>(self.read().list(sql::LIST_AGENTS, args).await?)
    }

    async fn update_agent(
        &self,
        name: &str,
        patch: &AgentPatch,
        actor: &str,
        now: i64,
    ) -> Result<Agent> {
        let mut tx = self.begin().await?;
        let mut agent = Self::agent_in(&mut tx, name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("agent {name} does not exist")))?;
        if let Some(owner) = &patch.owner {
            agent.owner = owner.clone();
        }
        if let Some(d) = &patch.description {
            agent.description = d.clone();
        }
        if let Some(labels) = &patch.labels {
            agent.labels = labels.clone();
            Self::put_labels(&mut tx, name, labels).await?;
        }
        agent.update_time = now;
        On::Tx(&mut tx)
            .execute(sql::UPDATE_AGENT, agent_update_args(&agent))
            .await?;
        let event = NewEvent::agent(EventKind::AgentUpdated, name);
        self.commit(tx, &[event], actor, now).await?;
        Ok(agent)
    }

    async fn delete_agent(&self, name: &str, actor: &str, now: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        if Self::agent_in(&mut tx, name).await?.is_none() {
            return Err(Error::NotFound(format!("agent {name} does not exist")));
        }
        let dependents: Vec<(String, String, String)> = On::Tx(&mut tx)
            .all(sql::LIVE_DEPENDENTS, vec![name.into()])
            .await?;
        if !dependents.is_empty() {
            let names: Vec<String> = dependents.into_iter().map(|d| d.0).collect();
            return Err(Error::FailedPrecondition(format!(
                "agent {name} is a dependency of the live versions of: {}",
                names.join(", ")
            )));
        }
        On::Tx(&mut tx)
            .execute(sql::DELETE_AGENT, vec![name.into()])
            .await?;
        let event = NewEvent::agent(EventKind::AgentDeleted, name);
        self.commit(tx, &[event], actor, now).await?;
        Ok(())
    }

    async fn publish_version(&self, v: &AgentVersion, actor: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        if Self::agent_in(&mut tx, &v.agent).await?.is_none() {
            return Err(Error::NotFound(format!(
                "version.agent: agent {} does not exist",
                v.agent
            )));
        }
        for (i, d) in v.spec.dependencies.iter().enumerate() {
            if Self::agent_in(&mut tx, &d.agent).await?.is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "version.dependencies[{i}].agent: agent {} does not exist",
                    d.agent
                )));
            }
        }
        let version = v.version.to_string();
        On::Tx(&mut tx)
            .execute(sql::INSERT_VERSION, version_args(v))
            .await
            .map_err(|e| {
                unique(e, || {
                    format!(
                        "version {version} of agent {} is already published; versions are immutable",
                        v.agent
                    )
                })
            })?;
        for c in &v.spec.capabilities {
            let args = vec![(&v.agent).into(), (&version).into(), c.into()];
            On::Tx(&mut tx)
                .execute(sql::INSERT_CAPABILITY, args)
                .await?;
        }
        for d in &v.spec.dependencies {
            let args = vec![
                (&v.agent).into(),
                (&version).into(),
                (&d.agent).into(),
                (&d.requirement).into(),
            ];
            On::Tx(&mut tx)
                .execute(sql::INSERT_DEPENDENCY, args)
                .await?;
        }
        let event = NewEvent::version(EventKind::VersionPublished, &v.agent, &version);
        self.commit(tx, &[event], actor, v.publish_time).await?;
        Ok(())
    }

    async fn get_version(&self, agent: &str, version: &str) -> Result<Option<AgentVersion>> {
        self.read()
            .optional::<VersionRow>(sql::VERSION, vec![agent.into(), version.into()])
            .await?
            .map(AgentVersion::try_from)
            .transpose()
    }

    async fn list_versions(&self, agent: &str) -> Result<Vec<AgentVersion>> {
        let rows = self
            .read()
            .all(sql::VERSIONS_OF, vec![agent.into()])
            .await?;
        records::<VersionRow, _>(rows)
    }

    async fn record_deployment(
        &self,
        d: &NewDeployment,
        expected_live: Option<&str>,
        actor: &str,
        now: i64,
    ) -> Result<Deployment> {
        let mut tx = self.begin().await?;
        let agent = Self::agent_in(&mut tx, &d.agent)
            .await?
            .ok_or_else(|| Error::NotFound(format!("agent {} does not exist", d.agent)))?;
        if agent.live_version.as_deref() != expected_live {
            return Err(Error::Aborted(format!(
                "the live version of {} changed concurrently (now {}); retry",
                d.agent,
                agent.live_version.as_deref().unwrap_or("none")
            )));
        }
        let exists: Option<(String,)> = On::Tx(&mut tx)
            .optional(
                sql::VERSION_EXISTS,
                vec![(&d.agent).into(), (&d.version).into()],
            )
            .await?;
        if exists.is_none() {
            return Err(Error::NotFound(format!(
                "version: {} of agent {} is not published",
                d.version, d.agent
            )));
        }
        let kind = match d.kind {
            DeployKind::Deploy => EventKind::Deployed,
            DeployKind::Rollback => EventKind::RolledBack,
        };
        let event = NewEvent::version(kind, &d.agent, &d.version);
        let revision = Self::append(&mut tx, &event, actor, now).await?;
        let args = deployment_args(d, actor, now, revision);
        let id = On::Tx(&mut tx).scalar(sql::INSERT_DEPLOYMENT, args).await?;
        let args = vec![(&d.agent).into(), (&d.version).into(), now.into()];
        On::Tx(&mut tx).execute(sql::SET_LIVE_VERSION, args).await?;
        tx.commit().await?;
        advance(&self.revisions, revision);
        Ok(Deployment {
            id,
            agent: d.agent.clone(),
            version: d.version.clone(),
            previous_version: d.previous_version.clone(),
            kind: d.kind,
            actor: actor.to_owned(),
            deploy_time: now,
            revision,
        })
    }

    async fn current_deployment(&self, agent: &str) -> Result<Option<Deployment>> {
        let row: Option<DeploymentRow> = self
            .read()
            .optional(sql::CURRENT_DEPLOYMENT, vec![agent.into()])
            .await?;
        Ok(row.map(Deployment::from))
    }

    async fn last_deployment_of(&self, agent: &str, version: &str) -> Result<Option<Deployment>> {
        let args = vec![agent.into(), version.into()];
        let row: Option<DeploymentRow> =
            self.read().optional(sql::LAST_DEPLOYMENT_OF, args).await?;
        Ok(row.map(Deployment::from))
    }

    async fn live_dependents(&self, agent: &str) -> Result<Vec<Dependent>> {
        let rows: Vec<(String, String, String)> = self
            .read()
            .all(sql::LIVE_DEPENDENTS, vec![agent.into()])
            .await?;
        Ok(rows
            .into_iter()
            .map(|(agent, version, requirement)| Dependent {
                agent,
                version,
                requirement,
            })
            .collect())
    }

    async fn list_deployments(
        &self,
        agent: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Deployment>> {
        let args = vec![
            agent.into(),
            before.unwrap_or(i64::MAX).into(),
            (limit as i64).into(),
        ];
        let rows: Vec<DeploymentRow> = self.read().all(sql::LIST_DEPLOYMENTS, args).await?;
        Ok(rows.into_iter().map(Deployment::from).collect())
    }

    async fn find_agents(
        &self,
        capability: Option<&str>,
        labels: &[(String, String)],
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Agent, AgentVersion)>> {
        let (text, args) = find_statement(capability, labels, after, limit);
        records::<FoundRow, _>(self.read().all(AssertSqlSafe(text), args).await?)
    }

    async fn register_worker(&self, w: &Worker, actor: &str) -> Result<Worker> {
        let mut tx = self.begin().await?;
        On::Tx(&mut tx)
            .execute(sql::UPSERT_WORKER, worker_args(w))
            .await?;
        On::Tx(&mut tx)
            .execute(sql::DELETE_WORKER_AGENTS, vec![(&w.id).into()])
            .await?;
        for a in &w.agents {
            let args = vec![(&w.id).into(), a.into()];
            On::Tx(&mut tx)
                .execute(sql::INSERT_WORKER_AGENT, args)
                .await?;
        }
        let event = NewEvent::worker(EventKind::WorkerUp, &w.id);
        self.commit(tx, &[event], actor, w.register_time).await?;
        Ok(Worker {
            state: WorkerState::Up,
            last_heartbeat: w.register_time,
            ..w.clone()
        })
    }

    async fn heartbeat(
        &self,
        id: &str,
        in_flight: u32,
        draining: bool,
        now: i64,
    ) -> Result<Option<Worker>> {
        let mut tx = self.begin().await?;
        let row: Option<WorkerRow> = On::Tx(&mut tx)
            .optional(sql::WORKER, vec![id.into()])
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut worker = Worker::try_from(row)?;
        let state = if draining {
            WorkerState::Draining
        } else {
            WorkerState::Up
        };
        let args = vec![
            id.into(),
            i64::from(in_flight).into(),
            state.as_str().into(),
            now.into(),
        ];
        On::Tx(&mut tx).execute(sql::HEARTBEAT, args).await?;
        let changed = worker.state != state;
        worker.state = state;
        worker.in_flight = in_flight;
        worker.last_heartbeat = now;
        let events: &[NewEvent] = if changed {
            let kind = match state {
                WorkerState::Draining => EventKind::WorkerDraining,
                _ => EventKind::WorkerUp,
            };
            &[NewEvent::worker(kind, id)]
        } else {
            &[]
        };
        self.commit(tx, events, &format!("worker/{id}"), now)
            .await?;
        Ok(Some(worker))
    }

    async fn deregister_worker(&self, id: &str, actor: &str, now: i64) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = On::Tx(&mut tx)
            .execute(sql::DELETE_WORKER, vec![id.into()])
            .await?
            > 0;
        let events: &[NewEvent] = if done {
            &[NewEvent::worker(EventKind::WorkerDeregistered, id)]
        } else {
            &[]
        };
        self.commit(tx, events, actor, now).await?;
        Ok(done)
    }

    async fn list_workers(
        &self,
        agent: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Worker>> {
        let args = vec![
            agent.unwrap_or("").into(),
            after.unwrap_or("").into(),
            (limit as i64).into(),
        ];
        records::<WorkerRow, _>(self.read().list(sql::LIST_WORKERS, args).await?)
    }

    async fn mark_down(&self, stale_before: i64, now: i64) -> Result<Vec<String>> {
        let mut tx = self.begin().await?;
        let ids: Vec<(String,)> = On::Tx(&mut tx)
            .all(sql::STALE_WORKERS, vec![stale_before.into()])
            .await?;
        let ids: Vec<String> = ids.into_iter().map(|(id,)| id).collect();
        if ids.is_empty() {
            return Ok(ids);
        }
        On::Tx(&mut tx)
            .execute(sql::MARK_DOWN, vec![stale_before.into()])
            .await?;
        let events: Vec<NewEvent> = ids
            .iter()
            .map(|id| NewEvent::worker(EventKind::WorkerDown, id))
            .collect();
        self.commit(tx, &events, "svc/registry", now).await?;
        Ok(ids)
    }

    async fn events_after(
        &self,
        after: i64,
        agent: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let args = vec![
            after.into(),
            agent.unwrap_or("").into(),
            (limit as i64).into(),
        ];
        records::<EventRow, _>(self.read().list(sql::EVENTS_AFTER, args).await?)
    }

    async fn head_revision(&self) -> Result<i64> {
        self.read().scalar(sql::HEAD_REVISION, vec![]).await
    }

    fn revisions(&self) -> watch::Receiver<i64> {
        self.revisions.subscribe()
    }
}
