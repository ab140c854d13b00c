//! Domain types of the registry. Prost types stop at the service edge: the
//! conversions in `validate` check a request and name the field at fault;
//! those in `wire` build responses.

use std::collections::BTreeMap;

use devcycle::proto::registry::v1 as pb;
use serde::{Deserialize, Serialize};

mod validate;
mod wire;

pub use validate::{check_owner, parse_version, version_from_pb};

pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
const MAX_LIST: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub name: String,
    pub owner: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub live_version: Option<String>,
    pub create_time: i64,
    pub update_time: i64,
}

/// What a caller may set on an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFields {
    pub name: String,
    pub owner: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
}

/// The fields an update replaces; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentPatch {
    pub owner: Option<String>,
    pub description: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Runtime {
    Process {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        network_allowed: bool,
        require_isolation: bool,
    },
    Http {
        url: String,
        protocol: HttpProtocol,
        timeout_ms: u32,
        model: String,
        token_env: String,
        token_file: String,
        max_retries: u32,
    },
    Builtin {
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpProtocol {
    Json,
    OpenaiChat,
}

/// Lenient about unknown keys, so a replica reads specs a newer version
/// wrote; agent manifests check their keys themselves (`manifest.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    pub wall_time_ms: u64,
    pub memory_bytes: u64,
    pub cpu_time_ms: u64,
    pub max_processes: u32,
    pub max_open_files: u32,
    pub max_output_bytes: u64,
}

/// Lenient like [`Limits`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub agent: String,
    pub requirement: String,
}

/// The immutable part of a version, stored as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSpec {
    pub runtime: Runtime,
    pub capabilities: Vec<String>,
    pub input_schema: String,
    pub output_schema: String,
    pub dependencies: Vec<Dependency>,
    pub limits: Limits,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentVersion {
    pub agent: String,
    pub version: semver::Version,
    pub spec: VersionSpec,
    pub publish_time: i64,
    pub published_by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployKind {
    Deploy,
    Rollback,
}

impl DeployKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployKind::Deploy => "deploy",
            DeployKind::Rollback => "rollback",
        }
    }
    pub fn parse(s: &str) -> Self {
        if s == "rollback" {
            DeployKind::Rollback
        } else {
            DeployKind::Deploy
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub id: i64,
    pub agent: String,
    pub version: String,
    pub previous_version: Option<String>,
    pub kind: DeployKind,
    pub actor: String,
    pub deploy_time: i64,
    pub revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Up,
    Draining,
    Down,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Up => "up",
            WorkerState::Draining => "draining",
            WorkerState::Down => "down",
        }
    }
    pub fn parse(s: &str) -> Self {
        match s {
            "draining" => WorkerState::Draining,
            "down" => WorkerState::Down,
            _ => WorkerState::Up,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    pub id: String,
    pub agents: Vec<String>,
    pub capacity: u32,
    pub in_flight: u32,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub state: WorkerState,
    pub register_time: i64,
    pub last_heartbeat: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    AgentCreated,
    AgentUpdated,
    AgentDeleted,
    VersionPublished,
    Deployed,
    RolledBack,
    WorkerUp,
    WorkerDown,
    WorkerDraining,
    WorkerDeregistered,
}

impl EventKind {
    const ALL: [(EventKind, &'static str, pb::EventKind); 10] = [
        (
            Self::AgentCreated,
            "agent_created",
            pb::EventKind::AgentCreated,
        ),
        (
            Self::AgentUpdated,
            "agent_updated",
            pb::EventKind::AgentUpdated,
        ),
        (
            Self::AgentDeleted,
            "agent_deleted",
            pb::EventKind::AgentDeleted,
        ),
        (
            Self::VersionPublished,
            "version_published",
            pb::EventKind::VersionPublished,
        ),
        (Self::Deployed, "deployed", pb::EventKind::Deployed),
        (Self::RolledBack, "rolled_back", pb::EventKind::RolledBack),
        (Self::WorkerUp, "worker_up", pb::EventKind::WorkerUp),
        (Self::WorkerDown, "worker_down", pb::EventKind::WorkerDown),
        (
            Self::WorkerDraining,
            "worker_draining",
            pb::EventKind::WorkerDraining,
        ),
        (
            Self::WorkerDeregistered,
            "worker_deregistered",
            pb::EventKind::WorkerDeregistered,
        ),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _, _)| *k == self)
            .map(|(_, s, _)| *s)
            .unwrap_or("unknown")
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, n, _)| *n == s)
            .map(|(k, _, _)| *k)
    }

    fn to_pb(self) -> pb::EventKind {
        Self::ALL
            .iter()
            .find(|(k, _, _)| *k == self)
            .map(|(_, _, p)| *p)
            .unwrap_or(pb::EventKind::Unspecified)
    }
}

/// A change to record with the revision the store assigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub kind: EventKind,
    pub agent: String,
    pub version: String,
    pub worker_id: String,
}

impl NewEvent {
    pub fn agent(kind: EventKind, agent: &str) -> Self {
        Self {
            kind,
            agent: agent.to_owned(),
            version: String::new(),
            worker_id: String::new(),
        }
    }
    pub fn version(kind: EventKind, agent: &str, version: &str) -> Self {
        Self {
            version: version.to_owned(),
            ..Self::agent(kind, agent)
        }
    }
    pub fn worker(kind: EventKind, id: &str) -> Self {
        Self {
            worker_id: id.to_owned(),
            ..Self::agent(kind, "")
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub revision: i64,
    pub kind: EventKind,
    pub agent: String,
    pub version: String,
    pub worker_id: String,
    pub actor: String,
    pub time: i64,
}
