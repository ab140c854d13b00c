//! Rows as stored, with one mapper from each row to its record and one
//! helper binding each record to its insert or update statement (parameters
//! in the statement's placeholder order).

use super::NewDeployment;
use super::exec::{Arg, Args};
use crate::error::{Error, Result};
use crate::model::*;

#[derive(sqlx::FromRow)]
pub struct AgentRow {
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

/// For `INSERT_AGENT`.
pub fn new_agent_args(a: &AgentFields, now: i64) -> Args {
    vec![
        (&a.name).into(),
        (&a.owner).into(),
        (&a.description).into(),
        to_json(&a.labels),
        now.into(),
    ]
}

/// For `UPDATE_AGENT`.
pub fn agent_update_args(a: &Agent) -> Args {
    vec![
        (&a.name).into(),
        (&a.owner).into(),
        (&a.description).into(),
        to_json(&a.labels),
        a.update_time.into(),
    ]
}

#[derive(sqlx::FromRow)]
pub struct VersionRow {
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

/// For `INSERT_VERSION`.
pub fn version_args(v: &AgentVersion) -> Args {
    vec![
        (&v.agent).into(),
        v.version.to_string().into(),
        to_json(&v.spec),
        v.publish_time.into(),
        (&v.published_by).into(),
    ]
}

/// An agent with its live version, as discovery finds them.
#[derive(sqlx::FromRow)]
pub struct FoundRow {
    #[sqlx(flatten)]
    agent: AgentRow,
    v_version: String,
    v_spec: String,
    v_publish_time: i64,
    v_published_by: String,
}

impl TryFrom<FoundRow> for (Agent, AgentVersion) {
    type Error = Error;
    fn try_from(r: FoundRow) -> Result<Self> {
        let version = AgentVersion::try_from(VersionRow {
            agent: r.agent.name.clone(),
            version: r.v_version,
            spec: r.v_spec,
            publish_time: r.v_publish_time,
            published_by: r.v_published_by,
        })?;
        Ok((Agent::try_from(r.agent)?, version))
    }
}

#[derive(sqlx::FromRow)]
pub struct DeploymentRow {
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

/// For `INSERT_DEPLOYMENT`.
pub fn deployment_args(d: &NewDeployment, actor: &str, now: i64, revision: i64) -> Args {
    vec![
        (&d.agent).into(),
        (&d.version).into(),
        d.previous_version.as_deref().into(),
        d.kind.as_str().into(),
        actor.into(),
        now.into(),
        revision.into(),
    ]
}

#[derive(sqlx::FromRow)]
pub struct WorkerRow {
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

/// For `UPSERT_WORKER`.
pub fn worker_args(w: &Worker) -> Args {
    vec![
        (&w.id).into(),
        to_json(&w.agents),
        i64::from(w.capacity).into(),
        i64::from(w.in_flight).into(),
        (&w.address).into(),
        to_json(&w.labels),
        w.register_time.into(),
    ]
}

#[derive(sqlx::FromRow)]
pub struct EventRow {
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

/// For `APPEND_EVENT`.
pub fn event_args(e: &NewEvent, actor: &str, now: i64) -> Args {
    vec![
        e.kind.as_str().into(),
        (&e.agent).into(),
        (&e.version).into(),
        (&e.worker_id).into(),
        actor.into(),
        now.into(),
    ]
}

/// Maps stored rows to records, failing on the first corrupt one.
pub fn records<R, T>(rows: Vec<R>) -> Result<Vec<T>>
where
    T: TryFrom<R, Error = Error>,
{
    rows.into_iter().map(T::try_from).collect()
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("stored JSON: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Arg {
    Arg::Text(serde_json::to_string(v).expect("registry types always serialize"))
}
