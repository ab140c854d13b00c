//! Domain types of the registry. Prost types stop at the service edge: the
//! `TryFrom` conversions here validate a request and name the field at fault.

use std::collections::BTreeMap;

use devcycle::proto::registry::v1 as pb;
use devcycle::time::to_timestamp;
use devcycle::validate::{self, FieldError};
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub wall_time_ms: u64,
    pub memory_bytes: u64,
    pub cpu_time_ms: u64,
    pub max_processes: u32,
    pub max_open_files: u32,
    pub max_output_bytes: u64,
}

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

// ------------------------------------------------------------ validation

impl AgentFields {
    /// Validates an agent from a request; `prefix` is the field path of it.
    pub fn from_pb(a: pb::Agent, prefix: &str) -> Result<Self, FieldError> {
        validate::dns_label(&format!("{prefix}.name"), &a.name)?;
        check_owner(&format!("{prefix}.owner"), &a.owner)?;
        validate::max_bytes(&format!("{prefix}.description"), &a.description, 1024)?;
        validate::labels(&format!("{prefix}.labels"), &a.labels)?;
        Ok(Self {
            name: a.name,
            owner: a.owner,
            description: a.description,
            labels: a.labels.into_iter().collect(),
        })
    }
}

pub fn check_owner(field: &str, owner: &str) -> Result<(), FieldError> {
    validate::required(field, owner)?;
    validate::max_bytes(field, owner, 128)?;
    if owner.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub fn parse_version(field: &str, v: &str) -> Result<semver::Version, FieldError> {
    semver::Version::parse(v)
        .map_err(|e| FieldError::new(field, format!("{v:?} is not a semantic version: {e}")))
}

/// Validates a version to publish. Publish time and publisher are not taken
/// from the caller.
pub fn version_from_pb(
    v: pb::AgentVersion,
) -> Result<(String, semver::Version, VersionSpec), FieldError> {
    validate::dns_label("version.agent", &v.agent)?;
    let version = parse_version("version.version", &v.version)?;
    let runtime = runtime_from_pb(v.runtime)?;
    validate::max_items("version.capabilities", v.capabilities.len(), MAX_LIST)?;
    for (i, c) in v.capabilities.iter().enumerate() {
        validate::token(&format!("version.capabilities[{i}]"), c, 64, b"._")?;
    }
    let mut capabilities = v.capabilities;
    capabilities.sort();
    capabilities.dedup();
    check_schema("version.input_schema", &v.input_schema)?;
    check_schema("version.output_schema", &v.output_schema)?;
    validate::max_items("version.dependencies", v.dependencies.len(), MAX_LIST)?;
    let mut dependencies = Vec::with_capacity(v.dependencies.len());
    for (i, d) in v.dependencies.into_iter().enumerate() {
        let field = format!("version.dependencies[{i}]");
        validate::dns_label(&format!("{field}.agent"), &d.agent)?;
        if d.agent == v.agent {
            return Err(FieldError::new(
                format!("{field}.agent"),
                "an agent cannot depend on itself",
            ));
        }
        if dependencies.iter().any(|x: &Dependency| x.agent == d.agent) {
            return Err(FieldError::new(
                format!("{field}.agent"),
                format!("{} is listed twice", d.agent),
            ));
        }
        semver::VersionReq::parse(&d.requirement).map_err(|e| {
            FieldError::new(
                format!("{field}.requirement"),
                format!("{:?} is not a semver requirement: {e}", d.requirement),
            )
        })?;
        dependencies.push(Dependency {
            agent: d.agent,
            requirement: d.requirement,
        });
    }
    validate::max_bytes("version.description", &v.description, 4096)?;
    let limits = v.limits.map(limits_from_pb).unwrap_or_default();
    Ok((
        v.agent,
        version,
        VersionSpec {
            runtime,
            capabilities,
            input_schema: v.input_schema,
            output_schema: v.output_schema,
            dependencies,
            limits,
            description: v.description,
        },
    ))
}

fn runtime_from_pb(r: Option<pb::Runtime>) -> Result<Runtime, FieldError> {
    use pb::runtime::Kind;
    let kind = r.and_then(|r| r.kind).ok_or_else(|| {
        FieldError::new(
            "version.runtime",
            "one of process, http or builtin is required",
        )
    })?;
    Ok(match kind {
        Kind::Process(p) => {
            validate::required("version.runtime.process.command", &p.command)?;
            validate::max_bytes("version.runtime.process.command", &p.command, 4096)?;
            validate::max_items("version.runtime.process.args", p.args.len(), 64)?;
            validate::max_items("version.runtime.process.env", p.env.len(), 64)?;
            for k in p.env.keys() {
                let ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    return Err(FieldError::new(
                        format!("version.runtime.process.env[{k}]"),
                        "is not an environment variable name",
                    ));
                }
                if validate::is_loader_variable(k) {
                    return Err(FieldError::new(
                        format!("version.runtime.process.env[{k}]"),
                        "changes how programs are loaded; agents may not set it",
                    ));
                }
            }
            Runtime::Process {
                command: p.command,
                args: p.args,
                env: p.env.into_iter().collect(),
                network_allowed: p.network_allowed,
                require_isolation: p.require_isolation,
            }
        }
        Kind::Http(h) => {
            let field = "version.runtime.http.url";
            validate::required(field, &h.url)?;
            if !(h.url.starts_with("http://") || h.url.starts_with("https://"))
                || h.url.parse::<http::Uri>().is_err()
            {
                return Err(FieldError::new(
                    field,
                    format!("{:?} is not an http(s) URL", h.url),
                ));
            }
            let protocol = match pb::HttpProtocol::try_from(h.protocol) {
                Ok(pb::HttpProtocol::Json) | Ok(pb::HttpProtocol::Unspecified) => {
                    HttpProtocol::Json
                }
                Ok(pb::HttpProtocol::OpenaiChat) => HttpProtocol::OpenaiChat,
                Err(_) => {
                    return Err(FieldError::new(
                        "version.runtime.http.protocol",
                        format!("unknown protocol {}", h.protocol),
                    ));
                }
            };
            if h.timeout_ms > 600_000 {
                return Err(FieldError::new(
                    "version.runtime.http.timeout_ms",
                    "must be at most 600000",
                ));
            }
            if h.max_retries > 10 {
                return Err(FieldError::new(
                    "version.runtime.http.max_retries",
                    "must be at most 10",
                ));
            }
            Runtime::Http {
                url: h.url,
                protocol,
                timeout_ms: h.timeout_ms,
                model: h.model,
                token_env: h.token_env,
                token_file: h.token_file,
                max_retries: h.max_retries,
            }
        }
        Kind::Builtin(b) => {
            if !matches!(b.name.as_str(), "noop" | "echo") {
                return Err(FieldError::new(
                    "version.runtime.builtin.name",
                    format!("{:?} is not a builtin (noop, echo)", b.name),
                ));
            }
            Runtime::Builtin { name: b.name }
        }
    })
}

