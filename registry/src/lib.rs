//! The Agent Registry: agents, immutable versions, deployments, dependency
//! resolution, discovery, worker liveness and a resumable change stream.

mod error;
mod liveness;
pub mod manifest;
pub mod model;
mod resolve;
mod service;
pub mod store;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use devcycle::authz::Policy;
use devcycle::config::Config;
use devcycle::db::Database;
use devcycle::proto::registry::v1::agent_registry_server::{AgentRegistryServer, SERVICE_NAME};
use devcycle::server::Endpoint;
pub use devcycle::server::Running;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::Error;

/// Largest request the registry decodes; manifests are far smaller.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

const M: &str = "/devcycle.registry.v1.AgentRegistry/";

/// Who may call what. Reads are open to every mesh identity; changes to
/// agents come from people (directly or through the gateway); worker
/// liveness comes from the workers themselves.
pub fn policy() -> Policy {
    const READ: &[&str] = &["*"];
    const WRITE: &[&str] = &["user/*", "svc/gateway"];
    const WORKER: &[&str] = &["worker/*"];
    const WORKER_OR_ADMIN: &[&str] = &["worker/*", "user/*", "svc/gateway"];
    Policy::for_service(
        M,
        &[
            ("CreateAgent", WRITE),
            ("GetAgent", READ),
            ("ListAgents", READ),
            ("UpdateAgent", WRITE),
            ("DeleteAgent", WRITE),
            ("PublishVersion", WRITE),
            ("GetVersion", READ),
            ("ListVersions", READ),
            ("Deploy", WRITE),
            ("Rollback", WRITE),
            ("ListDeployments", READ),
            ("CheckCompatibility", READ),
            ("FindAgents", READ),
            ("RegisterWorker", WORKER),
            ("WorkerHeartbeat", WORKER),
            ("DeregisterWorker", WORKER_OR_ADMIN),
            ("ListWorkers", READ),
            ("Watch", READ),
        ],
    )
}

/// Everything the registry needs to run; `from_config` builds it for
/// binaries, tests build it directly.
pub struct Options {
    pub endpoint: Endpoint,
    pub db: Database,
    pub heartbeat_interval: Duration,
    pub missed_heartbeats: u32,
}

impl Options {
    /// Opens the database, loads the identity and binds the listener.
    pub async fn from_config(
        config: &Config,
        listener: TcpListener,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_config(config, "registry", listener, shutdown)?;
        let db = Database::open(&config.database_url_for(&config.registry.database_url)).await?;
        Ok(Self {
            endpoint,
            db,
            heartbeat_interval: config.registry.heartbeat_interval,
            missed_heartbeats: config.registry.missed_heartbeats,
        })
    }
}

/// Starts serving; the returned task ends after `shutdown` and the drain.
pub async fn start(opts: Options, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let store = store::open(&opts.db).await?;
    let sweeper = liveness::spawn(
        Arc::clone(&store),
        opts.heartbeat_interval,
        opts.missed_heartbeats,
        shutdown.clone(),
    );
    let svc = service::Registry {
        store,
        heartbeat_interval: opts.heartbeat_interval,
        shutdown: shutdown.clone(),
    };
    let routes = tonic::service::Routes::new(
        AgentRegistryServer::new(svc).max_decoding_message_size(MAX_MESSAGE_BYTES),
    );
    let db = opts.db;
    opts.endpoint
        .server("registry", policy(), SERVICE_NAME)
        .follow_denylist(&db, &shutdown)
        .await?
        .start(routes, shutdown, async move {
            let _ = sweeper.await;
            db.close().await;
        })
}

/// Serves the registry as configured until `shutdown`.
pub async fn serve(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.registry.listen).await?;
    let opts = Options::from_config(config, listener, &shutdown).await?;
    start(opts, shutdown).await?.wait().await
}
