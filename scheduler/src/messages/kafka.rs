//! The message log in distributed mode: messages in Kafka, one Kafka topic
//! (`<prefix>.msg.<topic>`) per topic with as many partitions; what the mesh
//! decides about them in PostgreSQL ([`state`]), so that any scheduler may
//! deliver, ack, redeliver or dead-letter any message.
//!
//! - Publish produces with the idempotent producer (the id in the
//!   `devcycle-id` header) and then records each id's place. A publish
//!   retried after a failure finds the id placed and reports a duplicate; a
//!   copy produced twice (a retry racing the first attempt) is skipped by
//!   readers, since only an id's first recorded place is delivered.
//! - A group's cursors are in PostgreSQL, not in Kafka's committed offsets:
//!   they move in the same transaction that makes what was read held, so a
//!   message passes from the log to the group exactly once.
//! - Held messages and dead letters carry a copy of the message, so that
//!   redelivery never needs Kafka's random access.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sqlx::postgres::PgPool;

use self::reader::{ID_HEADER, Reader, State};
use super::{
    DeadRow, Lease, MessageLog, NewMessage, Outcome, Placed, Start, Stored, TopicRow, TriggerRow,
    Wakes,
};
use crate::error::{Error, Result};

mod reader;
mod state;

/// A reader unused this long is closed (its group's subscribers left).
const IDLE_READER: Duration = Duration::from_secs(300);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

pub struct KafkaLog {
    pool: PgPool,
    prefix: String,
    /// Replaced when it fails for good (a fatal idempotence error).
    producer: Mutex<FutureProducer>,
    producer_config: ClientConfig,
    admin: AdminClient<DefaultClientContext>,
    /// For watermarks.
    meta: Arc<BaseConsumer>,
    consumer_config: ClientConfig,
    readers: Mutex<HashMap<(String, String), Arc<Reader>>>,
    wakes: Wakes,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("kafka {what}: {e}"))
}

