//! The Executor: a worker that runs agents. It holds a `Work` stream to the
//! scheduler, runs leased tasks in sandboxes with resource limits, registers
//! with the registry, and serves its own control plane.

mod liveness;
pub mod runtime;
mod service;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use devcycle::authz::Policy;
use devcycle::config::Config;
use devcycle::identity::SpiffeId;
use devcycle::proto::executor::v1::executor_server::{ExecutorServer, SERVICE_NAME};
use devcycle::proto::registry::v1::agent_registry_client::AgentRegistryClient;
use devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient;
use devcycle::server::MeshServer;
use devcycle::tls::MeshTls;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use runtime::process::{Capabilities, Limits};

const M: &str = "/devcycle.executor.v1.Executor/";

/// Status is open to the mesh; acting on tasks is for people and the
/// mesh's services.
pub fn policy() -> Policy {
    const READ: &[&str] = &["*"];
    const ACT: &[&str] = &["user/*", "svc/gateway", "svc/scheduler"];
    Policy::for_service(
        M,
        &[
            ("GetStatus", READ),
            ("ListRunningTasks", READ),
            ("CancelTask", ACT),
            ("StreamTaskLogs", ACT),
            ("Drain", ACT),
        ],
    )
}

pub struct Options {
    /// The control plane's listener.
    pub listener: TcpListener,
    /// The worker's identity, `worker/<id>`.
    pub tls: Arc<MeshTls>,
    pub scheduler: String,
    pub registry: String,
    /// Call a scheduler served by this process in memory.
    pub in_process_calls: bool,
    pub slots: u32,
    pub agents: Vec<String>,
    pub caps: Capabilities,
    pub limits: Limits,
    pub agent_dir: PathBuf,
    pub read_only: Vec<PathBuf>,
    pub work_dir: PathBuf,
    pub drain: Duration,
    pub gateway: SpiffeId,
    /// What agents may have beyond their sandbox.
    pub grants: runtime::Grants,
}

impl Options {
    pub async fn from_config(
        config: &Config,
        listener: TcpListener,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let id = SpiffeId::new(
            &config.trust_domain,
            devcycle::identity::Kind::Worker,
            &config.executor.worker_id,
        )
        .map_err(|e| anyhow::anyhow!("executor.worker_id: {e}"))?;
        let tls = devcycle::mesh::identity(config, &id, shutdown)?;
        let e = &config.executor;
        let l = &e.limits;
        Ok(Self {
            listener,
            tls,
            scheduler: e.scheduler.clone(),
            registry: e.registry.clone(),
            in_process_calls: e.in_process_calls,
            slots: e.slots,
            agents: e.agents.clone(),
            caps: Capabilities::detect(&e.bwrap, e.cgroups),
            limits: Limits {
                wall: l.wall_time,
                memory_bytes: l.memory_bytes,
                cpu_time: l.cpu_time,
                max_processes: l.max_processes,
                max_open_files: l.max_open_files,
                max_output_bytes: l.max_output_bytes,
            },
            agent_dir: real(&e.agent_dir)?,
            read_only: e.read_only.iter().map(real).collect::<Result<_, _>>()?,
            work_dir: if e.work_dir.is_empty() {
                config.data_dir.join("work")
            } else {
                PathBuf::from(&e.work_dir)
            },
            drain: e.drain,
            gateway: config.service_id("gateway"),
            grants: runtime::Grants {
                secrets: e.secrets.clone(),
                secret_files: e.secret_files.iter().map(PathBuf::from).collect(),
                http_plaintext: e.http_allow_plaintext,
                http_private: e.http_allow_private,
                unsandboxed: e.allow_unsandboxed,
                hidden: hidden_paths(config)?,
            },
        })
    }
}

/// `p` with symlinks resolved, so that binds and hidden paths compare as
/// the kernel sees them; absolute as given when it does not exist (yet).
fn real(p: impl AsRef<std::path::Path>) -> std::io::Result<PathBuf> {
    std::fs::canonicalize(&p).or_else(|_| std::path::absolute(&p))
}

/// What no agent may see: the data directory (databases, the gateway's
/// signing key), task workspaces, the mesh's keys and CA, and the
/// operator's secret files.
fn hidden_paths(config: &devcycle::config::Config) -> std::io::Result<Vec<PathBuf>> {
    let g = &config.gateway;
    let e = &config.executor;
    [config.data_dir.clone(), config.tls_dir()]
        .into_iter()
        // Other tasks' workspaces; each task sees its own at /workspace.
        .chain((!e.work_dir.is_empty()).then(|| PathBuf::from(&e.work_dir)))
        .chain(
            [&g.ca_dir, &g.signing_key]
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
        )
        .chain(e.secret_files.iter().map(PathBuf::from))
        .map(real)
        .collect()
}

