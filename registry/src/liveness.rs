//! Marks workers DOWN after missed heartbeats. Every replica runs it; the
//! store's write lock makes a second replica find nothing to do.

use std::sync::Arc;
use std::time::Duration;

use devcycle::time::now_ms;
use tokio_util::sync::CancellationToken;

use crate::store::RegistryStore;

pub fn spawn(
    store: Arc<dyn RegistryStore>,
    interval: Duration,
    missed: u32,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let grace = interval * missed;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = now_ms();
            match store.mark_down(now - grace.as_millis() as i64, now).await {
                Ok(ids) => {
                    for id in ids {
                        tracing::warn!(worker_id = %id, "worker missed its heartbeats; marked down");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "worker liveness sweep failed"),
            }
        }
    })
}