impl KafkaLog {
    /// `brokers` is a comma-separated host:port list; Kafka topics are named
    /// `<prefix>.msg.<topic>`.
    pub fn new(pool: PgPool, brokers: &str, prefix: &str, wakes: Wakes) -> Result<Self> {
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", brokers)
            .set("socket.keepalive.enable", "true");
        let mut producer_config = base.clone();
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // A publish waits this long for Kafka, then fails UNAVAILABLE;
            // its retry (same ids) is not stored twice.
            .set("message.timeout.ms", "10000")
            .set("queue.buffering.max.ms", "1")
            // Room for the largest message the service accepts (1 MiB of
            // payload, 256 KiB of headers); the broker's limit is its own.
            .set("message.max.bytes", "2097152");
        let producer = producer_config
            .create()
            .map_err(|e| unavailable("producer", e))?;
        let mut consumer_config = base.clone();
        consumer_config
            // Required by the client; readers never join the group or
            // commit: they are assigned partitions at the group's cursors.
            .set("group.id", "devcycle-messages")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "20")
            .set("queued.max.messages.kbytes", "8192");
        let meta = consumer_config
            .create()
            .map_err(|e| unavailable("consumer", e))?;
        let admin = base.create().map_err(|e| unavailable("admin", e))?;
        Ok(Self {
            pool,
            prefix: prefix.to_owned(),
            producer: Mutex::new(producer),
            producer_config,
            admin,
            meta: Arc::new(meta),
            consumer_config,
            readers: Mutex::default(),
            wakes,
        })
    }

    fn kafka_topic(&self, topic: &str) -> String {
        if self.prefix.is_empty() {
            format!("msg.{topic}")
        } else {
            format!("{}.msg.{topic}", self.prefix)
        }
    }

    /// The (low, high) watermarks of each partition.
    async fn watermarks(&self, topic: &TopicRow) -> Result<Vec<(i64, i64)>> {
        let (meta, name, n) = (
            Arc::clone(&self.meta),
            self.kafka_topic(&topic.name),
            topic.partitions,
        );
        tokio::task::spawn_blocking(move || {
            (0..n as i32)
                .map(|p| {
                    meta.fetch_watermarks(&name, p, KAFKA_TIMEOUT)
                        .map_err(|e| unavailable("watermarks", e))
                })
                .collect()
        })
        .await
        .map_err(|e| Error::Unavailable(format!("kafka watermarks: {e}")))?
    }

    /// How many partitions the Kafka topic has.
    async fn partitions_of(&self, name: &str) -> Result<usize> {
        let (meta, name) = (Arc::clone(&self.meta), name.to_owned());
        tokio::task::spawn_blocking(move || {
            let md = meta
                .fetch_metadata(Some(&name), KAFKA_TIMEOUT)
                .map_err(|e| unavailable("metadata", e))?;
            Ok(md.topics().first().map_or(0, |t| t.partitions().len()))
        })
        .await
        .map_err(|e| unavailable("metadata", e))?
    }

    /// This scheduler's reader of the group, started at its cursors; `None`
    /// if the group has none. Called with no transaction open.
    async fn reader(&self, topic: &TopicRow, group: &str) -> Result<Option<Arc<Reader>>> {
        let key = (topic.name.clone(), group.to_owned());
        {
            let mut readers = self.readers.lock();
            // Close readers no subscriber used for a while (deleted
            // triggers' groups, departed subscribers').
            readers.retain(|k, r| {
                *k == key
                    || Arc::strong_count(r) > 1
                    || r.state
                        .try_lock()
                        .map_or(true, |s| s.used.elapsed() < IDLE_READER)
            });
            if let Some(r) = readers.get(&key) {
                return Ok(Some(Arc::clone(r)));
            }
        }
        let pos = state::cursors(&mut *self.pool.acquire().await?, &topic.name, group).await?;
        if pos.is_empty() {
            return Ok(None);
        }
        let reader = Arc::new(Reader::start(
            &self.consumer_config,
            &self.kafka_topic(&topic.name),
            pos,
            (self.wakes)(&topic.name),
        )?);
        Ok(Some(Arc::clone(
            self.readers.lock().entry(key).or_insert(reader),
        )))
    }

    /// Reads fresh messages for the group and holds them, in `tx`. Returns
    /// them and where the reader is once `tx` commits, and whether it must
    /// seek there (its compare-and-set lost, or the group moved).
    async fn fresh(
        &self,
        tx: &mut state::Tx,
        st: &mut State,
        topic: &TopicRow,
        lease: Lease<'_>,
        visible_at: i64,
        max: usize,
    ) -> Result<(Vec<Stored>, Vec<i64>, bool)> {
        let mut fetched = st.take(max);
        if fetched.is_empty() {
            // Caught up: a replay elsewhere moves the group without any
            // compare-and-set of ours noticing.
            let stored = state::cursors(tx, &topic.name, lease.group).await?;
            let moved = !stored.is_empty() && stored != st.pos;
            let pos = if moved { stored } else { st.pos.clone() };
            return Ok((fetched, pos, moved));
        }
        // Per partition: from the reader's position to past its last message.
        let mut moves: Vec<(i32, i64, i64)> = Vec::new();
        for m in &fetched {
            let p = m.partition as i32;
            match moves.iter_mut().find(|(q, ..)| *q == p) {
                Some(mv) => mv.2 = m.offset + 1,
                None => moves.push((p, st.pos[m.partition as usize], m.offset + 1)),
            }
        }
        // In partition order, as every reader of the group locks them.
        moves.sort_unstable();
        let (parts, from, to): (Vec<i32>, Vec<i64>, Vec<i64>) = moves.iter().copied().fold(
            (Vec::new(), Vec::new(), Vec::new()),
            |mut acc, (p, f, t)| {
                acc.0.push(p);
                acc.1.push(f);
                acc.2.push(t);
                acc
            },
        );
        let moved = state::advance(tx, &topic.name, lease.group, &parts, &from, &to).await?;
        let mut pos = st.pos.clone();
        for (p, _, t) in &moves {
            if moved.contains(&(*p as u32)) {
                pos[*p as usize] = *t;
            }
        }
        let lost = moved.len() < moves.len();
        if lost {
            // Another scheduler or a replay moved the group: the reader
            // starts again where it is, as this transaction sees it.
            let stored = state::cursors(tx, &topic.name, lease.group).await?;
            if stored.len() == pos.len() {
                pos = stored;
            }
        }
        fetched.retain(|m| moved.contains(&m.partition));
        let ids: Vec<String> = fetched.iter().map(|m| m.id.clone()).collect();
        let first: HashMap<String, (u32, i64)> = state::claim(
            tx,
            &topic.name,
            &ids,
            &fetched
                .iter()
                .map(|m| m.partition as i32)
                .collect::<Vec<_>>(),
            &fetched.iter().map(|m| m.offset).collect::<Vec<_>>(),
            &fetched.iter().map(|m| m.publish_time).collect::<Vec<_>>(),
        )
        .await?
        .into_iter()
        .map(|(id, p, o)| (id, (p, o)))
        .collect();
        // Copies of an id produced again are not the message.
        fetched.retain(|m| first.get(&m.id) == Some(&(m.partition, m.offset)));
        let held = state::hold(
            tx,
            &topic.name,
            lease.group,
            lease.holder,
            visible_at,
            &fetched,
        )
        .await?;
        // A message the group holds already is not delivered twice.
        fetched.retain(|m| held.contains(&m.id));
        Ok((fetched, pos, lost))
    }

    /// A publish failed: the error, after replacing the producer if it
    /// cannot produce again (a fatal error, or the broker fenced it after
    /// timed-out messages: a new producer id starts afresh; the ids keep
    /// retried messages from being stored twice).
    fn failed(&self, producer: &FutureProducer, e: rdkafka::error::KafkaError) -> Error {
        use RDKafkaErrorCode::*;
        if e.rdkafka_error_code() == Some(MessageSizeTooLarge) {
            return Error::Invalid(devcycle::validate::FieldError::new(
                "payload",
                "with its key and headers, larger than the Kafka broker accepts",
            ));
        }
        let fenced = matches!(
            e.rdkafka_error_code(),
            Some(
                ProducerFenced
                    | InvalidProducerEpoch
                    | UnknownProducerId
                    | OutOfOrderSequenceNumber
            )
        );
        if fenced || producer.client().fatal_error().is_some() {
            tracing::warn!(error = %e, "kafka producer cannot go on; replacing it");
            match self.producer_config.create::<FutureProducer>() {
                Ok(p) => {
                    let old = std::mem::replace(&mut *self.producer.lock(), p);
                    // Closing a producer waits for what it still holds.
                    tokio::task::spawn_blocking(move || drop(old));
                }
                Err(e) => tracing::error!(error = %e, "cannot create a kafka producer"),
            }
        }
        unavailable("produce", e)
    }
}

