//! The registry's SQL, written once and expanded for each engine by
//! `impl_store!`. Only how a write transaction begins and how other replicas
//! are notified differ; the statements are the same text.

use std::collections::BTreeMap;

use async_trait::async_trait;
use devcycle::db::{Failure, classify};
use sqlx::{Pool, Postgres, Sqlite, Transaction};
use tokio::sync::watch;

use super::{Dependent, NewDeployment, RegistryStore};
use crate::error::{Error, Result};
use crate::model::*;

/// PostgreSQL channel announcing new revisions to other replicas.
const CHANNEL: &str = "devcycle_registry";
/// Advisory lock key serializing registry writes.
const WRITE_LOCK: i64 = 0x6465_7663_7265_6701;

pub struct SqlStore<DB: sqlx::Database> {
    pool: Pool<DB>,
    revisions: watch::Sender<i64>,
}

pub type PgStore = SqlStore<Postgres>;
pub type SqliteStore = SqlStore<Sqlite>;

impl<DB: sqlx::Database> SqlStore<DB> {
    fn bump(&self, revision: i64) {
        advance(&self.revisions, revision);
    }
}

/// Publishes a committed revision to local watchers; never moves back.
fn advance(tx: &watch::Sender<i64>, revision: i64) {
    tx.send_if_modified(|cur| {
        if revision > *cur {
            *cur = revision;
            true
        } else {
            false
        }
    });
}

impl PgStore {
    pub async fn new(pool: Pool<Postgres>) -> Result<Self> {
        let head = Self::head_of(&pool).await?;
        let (tx, _) = watch::channel(head);
        let store = Self {
            pool: pool.clone(),
            revisions: tx.clone(),
        };
        spawn_listener(pool, tx);
        Ok(store)
    }
}