/// A running executor; `extra` is its worker state.
pub type Running = devcycle::server::Running<Arc<worker::State>>;

/// Starts the worker and its control plane. On `shutdown` it drains: no new
/// work, running tasks get `drain` to finish, then are stopped and reported
/// as failed attempts (`worker_drained`, retryable): they had started.
pub async fn start(opts: Options, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let addr = opts.listener.local_addr()?;
    let worker_id = opts.tls.id().name().to_owned();
    tokio::fs::create_dir_all(&opts.work_dir).await?;
    let caps = opts.caps.clone();
    tracing::info!(
        worker_id = %worker_id,
        bubblewrap = caps.bwrap.is_some(),
        cgroups = caps.cgroups.as_ref().map(|c| format!("{:?}", c.version)).unwrap_or_else(|| "none".into()),
        "sandbox capabilities"
    );
    let state = worker::State::new(worker_id, opts.slots, opts.agents.clone());
    let env = Arc::new(runtime::Env {
        caps: caps.clone(),
        defaults: opts.limits,
        agent_dir: opts.agent_dir,
        read_only: opts.read_only,
        work_dir: opts.work_dir,
        http: runtime::http::client(&opts.grants)?,
        grants: opts.grants,
    });
    let trust = opts.tls.trust_domain().to_owned();
    let service = |name: &str| SpiffeId::service(&trust, name).expect("service names are valid");
    let schedulers = opts
        .scheduler
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|addr| {
            Ok(SchedulerClient::new(devcycle::client::MeshChannel::new(
                &opts.tls,
                addr,
                service("scheduler"),
                opts.in_process_calls,
            )?)
            .max_decoding_message_size(16 * 1024 * 1024))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        !schedulers.is_empty(),
        "executor.scheduler: at least one host:port is required"
    );
    let registry = AgentRegistryClient::new(devcycle::client::channel(
        &opts.tls,
        &opts.registry,
        service("registry"),
    )?);

    let stop = CancellationToken::new();
    let work = tokio::spawn(
        worker::Worker {
            state: Arc::clone(&state),
            env,
            schedulers,
        }
        .run(stop.clone()),
    );
    let live = tokio::spawn(liveness::run(
        Arc::clone(&state),
        registry,
        addr.to_string(),
        stop.clone(),
    ));
    {
        let (state, stop, deadline, shutdown) = (
            Arc::clone(&state),
            stop.clone(),
            opts.drain,
            shutdown.clone(),
        );
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tracing::info!("draining: no new work");
            worker::drain(&state, deadline).await;
            stop.cancel();
        });
    }
    let server_stop = CancellationToken::new();
    // No denylist: no mesh database here, and user certificates are
    // short-lived.
    let server = MeshServer::new(
        "executor",
        opts.listener,
        opts.tls,
        policy(),
        opts.gateway,
        SERVICE_NAME,
    );
    let routes = tonic::service::Routes::new(ExecutorServer::new(service::ExecutorService {
        state: Arc::clone(&state),
        caps,
        drain_deadline: opts.drain,
    }));
    let serving = tokio::spawn(server.serve(routes, server_stop.clone()));
    let task = tokio::spawn(async move {
        let _ = work.await;
        let _ = live.await;
        server_stop.cancel();
        serving.await?
    });
    Ok(Running {
        addr,
        task,
        extra: state,
    })
}

pub async fn serve(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.executor.listen).await?;
    let opts = Options::from_config(config, listener, &shutdown).await?;
    start(opts, shutdown).await?.wait().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_paths_cover_data_keys_workspaces_and_secrets_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(real_dir.join("token"), "t").unwrap();
        std::os::unix::fs::symlink(real_dir.join("token"), real_dir.join("link")).unwrap();
        let mut config = devcycle::config::Config {
            data_dir: real_dir.join("data"),
            ..Default::default()
        };
        config.executor.work_dir = real_dir.join("work").to_string_lossy().into_owned();
        config.executor.secret_files = vec![real_dir.join("link").to_string_lossy().into_owned()];
        let hidden = hidden_paths(&config).unwrap();
        for want in [
            real_dir.join("data"),
            config.tls_dir(),
            real_dir.join("work"),
            real_dir.join("token"),
        ] {
            assert!(hidden.contains(&want), "{want:?} not in {hidden:?}");
        }
    }
}