fn limits_from_pb(l: pb::ResourceLimits) -> Limits {
    Limits {
        wall_time_ms: l.wall_time_ms,
        memory_bytes: l.memory_bytes,
        cpu_time_ms: l.cpu_time_ms,
        max_processes: l.max_processes,
        max_open_files: l.max_open_files,
        max_output_bytes: l.max_output_bytes,
    }
}

/// An empty schema means "any JSON"; otherwise it must be a JSON Schema that
/// compiles (valid against its meta-schema, resolvable references).
fn check_schema(field: &str, text: &str) -> Result<(), FieldError> {
    if text.is_empty() {
        return Ok(());
    }
    validate::max_bytes(field, text, MAX_SCHEMA_BYTES)?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| FieldError::new(field, format!("is not JSON: {e}")))?;
    jsonschema::meta::validate(&value)
        .map_err(|e| FieldError::new(field, format!("is not a valid JSON Schema: {e}")))?;
    jsonschema::validator_for(&value)
        .map_err(|e| FieldError::new(field, format!("is not a usable JSON Schema: {e}")))?;
    Ok(())
}

// ---------------------------------------------------------------- to wire

impl From<Agent> for pb::Agent {
    fn from(a: Agent) -> Self {
        pb::Agent {
            name: a.name,
            owner: a.owner,
            description: a.description,
            labels: a.labels.into_iter().collect(),
            live_version: a.live_version.unwrap_or_default(),
            create_time: Some(to_timestamp(a.create_time)),
            update_time: Some(to_timestamp(a.update_time)),
        }
    }
}

