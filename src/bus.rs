//! The event bus: Kafka in distributed mode, an in-process broadcast in
//! `devcycle up`. Delivery is at least once; consumers dedupe by message id
//! ([`Dedupe`]). Messages with one key keep their order.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::broadcast;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    pub topic: String,
    /// Ordering key: messages with one key arrive in the order published.
    pub key: String,
    /// Unique id; consumers dedupe by it.
    pub id: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("event bus: {0}")]
pub struct BusError(pub String);

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes in order; succeeds only when every message is durably
    /// accepted. On error some may have been delivered: publish again.
    async fn publish(&self, batch: &[BusMessage]) -> Result<(), BusError>;
    /// Waits until published messages are delivered, up to `timeout`.
    async fn flush(&self, timeout: Duration);
    /// Whether messages leave the process. A bus that does not (the
    /// in-process one) needs no outbox relay: the durable log is the
    /// database, and publishing after the commit is enough.
    fn external(&self) -> bool {
        true
    }
}

/// `devcycle up`'s bus: subscribers in the same process.
pub struct InProcessBus {
    tx: broadcast::Sender<Arc<BusMessage>>,
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(4096).0,
        }
    }
}

impl InProcessBus {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<BusMessage>> {
        self.tx.subscribe()
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, batch: &[BusMessage]) -> Result<(), BusError> {
        for m in batch {
            // No subscribers is fine: the durable log is the database.
            let _ = self.tx.send(Arc::new(m.clone()));
        }
        Ok(())
    }

    async fn flush(&self, _timeout: Duration) {}

    fn external(&self) -> bool {
        false
    }
}

/// Kafka through librdkafka, with the idempotent producer (no duplicates or
/// reordering from its own retries) and `acks=all`. After a failed publish
/// the producer is replaced: a broker that lost its producer state (or a
/// replaced cluster) then meets a fresh producer id instead of rejecting
/// the old one forever. What the old producer still held is published again
/// by the caller; consumers dedupe by id.
pub struct KafkaBus {
    config: ClientConfig,
    producer: arc_swap::ArcSwap<FutureProducer>,
}

impl KafkaBus {
    /// `brokers` is a comma-separated host:port list. `extra` settings
    /// override the defaults (any librdkafka property).
    pub fn new(brokers: &str, extra: &[(&str, &str)]) -> Result<Self, BusError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            // A message that fails for good fails every later one too, so a
            // retry from the first unacknowledged event keeps each key's
            // order: no later event is ever delivered before an earlier one.
            .set("enable.gapless.guarantee", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "10000")
            .set("queue.buffering.max.ms", "2")
            .set("socket.keepalive.enable", "true");
        for (k, v) in extra {
            config.set(*k, *v);
        }
        let producer: FutureProducer = config.create().map_err(|e| BusError(e.to_string()))?;
        Ok(Self {
            config,
            producer: arc_swap::ArcSwap::from_pointee(producer),
        })
    }

    fn renew(&self) {
        match self.config.create::<FutureProducer>() {
            Ok(p) => self.producer.store(Arc::new(p)),
            Err(e) => tracing::error!(error = %e, "cannot create a kafka producer"),
        }
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    async fn publish(&self, batch: &[BusMessage]) -> Result<(), BusError> {
        let producer = self.producer.load_full();
        let result = send_all(&producer, batch).await;
        if result.is_err() {
            self.renew();
        }
        result
    }

    async fn flush(&self, timeout: Duration) {
        let producer = self.producer.load_full();
        let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    }
}

async fn send_all(producer: &FutureProducer, batch: &[BusMessage]) -> Result<(), BusError> {
    let mut pending = Vec::with_capacity(batch.len());
    for m in batch {
        let mut headers = OwnedHeaders::new_with_capacity(m.headers.len() + 1).insert(Header {
            key: "id",
            value: Some(m.id.as_bytes()),
        });
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let record = FutureRecord::to(&m.topic)
            .key(m.key.as_bytes())
            .payload(&m.payload)
            .headers(headers);
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => return Err(BusError(e.to_string())),
        }
    }
    for delivery in pending {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(BusError(e.to_string())),
            Err(_) => return Err(BusError("producer dropped the message".into())),
        }
    }
    Ok(())
}

/// Remembers the last `capacity` ids seen: drop a message whose id is here.
pub struct Dedupe {
    seen: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Dedupe {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// True the first time an id is seen.
    pub fn first(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_forgets_the_oldest() {
        let mut d = Dedupe::new(2);
        assert!(d.first("a"));
        assert!(!d.first("a"));
        assert!(d.first("b"));
        assert!(d.first("c"));
        assert!(d.first("a"), "a was evicted");
    }

    #[tokio::test]
    async fn in_process_bus_delivers_in_order() {
        let bus = InProcessBus::default();
        let mut rx = bus.subscribe();
        let m = |id: &str| BusMessage {
            topic: "t".into(),
            key: "k".into(),
            id: id.into(),
            headers: vec![],
            payload: vec![],
        };
        bus.publish(&[m("1"), m("2")]).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().id, "1");
        assert_eq!(rx.recv().await.unwrap().id, "2");
    }
}
