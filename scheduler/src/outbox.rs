//! The outbox relay: publishes committed events to the bus in commit order,
//! marking them published only once the bus has them. While the bus is
//! down, events wait in the database and drain, in order, when it returns.
//! On PostgreSQL one relay runs at a time (an advisory lock), so that the
//! events of a run are never published by two relays at once.

use std::sync::Arc;
use std::time::Duration;

use devcycle::bus::{BusMessage, EventBus};
use prost::Message;
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::model::EventRow;
use crate::store::SchedulerStore;
use crate::wire;

const BATCH: usize = 500;
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const RELAY_LOCK: i64 = 0x6465_7663_7265_6c01;

/// The topic of run events: `<prefix>.run-events`. One topic for all kinds
/// of run event, keyed by run id, is what keeps a run's events in order
/// (Kafka orders within a partition, not across topics); the kind is in the
/// `kind` header.
pub fn topic(prefix: &str) -> String {
    if prefix.is_empty() {
        "run-events".into()
    } else {
        format!("{prefix}.run-events")
    }
}

pub fn message(topic: &str, e: &EventRow) -> BusMessage {
    BusMessage {
        topic: topic.to_owned(),
        key: e.run_id.clone(),
        id: e.event_id.clone(),
        headers: std::iter::once(("kind".into(), e.kind.as_str().into()))
            .chain(
                (!e.traceparent.is_empty())
                    .then(|| (devcycle::otel::TRACEPARENT.into(), e.traceparent.clone())),
            )
            .collect(),
        payload: wire::event(e).encode_to_vec(),
    }
}

pub struct Relay {
    pub store: Arc<dyn SchedulerStore>,
    pub bus: Arc<dyn EventBus>,
    pub hub: Arc<Hub>,
    pub topic: String,
    /// Set on PostgreSQL: only the holder of the relay lock publishes.
    pub pg: Option<PgPool>,
}

impl Relay {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut lock: Option<PgConnection> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if let Some(pool) = &self.pg
                && !holds_lock(&mut lock, pool).await
            {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                }
            }
            match self.publish_once().await {
                Ok(0) => {
                    backoff = Duration::from_millis(100);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.hub.outbox.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Ok(_) => backoff = Duration::from_millis(100),
                Err(e) => {
                    metrics::counter!("scheduler_outbox_publish_failures_total").increment(1);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "outbox publish failed; events stay buffered");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        // Drain what is committed, briefly, then flush the producer.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            match self.publish_once().await {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
        self.bus.flush(Duration::from_secs(2)).await;
    }

    /// Publishes the oldest batch; returns how many events it published.
    async fn publish_once(&self) -> anyhow::Result<usize> {
        let events = self.store.outbox(BATCH).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let messages: Vec<BusMessage> = events.iter().map(|e| message(&self.topic, e)).collect();
        self.bus.publish(&messages).await?;
        let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
        self.store.mark_published(&ids).await?;
        metrics::counter!("scheduler_outbox_published_total").increment(ids.len() as u64);
        Ok(ids.len())
    }
}

/// Takes or checks the session-level relay lock on a dedicated connection.
async fn holds_lock(lock: &mut Option<PgConnection>, pool: &PgPool) -> bool {
    if let Some(conn) = lock {
        if sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok() {
            return true;
        }
        *lock = None;
    }
    let Ok(conn) = pool.acquire().await else {
        return false;
    };
    let mut conn = conn.detach();
    match sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(RELAY_LOCK)
        .fetch_one(&mut conn)
        .await
    {
        Ok(true) => {
            tracing::info!("this scheduler relays the outbox");
            *lock = Some(conn);
            true
        }
        _ => {
            let _ = conn.close().await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    #[test]
    fn a_tasks_events_carry_its_trace_context_as_a_header() {
        let mut e = EventRow {
            id: 1,
            event_id: "r/1".into(),
            run_id: "r".into(),
            seq: 1,
            kind: EventKind::TaskLeased,
            task_id: "t".into(),
            task_key: "k".into(),
            attempt: 1,
            worker_id: "w".into(),
            message: String::new(),
            time: 0,
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        };
        let m = message("devcycle.run-events", &e);
        assert_eq!(m.key, "r");
        assert!(
            m.headers
                .contains(&("traceparent".into(), e.traceparent.clone()))
        );
        e.traceparent.clear();
        let m = message("devcycle.run-events", &e);
        assert_eq!(
            m.headers,
            vec![("kind".to_owned(), "task_leased".to_owned())]
        );
    }
}
