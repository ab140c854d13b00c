//! The plaintext health port (`health.listen`): `grpc.health.v1` alone, for
//! probes that cannot present a mesh certificate (the kubelet's `grpc`
//! probes). It mirrors what every mesh server of this process reports on its
//! mTLS port: each service by its full gRPC name, and "" (the process)
//! SERVING until shutdown begins, then NOT_SERVING through the health grace.

use std::net::SocketAddr;
use std::sync::LazyLock;

use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

static PROCESS: LazyLock<HealthReporter> = LazyLock::new(HealthReporter::new);

/// Records `status` of `service` ("" for the process) for the health port.
pub async fn report(service: &str, status: ServingStatus) {
    PROCESS.set_service_status(service, status).await;
}

/// Serves the health port on `addr` until the process exits, so probes see
/// NOT_SERVING while the services drain. Returns the bound address. Call
/// inside a Tokio runtime.
pub fn serve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let bind = || -> std::io::Result<tokio::net::TcpListener> {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    };
    let listener = bind().map_err(|e| anyhow::anyhow!("health.listen {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let svc = HealthServer::new(HealthService::from_health_reporter(PROCESS.clone()));
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(error = %e, "health port stopped");
        }
    });
    tracing::info!(%bound, "health (plaintext grpc.health.v1) listening");
    Ok(bound)
}
