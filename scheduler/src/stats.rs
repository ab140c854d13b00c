//! Gauges of the whole database, read every [`INTERVAL`]: queued tasks per
//! agent (`scheduler_queue_depth`), the dead-letter queue
//! (`scheduler_dead_letters`) and how far the outbox lags
//! (`scheduler_outbox_lag_seconds`). Every replica reports the same values,
//! so dashboards and autoscalers take the max over replicas.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::SchedulerStore;

pub const INTERVAL: Duration = Duration::from_secs(5);

/// Publishes the gauges until `stop`.
pub async fn run(store: Arc<dyn SchedulerStore>, stop: CancellationToken) {
    let mut agents: HashSet<String> = HashSet::new();
    loop {
        match store.queue_stats().await {
            Ok(rows) => publish(&rows, &mut agents, devcycle::time::now_ms()),
            Err(e) => tracing::debug!(error = %e, "reading queue gauges"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

/// Sets the gauges from `rows`; agents seen before and absent now are 0.
fn publish(rows: &[(String, String, i64)], agents: &mut HashSet<String>, now: i64) {
    let mut seen = HashSet::new();
    for (kind, agent, n) in rows {
        match kind.as_str() {
            "queued" => {
                metrics::gauge!("scheduler_queue_depth", "agent" => agent.clone()).set(*n as f64);
                seen.insert(agent.clone());
            }
            "dead" => metrics::gauge!("scheduler_dead_letters").set(*n as f64),
            "outbox" => {
                let lag = if *n == 0 { 0 } else { (now - n).max(0) };
                metrics::gauge!("scheduler_outbox_lag_seconds").set(lag as f64 / 1000.0);
            }
            _ => {}
        }
    }
    for gone in agents.difference(&seen) {
        metrics::gauge!("scheduler_queue_depth", "agent" => gone.clone()).set(0.0);
    }
    *agents = seen;
}
