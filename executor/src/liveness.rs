//! Registration with the registry: the agents served, capacity, the control
//! plane's address, and a heartbeat with the load. A registry that forgot
//! us (restarted on empty storage) gets a new registration.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use devcycle::proto::registry::v1 as reg;
use devcycle::proto::registry::v1::agent_registry_client::AgentRegistryClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::worker::State;

pub async fn run(
    state: Arc<State>,
    mut client: AgentRegistryClient<Channel>,
    address: String,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    'register: loop {
        let worker = reg::Worker {
            id: state.worker_id.clone(),
            agents: state.agents.clone(),
            capacity: state.slots,
            address: address.clone(),
            ..Default::default()
        };
        let interval = match client
            .register_worker(reg::RegisterWorkerRequest {
                worker: Some(worker),
            })
            .await
        {
            Ok(r) => {
                Duration::from_millis(u64::from(r.into_inner().heartbeat_interval_ms.max(100)))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with the registry; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        tracing::info!(worker_id = %state.worker_id, "registered with the registry");
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = client
                        .deregister_worker(reg::DeregisterWorkerRequest { worker_id: state.worker_id.clone() })
                        .await;
                    return;
                }
                _ = tokio::time::sleep(interval) => {}
            }
            let beat = reg::WorkerHeartbeatRequest {
                worker_id: state.worker_id.clone(),
                in_flight: state.in_flight(),
                draining: state.draining.load(Ordering::Relaxed),
            };
            match client.worker_heartbeat(beat).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => continue 'register,
                Err(e) => tracing::warn!(error = %e, "registry heartbeat failed"),
            }
        }
    }
}
