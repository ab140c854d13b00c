//! The audit log: every mutating call — who, method, target, outcome, time,
//! client address — stored and published on the event bus. Recording is off
//! the request path: events go through a bounded queue to one writer that
//! batches them.

use std::sync::Arc;
use std::time::Duration;

use devcycle::bus::{BusMessage, EventBus};
use devcycle::proto::auth::v1 as pb;
use devcycle::time::to_timestamp;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::Result;
use crate::store::{AuditFilter, AuditRow, Store};

const QUEUE: usize = 16_384;
const BATCH: usize = 512;

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<AuditRow>,
}

impl Recorder {
    /// Starts the writer; it drains the queue and stops after `cancel`.
    pub fn start(
        store: Store,
        bus: Arc<dyn EventBus>,
        topic: String,
        cancel: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_loop(store, bus, topic, rx, cancel));
        (Self { tx }, task)
    }

    pub fn record(&self, row: AuditRow) {
        if self.tx.try_send(row).is_err() {
            metrics::counter!("devcycle_gateway_audit_dropped_total").increment(1);
            tracing::error!("audit queue full; an audit event was dropped");
        }
    }
}

pub fn event_pb(r: &AuditRow) -> pb::AuditEvent {
    pb::AuditEvent {
        id: r.id.clone(),
        time: Some(to_timestamp(r.time_ms)),
        actor: r.actor.clone(),
        method: r.method.clone(),
        target: r.target.clone(),
        outcome: r.outcome,
        status_code: r.status_code.clone(),
        client_address: r.client_address.clone(),
    }
}

async fn write_loop(
    store: Store,
    bus: Arc<dyn EventBus>,
    topic: String,
    mut rx: mpsc::Receiver<AuditRow>,
    cancel: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            _ = cancel.cancelled() => {
                rx.close();
                rx.recv_many(&mut batch, QUEUE).await
            }
        };
        if n == 0 {
            return;
        }
        let mut delay = Duration::from_millis(100);
        while let Err(e) = store.insert_audit(&batch).await {
            if !matches!(e, crate::store::StoreError::Unavailable(_)) {
                // Retrying cannot help a batch the database refuses; it
                // would only stop every later event.
                metrics::counter!("devcycle_gateway_audit_dropped_total")
                    .increment(batch.len() as u64);
                tracing::error!(error = %e, lost = batch.len(), "audit events refused by the database");
                break;
            }
            tracing::warn!(error = %e, "cannot store audit events; retrying");
            if cancel.is_cancelled() && delay > Duration::from_secs(2) {
                tracing::error!(lost = batch.len(), "giving up on audit events at shutdown");
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        let messages: Vec<BusMessage> = batch
            .iter()
            .map(|r| BusMessage {
                topic: topic.clone(),
                key: r.actor.clone(),
                id: r.id.clone(),
                headers: vec![("kind".into(), "audit".into())],
                payload: event_pb(r).encode_to_vec(),
            })
            .collect();
        if let Err(e) = bus.publish(&messages).await {
            tracing::warn!(error = %e, "cannot publish audit events (they are stored)");
        }
        batch.clear();
    }
}

pub struct AuditService {
    pub store: Store,
}

impl AuditService {
    async fn list(&self, r: pb::ListAuditEventsRequest) -> Result<pb::ListAuditEventsResponse> {
        let limit = devcycle::page::page_size(r.page_size)?;
        let before = devcycle::page::decode_token(&r.page_token)?;
        devcycle::validate::max_bytes("actor", &r.actor, 256)?;
        devcycle::validate::max_bytes("method", &r.method, 256)?;
        let after_ms = devcycle::validate::timestamp("after", r.after.as_ref())?;
        let mut rows = self
            .store
            .audit(&AuditFilter {
                actor: r.actor,
                method: r.method,
                after_ms,
                before_id: before,
                limit: limit + 1,
            })
            .await?;
        let next = devcycle::page::finish(&mut rows, limit, |r| r.id.clone());
        Ok(pb::ListAuditEventsResponse {
            events: rows.iter().map(event_pb).collect(),
            next_page_token: next,
        })
    }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        Ok(Response::new(self.list(req.into_inner()).await?))
    }
}