impl From<Runtime> for pb::Runtime {
    fn from(r: Runtime) -> Self {
        use pb::runtime::Kind;
        let kind = match r {
            Runtime::Process {
                command,
                args,
                env,
                network_allowed,
                require_isolation,
            } => Kind::Process(pb::ProcessRuntime {
                command,
                args,
                env: env.into_iter().collect(),
                network_allowed,
                require_isolation,
            }),
            Runtime::Http {
                url,
                protocol,
                timeout_ms,
                model,
                token_env,
                token_file,
                max_retries,
            } => Kind::Http(pb::HttpRuntime {
                url,
                protocol: match protocol {
                    HttpProtocol::Json => pb::HttpProtocol::Json,
                    HttpProtocol::OpenaiChat => pb::HttpProtocol::OpenaiChat,
                } as i32,
                timeout_ms,
                model,
                token_env,
                token_file,
                max_retries,
            }),
            Runtime::Builtin { name } => Kind::Builtin(pb::BuiltinRuntime { name }),
        };
        pb::Runtime { kind: Some(kind) }
    }
}

impl From<AgentVersion> for pb::AgentVersion {
    fn from(v: AgentVersion) -> Self {
        let s = v.spec;
        pb::AgentVersion {
            agent: v.agent,
            version: v.version.to_string(),
            runtime: Some(s.runtime.into()),
            capabilities: s.capabilities,
            input_schema: s.input_schema,
            output_schema: s.output_schema,
            dependencies: s
                .dependencies
                .into_iter()
                .map(|d| pb::Dependency {
                    agent: d.agent,
                    requirement: d.requirement,
                })
                .collect(),
            limits: Some(pb::ResourceLimits {
                wall_time_ms: s.limits.wall_time_ms,
                memory_bytes: s.limits.memory_bytes,
                cpu_time_ms: s.limits.cpu_time_ms,
                max_processes: s.limits.max_processes,
                max_open_files: s.limits.max_open_files,
                max_output_bytes: s.limits.max_output_bytes,
            }),
            description: s.description,
            publish_time: Some(to_timestamp(v.publish_time)),
            published_by: v.published_by,
        }
    }
}

impl From<Deployment> for pb::Deployment {
    fn from(d: Deployment) -> Self {
        pb::Deployment {
            agent: d.agent,
            version: d.version,
            previous_version: d.previous_version.unwrap_or_default(),
            kind: match d.kind {
                DeployKind::Deploy => pb::DeploymentKind::Deploy,
                DeployKind::Rollback => pb::DeploymentKind::Rollback,
            } as i32,
            actor: d.actor,
            deploy_time: Some(to_timestamp(d.deploy_time)),
            revision: d.revision,
        }
    }
}

impl From<Worker> for pb::Worker {
    fn from(w: Worker) -> Self {
        pb::Worker {
            id: w.id,
            agents: w.agents,
            capacity: w.capacity,
            in_flight: w.in_flight,
            address: w.address,
            labels: w.labels.into_iter().collect(),
            state: match w.state {
                WorkerState::Up => pb::WorkerState::Up,
                WorkerState::Draining => pb::WorkerState::Draining,
                WorkerState::Down => pb::WorkerState::Down,
            } as i32,
            register_time: Some(to_timestamp(w.register_time)),
            last_heartbeat_time: Some(to_timestamp(w.last_heartbeat)),
        }
    }
}

impl From<Event> for pb::RegistryEvent {
    fn from(e: Event) -> Self {
        pb::RegistryEvent {
            revision: e.revision,
            kind: e.kind.to_pb() as i32,
            agent: e.agent,
            version: e.version,
            worker_id: e.worker_id,
            actor: e.actor,
            time: Some(to_timestamp(e.time)),
        }
    }
}
