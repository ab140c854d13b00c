//! Domain types to responses.

use devcycle::proto::registry::v1 as pb;
use devcycle::time::to_timestamp;

use super::*;

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

impl From<Dependency> for pb::Dependency {
    fn from(d: Dependency) -> Self {
        pb::Dependency {
            agent: d.agent,
            requirement: d.requirement,
        }
    }
}

impl From<Limits> for pb::ResourceLimits {
    fn from(l: Limits) -> Self {
        pb::ResourceLimits {
            wall_time_ms: l.wall_time_ms,
            memory_bytes: l.memory_bytes,
            cpu_time_ms: l.cpu_time_ms,
            max_processes: l.max_processes,
            max_open_files: l.max_open_files,
            max_output_bytes: l.max_output_bytes,
        }
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
            dependencies: s.dependencies.into_iter().map(Into::into).collect(),
            limits: Some(s.limits.into()),
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