/// Follows other replicas' commits through LISTEN/NOTIFY. After a lost
/// connection it re-reads the head so that nothing committed meanwhile is
/// missed; watchers also re-poll on their own as a safety net. Ends when the
/// pool is closed.
fn spawn_listener(pool: Pool<Postgres>, tx: watch::Sender<i64>) {
    tokio::spawn(async move {
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    if pool.is_closed() {
                        return;
                    }
                    tracing::warn!(error = %e, "registry listener cannot connect; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %e, "registry LISTEN failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            if let Ok(h) = PgStore::head_of(&pool).await {
                advance(&tx, h);
            }
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        if let Ok(rev) = n.payload().parse::<i64>() {
                            advance(&tx, rev);
                        }
                    }
                    // The connection dropped: reconnect and re-read the head.
                    Ok(None) => break,
                    Err(e) => {
                        if pool.is_closed() {
                            return;
                        }
                        tracing::warn!(error = %e, "registry listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    });
}

impl SqliteStore {
    pub async fn new(pool: Pool<Sqlite>) -> Result<Self> {
        let head = Self::head_of(&pool).await?;
        let (tx, _) = watch::channel(head);
        Ok(Self {
            pool,
            revisions: tx,
        })
    }
}

async fn pg_begin(pool: &Pool<Postgres>) -> Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WRITE_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn pg_notify(tx: &mut Transaction<'static, Postgres>, revision: i64) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(revision.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn sqlite_begin(pool: &Pool<Sqlite>) -> Result<Transaction<'static, Sqlite>> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

/// One process owns a SQLite database: local watchers are all there is.
async fn sqlite_notify(_tx: &mut Transaction<'static, Sqlite>, _revision: i64) -> Result<()> {
    Ok(())
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    name: String,
    owner: String,
    description: String,
    labels: String,
    live_version: Option<String>,
    create_time: i64,
    update_time: i64,
}

impl TryFrom<AgentRow> for Agent {
    type Error = Error;
    fn try_from(r: AgentRow) -> Result<Agent> {
        Ok(Agent {
            labels: from_json(&r.labels)?,
            name: r.name,
            owner: r.owner,
            description: r.description,
            live_version: r.live_version,
            create_time: r.create_time,
            update_time: r.update_time,
        })
    }
}

#[derive(sqlx::FromRow)]
struct VersionRow {
    agent: String,
    version: String,
    spec: String,
    publish_time: i64,
    published_by: String,
}

impl TryFrom<VersionRow> for AgentVersion {
    type Error = Error;
    fn try_from(r: VersionRow) -> Result<AgentVersion> {
        Ok(AgentVersion {
            version: semver::Version::parse(&r.version)
                .map_err(|e| Error::Corrupt(format!("version {}: {e}", r.version)))?,
            spec: from_json(&r.spec)?,
            agent: r.agent,
            publish_time: r.publish_time,
            published_by: r.published_by,
        })
    }
}

#[derive(sqlx::FromRow)]
struct FoundRow {
    #[sqlx(flatten)]
    agent: AgentRow,
    v_version: String,
    v_spec: String,
    v_publish_time: i64,
    v_published_by: String,
}

#[derive(sqlx::FromRow)]
struct DeploymentRow {
    id: i64,
    agent: String,
    version: String,
    previous_version: Option<String>,
    kind: String,
    actor: String,
    deploy_time: i64,
    revision: i64,
}

impl From<DeploymentRow> for Deployment {
    fn from(r: DeploymentRow) -> Self {
        Deployment {
            id: r.id,
            agent: r.agent,
            version: r.version,
            previous_version: r.previous_version,
            kind: DeployKind::parse(&r.kind),
            actor: r.actor,
            deploy_time: r.deploy_time,
            revision: r.revision,
        }
    }
}

#[derive(sqlx::FromRow)]
struct WorkerRow {
    id: String,
    agents: String,
    capacity: i64,
    in_flight: i64,
    address: String,
    labels: String,
    state: String,
    register_time: i64,
    last_heartbeat: i64,
}

impl TryFrom<WorkerRow> for Worker {
    type Error = Error;
    fn try_from(r: WorkerRow) -> Result<Worker> {
        Ok(Worker {
            agents: from_json(&r.agents)?,
            labels: from_json(&r.labels)?,
            id: r.id,
            capacity: r.capacity.clamp(0, i64::from(u32::MAX)) as u32,
            in_flight: r.in_flight.clamp(0, i64::from(u32::MAX)) as u32,
            address: r.address,
            state: WorkerState::parse(&r.state),
            register_time: r.register_time,
            last_heartbeat: r.last_heartbeat,
        })
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    revision: i64,
    kind: String,
    agent: String,
    version: String,
    worker_id: String,
    actor: String,
    time: i64,
}

impl TryFrom<EventRow> for Event {
    type Error = Error;
    fn try_from(r: EventRow) -> Result<Event> {
        Ok(Event {
            kind: EventKind::parse(&r.kind)
                .ok_or_else(|| Error::Corrupt(format!("event kind {}", r.kind)))?,
            revision: r.revision,
            agent: r.agent,
            version: r.version,
            worker_id: r.worker_id,
            actor: r.actor,
            time: r.time,
        })
    }
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("stored JSON: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("registry types always serialize")
}

const AGENT_COLUMNS: &str =
    "a.name, a.owner, a.description, a.labels, a.live_version, a.create_time, a.update_time";

macro_rules! impl_store {
    ($db:ty, $begin:ident, $notify:ident) => {
        impl SqlStore<$db> {
            async fn head_of(pool: &Pool<$db>) -> Result<i64> {
                Ok(sqlx::query_scalar::<_, i64>(
                    "SELECT COALESCE(MAX(revision), 0) FROM registry_events",
                )
                .fetch_one(pool)
                .await?)
            }

            /// Appends an event under the write lock; returns its revision.
            async fn append(
                tx: &mut Transaction<'static, $db>,
                event: &NewEvent,
                actor: &str,
                now: i64,
            ) -> Result<i64> {
                let rev: i64 = sqlx::query_scalar(
                    "INSERT INTO registry_events (revision, kind, agent, version, worker_id, actor, time) \
                     SELECT COALESCE(MAX(revision), 0) + 1, $1, $2, $3, $4, $5, $6 FROM registry_events \
                     RETURNING revision",
                )
                .bind(event.kind.as_str())
                .bind(&event.agent)
                .bind(&event.version)
                .bind(&event.worker_id)
                .bind(actor)
                .bind(now)
                .fetch_one(&mut **tx)
                .await?;
                $notify(tx, rev).await?;
                Ok(rev)
            }

            /// Appends `events` and commits.
            async fn commit(
                &self,
                mut tx: Transaction<'static, $db>,
                events: &[NewEvent],
                actor: &str,
                now: i64,
            ) -> Result<i64> {
                let mut rev = 0;
                for e in events {
                    rev = Self::append(&mut tx, e, actor, now).await?;
                }
                tx.commit().await?;
                self.bump(rev);
                Ok(rev)
            }

            async fn agent_in(
                tx: &mut Transaction<'static, $db>,
                name: &str,
            ) -> Result<Option<Agent>> {
                sqlx::query_as::<_, AgentRow>(
                    "SELECT a.name, a.owner, a.description, a.labels, a.live_version, a.create_time, a.update_time \
                     FROM registry_agents a WHERE a.name = $1",
                )
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?
                .map(Agent::try_from)
                .transpose()
            }

            async fn put_labels(
                tx: &mut Transaction<'static, $db>,
                name: &str,
                labels: &BTreeMap<String, String>,
            ) -> Result<()> {
                sqlx::query("DELETE FROM registry_agent_labels WHERE agent = $1")
                    .bind(name)
                    .execute(&mut **tx)
                    .await?;
                for (k, v) in labels {
                    sqlx::query("INSERT INTO registry_agent_labels (agent, key, value) VALUES ($1, $2, $3)")
                        .bind(name)
                        .bind(k)
                        .bind(v)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(())
            }
        }

        #[async_trait]
        impl RegistryStore for SqlStore<$db> {
            async fn create_agent(&self, a: &AgentFields, actor: &str, now: i64) -> Result<Agent> {
                let mut tx = $begin(&self.pool).await?;
                let inserted = sqlx::query(
                    "INSERT INTO registry_agents (name, owner, description, labels, live_version, create_time, update_time) \
                     VALUES ($1, $2, $3, $4, NULL, $5, $5)",
                )
                .bind(&a.name)
                .bind(&a.owner)
                .bind(&a.description)
                .bind(to_json(&a.labels))
                .bind(now)
                .execute(&mut *tx)
                .await;
                if let Err(e) = inserted {
                    return Err(match classify(&e) {
                        Failure::UniqueViolation => {
                            Error::AlreadyExists(format!("agent {} already exists", a.name))
                        }
                        _ => e.into(),
                    });
                }
                Self::put_labels(&mut tx, &a.name, &a.labels).await?;
                self.commit(tx, &[NewEvent::agent(EventKind::AgentCreated, &a.name)], actor, now)
                    .await?;
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
                sqlx::query_as::<_, AgentRow>(
                    "SELECT a.name, a.owner, a.description, a.labels, a.live_version, a.create_time, a.update_time \
                     FROM registry_agents a WHERE a.name = $1",
                )
                .bind(name)
                .fetch_optional(&self.pool)
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
                sqlx::query_as::<_, AgentRow>(
                    "SELECT a.name, a.owner, a.description, a.labels, a.live_version, a.create_time, a.update_time \
                     FROM registry_agents a WHERE ($1 = '' OR a.owner = $1) AND a.name > $2 \
                     ORDER BY a.name LIMIT $3",
                )
                .bind(owner.unwrap_or(""))
                .bind(after.unwrap_or(""))
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(Agent::try_from)
                .collect()
            }

            async fn update_agent(
                &self,
                name: &str,
                patch: &AgentPatch,
                actor: &str,
                now: i64,
            ) -> Result<Agent> {
                let mut tx = $begin(&self.pool).await?;
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
                sqlx::query(
                    "UPDATE registry_agents SET owner = $2, description = $3, labels = $4, update_time = $5 \
                     WHERE name = $1",
                )
                .bind(name)
                .bind(&agent.owner)
                .bind(&agent.description)
                .bind(to_json(&agent.labels))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                self.commit(tx, &[NewEvent::agent(EventKind::AgentUpdated, name)], actor, now)
                    .await?;
                Ok(agent)
            }

            async fn delete_agent(&self, name: &str, actor: &str, now: i64) -> Result<()> {
                let mut tx = $begin(&self.pool).await?;
                if Self::agent_in(&mut tx, name).await?.is_none() {
                    return Err(Error::NotFound(format!("agent {name} does not exist")));
                }
                let dependents: Vec<String> = sqlx::query_scalar(
                    "SELECT a.name FROM registry_agents a JOIN registry_dependencies d \
                     ON d.agent = a.name AND d.version = a.live_version \
                     WHERE d.dep_agent = $1 ORDER BY a.name",
                )
                .bind(name)
                .fetch_all(&mut *tx)
                .await?;
                if !dependents.is_empty() {
                    return Err(Error::FailedPrecondition(format!(
                        "agent {name} is a dependency of the live versions of: {}",
                        dependents.join(", ")
                    )));
                }
                sqlx::query("DELETE FROM registry_agents WHERE name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                self.commit(tx, &[NewEvent::agent(EventKind::AgentDeleted, name)], actor, now)
                    .await?;
                Ok(())
            }

            async fn publish_version(&self, v: &AgentVersion, actor: &str) -> Result<()> {
                let mut tx = $begin(&self.pool).await?;
                if Self::agent_in(&mut tx, &v.agent).await?.is_none() {
                    return Err(Error::NotFound(format!("version.agent: agent {} does not exist", v.agent)));
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
                let inserted = sqlx::query(
                    "INSERT INTO registry_versions (agent, version, spec, publish_time, published_by) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&v.agent)
                .bind(&version)
                .bind(to_json(&v.spec))
                .bind(v.publish_time)
                .bind(&v.published_by)
                .execute(&mut *tx)
                .await;
                if let Err(e) = inserted {
                    return Err(match classify(&e) {
                        Failure::UniqueViolation => Error::AlreadyExists(format!(
                            "version {version} of agent {} is already published; versions are immutable",
                            v.agent
                        )),
                        _ => e.into(),
                    });
                }
                for c in &v.spec.capabilities {
                    sqlx::query("INSERT INTO registry_capabilities (agent, version, capability) VALUES ($1, $2, $3)")
                        .bind(&v.agent)
                        .bind(&version)
                        .bind(c)
                        .execute(&mut *tx)
                        .await?;
                }
                for d in &v.spec.dependencies {
                    sqlx::query(
                        "INSERT INTO registry_dependencies (agent, version, dep_agent, requirement) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&v.agent)
                    .bind(&version)
                    .bind(&d.agent)
                    .bind(&d.requirement)
                    .execute(&mut *tx)
                    .await?;
                }
                let event = NewEvent::version(EventKind::VersionPublished, &v.agent, &version);
                self.commit(tx, &[event], actor, v.publish_time).await?;
                Ok(())
            }

            async fn get_version(&self, agent: &str, version: &str) -> Result<Option<AgentVersion>> {
                sqlx::query_as::<_, VersionRow>(
                    "SELECT agent, version, spec, publish_time, published_by FROM registry_versions \
                     WHERE agent = $1 AND version = $2",
                )
                .bind(agent)
                .bind(version)
                .fetch_optional(&self.pool)
                .await?
                .map(AgentVersion::try_from)
                .transpose()
            }

            async fn list_versions(&self, agent: &str) -> Result<Vec<AgentVersion>> {
                sqlx::query_as::<_, VersionRow>(
                    "SELECT agent, version, spec, publish_time, published_by FROM registry_versions \
                     WHERE agent = $1",
                )
                .bind(agent)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(AgentVersion::try_from)
                .collect()
            }

            async fn record_deployment(
                &self,
                d: &NewDeployment,
                expected_live: Option<&str>,
                actor: &str,
                now: i64,
            ) -> Result<Deployment> {
                let mut tx = $begin(&self.pool).await?;
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
                let exists: Option<String> = sqlx::query_scalar(
                    "SELECT version FROM registry_versions WHERE agent = $1 AND version = $2",
                )
                .bind(&d.agent)
                .bind(&d.version)
                .fetch_optional(&mut *tx)
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
                let revision =
                    Self::append(&mut tx, &NewEvent::version(kind, &d.agent, &d.version), actor, now).await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO registry_deployments (agent, version, previous_version, kind, actor, deploy_time, revision) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                )
                .bind(&d.agent)
                .bind(&d.version)
                .bind(d.previous_version.as_deref())
                .bind(d.kind.as_str())
                .bind(actor)
                .bind(now)
                .bind(revision)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query("UPDATE registry_agents SET live_version = $2, update_time = $3 WHERE name = $1")
                    .bind(&d.agent)
                    .bind(&d.version)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                self.bump(revision);
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
                Ok(sqlx::query_as::<_, DeploymentRow>(
                    "SELECT id, agent, version, previous_version, kind, actor, deploy_time, revision \
                     FROM registry_deployments WHERE agent = $1 ORDER BY id DESC LIMIT 1",
                )
                .bind(agent)
                .fetch_optional(&self.pool)
                .await?
                .map(Deployment::from))
            }

            async fn last_deployment_of(&self, agent: &str, version: &str) -> Result<Option<Deployment>> {
                Ok(sqlx::query_as::<_, DeploymentRow>(
                    "SELECT id, agent, version, previous_version, kind, actor, deploy_time, revision \
                     FROM registry_deployments WHERE agent = $1 AND version = $2 ORDER BY id DESC LIMIT 1",
                )
                .bind(agent)
                .bind(version)
                .fetch_optional(&self.pool)
                .await?
                .map(Deployment::from))
            }

            async fn live_dependents(&self, agent: &str) -> Result<Vec<Dependent>> {
                let rows: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT a.name, d.version, d.requirement FROM registry_agents a JOIN registry_dependencies d \
                     ON d.agent = a.name AND d.version = a.live_version \
                     WHERE d.dep_agent = $1 ORDER BY a.name",
                )
                .bind(agent)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(agent, version, requirement)| Dependent { agent, version, requirement })
                    .collect())
            }

            async fn list_deployments(
                &self,
                agent: &str,
                before: Option<i64>,
                limit: usize,
            ) -> Result<Vec<Deployment>> {
                Ok(sqlx::query_as::<_, DeploymentRow>(
                    "SELECT id, agent, version, previous_version, kind, actor, deploy_time, revision \
                     FROM registry_deployments WHERE agent = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                )
                .bind(agent)
                .bind(before.unwrap_or(i64::MAX))
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(Deployment::from)
                .collect())
            }

            async fn find_agents(
                &self,
                capability: Option<&str>,
                labels: &[(String, String)],
                after: Option<&str>,
                limit: usize,
            ) -> Result<Vec<(Agent, AgentVersion)>> {
                let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {AGENT_COLUMNS}, v.version AS v_version, v.spec AS v_spec, \
                     v.publish_time AS v_publish_time, v.published_by AS v_published_by \
                     FROM registry_agents a JOIN registry_versions v \
                     ON v.agent = a.name AND v.version = a.live_version WHERE a.name > "
                ));
                q.push_bind(after.unwrap_or("").to_owned());
                if let Some(c) = capability {
                    q.push(
                        " AND EXISTS (SELECT 1 FROM registry_capabilities c WHERE c.agent = a.name \
                         AND c.version = a.live_version AND c.capability = ",
                    );
                    q.push_bind(c.to_owned());
                    q.push(")");
                }
                for (k, v) in labels {
                    q.push(" AND EXISTS (SELECT 1 FROM registry_agent_labels l WHERE l.agent = a.name AND l.key = ");
                    q.push_bind(k.clone());
                    q.push(" AND l.value = ");
                    q.push_bind(v.clone());
                    q.push(")");
                }
                q.push(" ORDER BY a.name LIMIT ");
                q.push_bind(limit as i64);
                let rows: Vec<FoundRow> = q.build_query_as().fetch_all(&self.pool).await?;
                rows.into_iter()
                    .map(|r| {
                        let version = AgentVersion::try_from(VersionRow {
                            agent: r.agent.name.clone(),
                            version: r.v_version,
                            spec: r.v_spec,
                            publish_time: r.v_publish_time,
                            published_by: r.v_published_by,
                        })?;
                        Ok((Agent::try_from(r.agent)?, version))
                    })
                    .collect()
            }

            async fn register_worker(&self, w: &Worker, actor: &str) -> Result<Worker> {
                let mut tx = $begin(&self.pool).await?;
                sqlx::query(
                    "INSERT INTO registry_workers (id, agents, capacity, in_flight, address, labels, state, register_time, last_heartbeat) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'up', $7, $7) \
                     ON CONFLICT (id) DO UPDATE SET agents = excluded.agents, capacity = excluded.capacity, \
                     in_flight = excluded.in_flight, address = excluded.address, labels = excluded.labels, \
                     state = 'up', register_time = excluded.register_time, last_heartbeat = excluded.last_heartbeat",
                )
                .bind(&w.id)
                .bind(to_json(&w.agents))
                .bind(i64::from(w.capacity))
                .bind(i64::from(w.in_flight))
                .bind(&w.address)
                .bind(to_json(&w.labels))
                .bind(w.register_time)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM registry_worker_agents WHERE worker_id = $1")
                    .bind(&w.id)
                    .execute(&mut *tx)
                    .await?;
                for a in &w.agents {
                    sqlx::query("INSERT INTO registry_worker_agents (worker_id, agent) VALUES ($1, $2)")
                        .bind(&w.id)
                        .bind(a)
                        .execute(&mut *tx)
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
                let mut tx = $begin(&self.pool).await?;
                let Some(row) = sqlx::query_as::<_, WorkerRow>(
                    "SELECT id, agents, capacity, in_flight, address, labels, state, register_time, last_heartbeat \
                     FROM registry_workers WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                else {
                    return Ok(None);
                };
                let mut worker = Worker::try_from(row)?;
                let state = if draining { WorkerState::Draining } else { WorkerState::Up };
                sqlx::query(
                    "UPDATE registry_workers SET in_flight = $2, state = $3, last_heartbeat = $4 WHERE id = $1",
                )
                .bind(id)
                .bind(i64::from(in_flight))
                .bind(state.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
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
                self.commit(tx, events, &format!("worker/{id}"), now).await?;
                Ok(Some(worker))
            }

            async fn deregister_worker(&self, id: &str, actor: &str, now: i64) -> Result<bool> {
                let mut tx = $begin(&self.pool).await?;
                let done = sqlx::query("DELETE FROM registry_workers WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
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
                sqlx::query_as::<_, WorkerRow>(
                    "SELECT w.id, w.agents, w.capacity, w.in_flight, w.address, w.labels, w.state, w.register_time, w.last_heartbeat \
                     FROM registry_workers w WHERE w.id > $2 AND ($1 = '' OR w.agents = '[]' OR EXISTS \
                     (SELECT 1 FROM registry_worker_agents wa WHERE wa.worker_id = w.id AND wa.agent = $1)) \
                     ORDER BY w.id LIMIT $3",
                )
                .bind(agent.unwrap_or(""))
                .bind(after.unwrap_or(""))
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(Worker::try_from)
                .collect()
            }

            async fn mark_down(&self, stale_before: i64, now: i64) -> Result<Vec<String>> {
                let mut tx = $begin(&self.pool).await?;
                let ids: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM registry_workers WHERE state <> 'down' AND last_heartbeat < $1 ORDER BY id",
                )
                .bind(stale_before)
                .fetch_all(&mut *tx)
                .await?;
                if ids.is_empty() {
                    return Ok(ids);
                }
                sqlx::query("UPDATE registry_workers SET state = 'down' WHERE state <> 'down' AND last_heartbeat < $1")
                    .bind(stale_before)
                    .execute(&mut *tx)
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
                sqlx::query_as::<_, EventRow>(
                    "SELECT revision, kind, agent, version, worker_id, actor, time FROM registry_events \
                     WHERE revision > $1 AND ($2 = '' OR agent = $2) ORDER BY revision LIMIT $3",
                )
                .bind(after)
                .bind(agent.unwrap_or(""))
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(Event::try_from)
                .collect()
            }

            async fn head_revision(&self) -> Result<i64> {
                Self::head_of(&self.pool).await
            }

            fn revisions(&self) -> watch::Receiver<i64> {
                self.revisions.subscribe()
            }
        }
    };
}

impl_store!(Postgres, pg_begin, pg_notify);
impl_store!(Sqlite, sqlite_begin, sqlite_notify);