/// A partition by the FNV-1a hash of the key, or of the id without one, so
/// that one key keeps one order and a retried publish lands where it did.
fn partition_of(m: &NewMessage, partitions: u32) -> i32 {
    let s = if m.key.is_empty() { &m.id } else { &m.key };
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % u64::from(partitions)) as i32
}

/// A transaction PostgreSQL gave up on for a concurrent one (a deadlock, a
/// serialization failure) is worth retrying, not a fault.
fn contended(e: Error) -> Error {
    if let Error::Database(db) = &e
        && let sqlx::Error::Database(d) = &**db
        && matches!(d.code().as_deref(), Some("40P01" | "40001"))
    {
        return Error::Unavailable(format!("concurrent delivery: {d}"));
    }
    e
}

fn now() -> i64 {
    devcycle::time::now_ms()
}

#[async_trait]
impl MessageLog for KafkaLog {
    async fn create_topic(&self, t: TopicRow) -> Result<TopicRow> {
        if state::get_topic(&self.pool, &t.name).await?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "topic {} already exists",
                t.name
            )));
        }
        let name = self.kafka_topic(&t.name);
        let retention = (t.retention_s * 1000).to_string();
        let new = NewTopic::new(&name, t.partitions as i32, TopicReplication::Fixed(-1))
            .set("retention.ms", &retention);
        let opts = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
        let created = self
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| unavailable("create topic", e))?;
        for r in created {
            match r {
                Ok(_) => {}
                // Left by an earlier attempt, or a concurrent create: usable
                // only with the partitions this topic asks for.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    let have = self.partitions_of(&name).await?;
                    if have != t.partitions as usize {
                        return Err(Error::FailedPrecondition(format!(
                            "topic.partitions: Kafka topic {name} exists with {have} partitions"
                        )));
                    }
                }
                Err((_, code)) => return Err(unavailable("create topic", code)),
            }
        }
        if !state::insert_topic(&self.pool, &t).await? {
            return Err(Error::AlreadyExists(format!(
                "topic {} already exists",
                t.name
            )));
        }
        Ok(t)
    }

    async fn get_topic(&self, name: &str) -> Result<Option<TopicRow>> {
        state::get_topic(&self.pool, name).await
    }

    async fn list_topics(&self, after: &str, limit: usize) -> Result<Vec<TopicRow>> {
        state::list_topics(&self.pool, after, limit).await
    }

    async fn publish(&self, topic: &TopicRow, msgs: Vec<NewMessage>) -> Result<Vec<Placed>> {
        let ids: Vec<String> = msgs.iter().map(|m| m.id.clone()).collect();
        let mut placed: HashMap<String, (u32, i64)> =
            state::places(&mut *self.pool.acquire().await?, &topic.name, &ids)
                .await?
                .into_iter()
                .map(|(id, p, o)| (id, (p, o)))
                .collect();
        let name = self.kafka_topic(&topic.name);
        let at = now();
        let producer = self.producer.lock().clone();
        let mut pending = Vec::new();
        let mut sent = std::collections::HashSet::new();
        for m in &msgs {
            if placed.contains_key(&m.id) || !sent.insert(m.id.as_str()) {
                continue;
            }
            let mut headers = OwnedHeaders::new_with_capacity(m.headers.len() + 1).insert(Header {
                key: ID_HEADER,
                value: Some(m.id.as_bytes()),
            });
            for (k, v) in &m.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let record = FutureRecord::to(&name)
                .partition(partition_of(m, topic.partitions))
                .key(m.key.as_bytes())
                .payload(&m.payload)
                .headers(headers)
                .timestamp(at);
            match producer.send_result(record) {
                Ok(delivery) => pending.push((m.id.clone(), delivery)),
                Err((e, _)) => return Err(self.failed(&producer, e)),
            }
        }
        let mut fresh = Vec::with_capacity(pending.len());
        for (id, delivery) in pending {
            match delivery.await {
                Ok(Ok(d)) => fresh.push((id, d.partition, d.offset)),
                Ok(Err((e, _))) => return Err(self.failed(&producer, e)),
                Err(_) => return Err(unavailable("produce", "the producer closed")),
            }
        }
        let mut c = self.pool.acquire().await?;
        let fresh_ids: Vec<String> = fresh.iter().map(|f| f.0.clone()).collect();
        // A concurrent publish of an id may have placed it first.
        let firsts = state::claim(
            &mut c,
            &topic.name,
            &fresh_ids,
            &fresh.iter().map(|f| f.1).collect::<Vec<_>>(),
            &fresh.iter().map(|f| f.2).collect::<Vec<_>>(),
            &vec![at; fresh.len()],
        )
        .await
        .map_err(contended)?;
        let ours: std::collections::HashSet<(String, u32, i64)> = fresh
            .into_iter()
            .map(|(id, p, o)| (id, p as u32, o))
            .collect();
        let mut new_ids = std::collections::HashSet::new();
        for (id, p, o) in firsts {
            if ours.contains(&(id.clone(), p, o)) {
                new_ids.insert(id.clone());
            }
            placed.insert(id, (p, o));
        }
        msgs.iter()
            .map(|m| {
                let (partition, offset) = *placed.get(&m.id).ok_or_else(|| {
                    Error::Corrupt(format!("message {} was produced but has no place", m.id))
                })?;
                Ok(Placed {
                    partition,
                    offset,
                    // Only the first of repeats within the batch is new.
                    duplicate: !new_ids.remove(&m.id),
                })
            })
            .collect()
    }

    async fn join(&self, topic: &TopicRow, group: &str, start: Start, replay: bool) -> Result<()> {
        let known = !state::cursors(&mut *self.pool.acquire().await?, &topic.name, group)
            .await?
            .is_empty();
        if known && !replay {
            return Ok(());
        }
        let marks = self.watermarks(topic).await?;
        let at: Vec<i64> = match start {
            Start::Earliest => marks.iter().map(|m| m.0).collect(),
            Start::Latest => marks.iter().map(|m| m.1).collect(),
            Start::Offset(o) => marks.iter().map(|m| o.clamp(m.0, m.1)).collect(),
            Start::Time(t) => {
                let firsts = state::first_since(&self.pool, &topic.name, t).await?;
                marks
                    .iter()
                    .enumerate()
                    .map(|(p, m)| firsts.get(&(p as u32)).copied().unwrap_or(m.1))
                    .collect()
            }
        };
        let mut tx = self.pool.begin().await?;
        state::place(&mut tx, &topic.name, group, &at, replay).await?;
        tx.commit().await?;
        // This scheduler's reader starts again where the group now is;
        // others find out when their next read loses the compare-and-set.
        self.readers
            .lock()
            .remove(&(topic.name.clone(), group.to_owned()));
        Ok(())
    }

    async fn deliver(&self, topic: &TopicRow, lease: Lease<'_>, max: usize) -> Result<Vec<Stored>> {
        // The reader's lock comes before any row lock, in every delivery of
        // the group on this scheduler.
        let reader = self.reader(topic, lease.group).await?;
        let mut st = match &reader {
            Some(r) => Some(r.state.lock().await),
            None => None,
        };
        let at = now();
        let visible = at + lease.deadline_ms;
        let result = async {
            let mut tx = self.pool.begin().await?;
            let mut out = state::redeliver(&mut tx, topic, lease, at, visible, max).await?;
            let room = max.saturating_sub(out.len());
            let mut seek = None;
            if let Some(st) = st.as_deref_mut()
                && room > 0
            {
                let (fresh, pos, restart) =
                    self.fresh(&mut tx, st, topic, lease, visible, room).await?;
                out.extend(fresh);
                seek = Some((pos, restart));
            }
            tx.commit().await?;
            Ok::<_, Error>((out, seek))
        }
        .await;
        match (result, reader.as_deref(), st.as_deref_mut()) {
            (Ok((out, Some((pos, restart)))), Some(r), Some(st)) => {
                if restart {
                    st.restart(r, pos);
                } else {
                    st.pos = pos;
                }
                Ok(out)
            }
            (Ok((out, _)), ..) => Ok(out),
            (Err(e), reader, st) => {
                // What the reader proposed did not become the group's: it
                // reads it again from where it was.
                if let (Some(r), Some(st)) = (reader, st) {
                    let pos = st.pos.clone();
                    st.restart(r, pos);
                }
                Err(contended(e))
            }
        }
    }

    async fn held(&self, topic: &str, group: &str, holder: &str) -> Result<usize> {
        state::held(&self.pool, topic, group, holder, now()).await
    }

    async fn next_redelivery(
        &self,
        topic: &str,
        group: &str,
        holder: Option<&str>,
    ) -> Result<Option<i64>> {
        state::next_redelivery(&self.pool, topic, group, holder).await
    }

    async fn ack(&self, topic: &str, group: &str, ids: &[String]) -> Result<usize> {
        state::ack(&self.pool, topic, group, ids).await
    }

    async fn nack(
        &self,
        topic: &TopicRow,
        group: &str,
        id: &str,
        delay_ms: i64,
        reason: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let Some(delivery) = state::delivery(&mut tx, &topic.name, group, id).await? else {
            return Ok(false);
        };
        if delivery >= topic.max_deliveries {
            let why = super::nack_reason(delivery, reason);
            state::bury(&mut tx, &topic.name, group, id, &why, now()).await?;
        } else {
            state::postpone(&mut tx, &topic.name, group, id, now() + delay_ms).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn release(&self, topic: &str, group: &str, holder: &str) -> Result<()> {
        state::release(&self.pool, topic, group, holder, now()).await
    }

    async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<DeadRow>> {
        // Dead letters have a sequence of their own: the group is not needed.
        let (after, _) = super::dead_page(after)?;
        state::dead_letters(&self.pool, topic, group, after, limit).await
    }

    async fn requeue(&self, topic: &str, group: &str, id: &str) -> Result<bool> {
        state::requeue(&self.pool, topic, group, id, now()).await
    }

    async fn bury(&self, topic: &str, group: &str, id: &str, reason: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let buried = state::bury(&mut tx, topic, group, id, reason, now()).await?;
        tx.commit().await?;
        Ok(buried)
    }

    async fn create_trigger(&self, t: TriggerRow) -> Result<TriggerRow> {
        let topic = state::get_topic(&self.pool, &t.topic)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("trigger.topic: topic {} does not exist", t.topic))
            })?;
        let ends: Vec<i64> = self.watermarks(&topic).await?.iter().map(|m| m.1).collect();
        let mut tx = self.pool.begin().await?;
        if !state::insert_trigger(&mut tx, &t).await? {
            return Err(Error::AlreadyExists(format!(
                "trigger.name: trigger {} exists",
                t.name
            )));
        }
        state::place(&mut tx, &t.topic, &t.group(), &ends, false).await?;
        tx.commit().await?;
        Ok(t)
    }

    async fn get_trigger(&self, name: &str) -> Result<Option<TriggerRow>> {
        state::get_trigger(&self.pool, name).await
    }

    async fn list_triggers(
        &self,
        topic: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<TriggerRow>> {
        state::list_triggers(&self.pool, topic, after, limit).await
    }

    async fn delete_trigger(&self, name: &str, id: &str) -> Result<bool> {
        state::delete_trigger(&self.pool, name, id).await
    }

    async fn record(&self, name: &str, id: &str, outcome: &Outcome) -> Result<()> {
        state::record(&self.pool, name, id, outcome).await
    }

    async fn expire(&self, now_ms: i64) -> Result<u64> {
        state::expire(&self.pool, now_ms).await
    }
}
