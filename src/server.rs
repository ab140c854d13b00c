//! Serving a mesh service: mTLS listener, authorization, metrics, health,
//! reflection, and graceful shutdown in a fixed order — cancellation, health
//! NOT_SERVING, stop accepting, drain in-flight calls until a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::authz::{AuthzLayer, Policy};
use crate::identity::SpiffeId;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::telemetry::GrpcMetricsLayer;
use crate::tls::{MeshTls, incoming};

/// Where and how a mesh service listens: the part of its options every
/// service has.
pub struct Endpoint {
    pub listener: TcpListener,
    pub tls: Arc<MeshTls>,
    /// The only peer whose forwarded end-user principal is trusted.
    pub gateway: SpiffeId,
    pub health_grace: Duration,
    pub drain: Duration,
}

impl Endpoint {
    /// The endpoint of service `name` as configured, on `listener`.
    pub fn from_config(
        config: &crate::config::Config,
        name: &str,
        listener: TcpListener,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            listener,
            tls: crate::mesh::identity(config, &config.service_id(name), shutdown)?,
            gateway: config.service_id("gateway"),
            health_grace: config.shutdown.health_grace,
            drain: config.shutdown.drain,
        })
    }

    /// A server for `name` on this endpoint, reporting `health_name`.
    pub fn server(
        self,
        name: &'static str,
        policy: Policy,
        health_name: &'static str,
    ) -> MeshServer {
        MeshServer::new(
            name,
            self.listener,
            self.tls,
            policy,
            self.gateway,
            health_name,
        )
        .shutdown_after(self.health_grace, self.drain)
    }
}

/// One mesh gRPC server.
pub struct MeshServer {
    /// Name in logs and metrics, e.g. "registry".
    pub name: &'static str,
    pub listener: TcpListener,
    pub tls: Arc<MeshTls>,
    pub policy: Policy,
    /// The only peer whose forwarded end-user principal is trusted.
    pub gateway: SpiffeId,
    /// Full names of the gRPC services reported by `grpc.health.v1`.
    pub health_names: Vec<&'static str>,
    /// How long health reports NOT_SERVING before the listener closes, so
    /// load balancers stop routing here first.
    pub health_grace: Duration,
    /// How long in-flight calls may run after the listener closes.
    pub drain: Duration,
    pub reflection: bool,
    /// Revoked certificates, refused; `None` where the service has no
    /// access to the mesh database (the executor's control plane).
    pub denylist: Option<Arc<crate::denylist::Denylist>>,
}

/// A service that is accepting connections at `addr`; `task` ends after
/// shutdown and the drain. `extra` is what a service hands back besides
/// (the gateway's bootstrap token, the executor's worker state).
pub struct Running<T = ()> {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub extra: T,
}

impl<T> Running<T> {
    /// Waits until the service has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

impl MeshServer {
    /// A server reporting `health_name` as serving, with reflection, no
    /// health grace, a one-second drain and no denylist.
    pub fn new(
        name: &'static str,
        listener: TcpListener,
        tls: Arc<MeshTls>,
        policy: Policy,
        gateway: SpiffeId,
        health_name: &'static str,
    ) -> Self {
        Self {
            name,
            listener,
            tls,
            policy,
            gateway,
            health_names: vec![health_name],
            health_grace: Duration::ZERO,
            drain: Duration::from_secs(1),
            reflection: true,
            denylist: None,
        }
    }

    /// Health reports NOT_SERVING for `grace` before the listener closes;
    /// in-flight calls then get `drain`.
    pub fn shutdown_after(mut self, grace: Duration, drain: Duration) -> Self {
        self.health_grace = grace;
        self.drain = drain;
        self
    }

    pub fn denylist(mut self, denylist: Arc<crate::denylist::Denylist>) -> Self {
        self.denylist = Some(denylist);
        self
    }

    /// Refuses the certificates revoked in the mesh database, following it.
    pub async fn follow_denylist(
        self,
        db: &crate::db::Database,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let list = crate::denylist::Denylist::follow(db.clone(), shutdown.clone()).await?;
        Ok(self.denylist(list))
    }

    /// Serves `routes` in a task; once the drain has ended, `then` runs
    /// (the service stops its own tasks and closes its database there).
    pub fn start(
        self,
        routes: Routes,
        shutdown: CancellationToken,
        then: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Running> {
        let addr = self.listener.local_addr()?;
        let task = tokio::spawn(async move {
            let res = self.serve(routes, shutdown).await;
            then.await;
            res
        });
        Ok(Running {
            addr,
            task,
            extra: (),
        })
    }

    /// Serves `routes` until `shutdown` is cancelled and the drain ends.
    pub async fn serve(self, routes: Routes, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (health, health_svc) = tonic_health::server::health_reporter();
        for name in &self.health_names {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
            crate::health::report(name, ServingStatus::Serving).await;
        }
        let mut routes = routes.add_service(health_svc);
        if self.reflection {
            let v1 = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .build_v1()?;
            let v1alpha = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .build_v1alpha()?;
            routes = routes.add_service(v1).add_service(v1alpha);
        }
        let addr = self.listener.local_addr()?;
        // One stack for callers over mTLS and callers in this process.
        let layers = tower::ServiceBuilder::new()
            .layer(GrpcMetricsLayer::new(self.name))
            .layer(AuthzLayer::new(self.policy, self.gateway, self.denylist));
        let local = crate::inproc::register(
            addr,
            crate::inproc::LocalService::new(layers.service(routes.clone().prepare())),
        );
        let incoming = incoming(self.listener, self.tls);
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(layers)
            .add_routes(routes);

        let signal = stop_signal(
            shutdown.clone(),
            health,
            self.health_names.clone(),
            self.health_grace,
        );
        tracing::info!(service = self.name, %addr, "serving");
        let serve = router.serve_with_incoming_shutdown(incoming, signal);
        let deadline = async {
            shutdown.cancelled().await;
            // No new in-process calls once shutdown begins.
            drop(local);
            tokio::time::sleep(self.health_grace + self.drain).await;
        };
        tokio::select! {
            res = serve => res?,
            _ = deadline => tracing::warn!(service = self.name, "drain deadline passed; dropping open calls"),
        }
        tracing::info!(service = self.name, "stopped");
        Ok(())
    }
}

async fn stop_signal(
    shutdown: CancellationToken,
    health: HealthReporter,
    names: Vec<&'static str>,
    grace: Duration,
) {
    shutdown.cancelled().await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    crate::health::report("", ServingStatus::NotServing).await;
    for name in names {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
        crate::health::report(name, ServingStatus::NotServing).await;
    }
    tokio::time::sleep(grace).await;
}

/// Cancels `token` on SIGINT or SIGTERM; a second signal exits at once.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        wait_signal().await;
        tracing::info!("shutting down (signal again to exit at once)");
        token.cancel();
        wait_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, only an explicit cancellation stops us.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
