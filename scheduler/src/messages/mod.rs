//! Messages between agents: topics, consumer groups with per-message acks,
//! redelivery after an ack deadline, dead letters and replay.
//!
//! The scheduler serves the `Messages` contract: triggers turn messages
//! into runs, and the scheduler is where runs start. The log itself is a
//! [`MessageLog`]; embedded mode keeps it in SQLite ([`sqlite`]), in its own
//! file so that publishing never contends with the task queue's writer.

use async_trait::async_trait;

use crate::error::Result;

mod access;
mod check;
pub mod kafka;
pub mod service;
pub mod sqlite;
mod triggers;

/// Where a log finds the wake-up of a topic's subscribers: a log that
/// learns of messages on its own (another scheduler published them) wakes
/// them.
pub type Wakes = std::sync::Arc<dyn Fn(&str) -> std::sync::Arc<tokio::sync::Notify> + Send + Sync>;

/// A topic as stored. Times are ms since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRow {
    pub name: String,
    pub partitions: u32,
    pub retention_s: u64,
    pub max_deliveries: u32,
    pub owner: String,
    pub publishers: Vec<String>,
    pub subscribers: Vec<String>,
    pub create_time: i64,
}

/// A message to publish; its partition is chosen by the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Unique per topic; a repeat is not stored twice.
    pub id: String,
    pub key: String,
    pub payload: Vec<u8>,
    /// Sorted by name.
    pub headers: Vec<(String, String)>,
}

/// Where a published message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub partition: u32,
    pub offset: i64,
    /// The id was already in the log: this is the earlier message's place.
    pub duplicate: bool,
}

/// A stored message, as delivered (`delivery` counts from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: String,
    pub partition: u32,
    pub offset: i64,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub publish_time: i64,
    pub delivery: u32,
}

/// Where a group starts reading when it is new or replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
    /// This offset of every partition.
    Offset(i64),
    /// The first message published at or after this time (ms).
    Time(i64),
}

/// A message a group gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRow {
    /// The log's position of the message: the page key.
    pub seq: i64,
    pub message: Stored,
    pub group: String,
    pub reason: String,
    pub dead_time: i64,
}

/// A trigger: messages of a topic that pass its filters start runs of a
/// stored workflow as its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerRow {
    pub name: String,
    /// Unique per creation: a trigger created again under one name reads as
    /// a new group and never shares idempotency keys with its predecessor.
    pub id: String,
    pub topic: String,
    pub workflow: String,
    /// Sorted by name, as are the filters and inputs below.
    pub header_filter: Vec<(String, String)>,
    /// Dotted path to the expected value as JSON text.
    pub payload_filter: Vec<(String, String)>,
    /// Input name to JSON text with `${message.*}` templates.
    pub inputs: Vec<(String, String)>,
    pub owner: String,
    pub create_time: i64,
    pub fired: u64,
    pub skipped: u64,
    pub last_run_id: String,
    pub last_error: String,
}

impl TriggerRow {
    /// The consumer group the trigger reads as.
    pub fn group(&self) -> String {
        format!("trigger.{}.{}", self.name, self.id)
    }
}

/// What a trigger did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Fired {
        run_id: String,
    },
    /// A message delivered again found the run it started.
    Repeated,
    Skipped,
    Failed {
        error: String,
    },
}

/// Why a message nacked at its last delivery is dead.
pub(crate) fn nack_reason(delivery: u32, reason: &str) -> String {
    if reason.is_empty() {
        format!("nacked on delivery {delivery}")
    } else {
        format!("nacked on delivery {delivery}: {reason}")
    }
}

/// A dead-letter page token (`<seq>/<group>`, empty for the first page).
pub(crate) fn dead_page(after: &str) -> Result<(i64, String)> {
    if after.is_empty() {
        return Ok((0, String::new()));
    }
    after
        .split_once('/')
        .and_then(|(seq, g)| Some((seq.parse().ok()?, g.to_owned())))
        .ok_or_else(|| {
            crate::error::Error::Invalid(devcycle::validate::FieldError::new(
                "page_token",
                "not a token from a previous response",
            ))
        })
}

/// A group's delivery: who holds it, and until when.
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub group: &'a str,
    /// The subscriber stream holding what is delivered.
    pub holder: &'a str,
    pub deadline_ms: i64,
}

/// The log behind the `Messages` contract. Every operation is one commit:
/// a message is stored, delivered, acked or dead-lettered whole or not at
/// all. Delivery is at least once: a message leaves a group only by an ack
/// or by the dead letters.
#[async_trait]
pub trait MessageLog: Send + Sync {
    /// Fails with ALREADY_EXISTS for a name in use.
    async fn create_topic(&self, t: TopicRow) -> Result<TopicRow>;
    async fn get_topic(&self, name: &str) -> Result<Option<TopicRow>>;
    /// Topics by name after `after`, at most `limit`.
    async fn list_topics(&self, after: &str, limit: usize) -> Result<Vec<TopicRow>>;
    /// Stores `msgs` in order, all or none. A message whose id is already in
    /// the topic is not stored again.
    async fn publish(&self, topic: &TopicRow, msgs: Vec<NewMessage>) -> Result<Vec<Placed>>;
    /// Places the group's read position where `start` says if the group is
    /// new, or always with `replay` (which also forgets what the group has
    /// in flight: the replay delivers it again).
    async fn join(&self, topic: &TopicRow, group: &str, start: Start, replay: bool) -> Result<()>;
    /// Up to `max` messages for the group: first those whose ack deadline
    /// passed (or whose nack delay ended), then new ones in publish order.
    /// A message already delivered `max_deliveries` times goes to the dead
    /// letters instead.
    async fn deliver(&self, topic: &TopicRow, lease: Lease<'_>, max: usize) -> Result<Vec<Stored>>;
    /// How many messages `holder` holds unacked.
    async fn held(&self, topic: &str, group: &str, holder: &str) -> Result<usize>;
    /// When the group's next held message becomes deliverable again; with
    /// `holder`, the next of those it holds (which frees a credit).
    async fn next_redelivery(
        &self,
        topic: &str,
        group: &str,
        holder: Option<&str>,
    ) -> Result<Option<i64>>;
    /// Acks the ids the group holds; returns how many were held.
    async fn ack(&self, topic: &str, group: &str, ids: &[String]) -> Result<usize>;
    /// Makes a held message deliverable again after `delay_ms`, or dead if
    /// it was delivered `max_deliveries` times. False if not held.
    async fn nack(
        &self,
        topic: &TopicRow,
        group: &str,
        id: &str,
        delay_ms: i64,
        reason: &str,
    ) -> Result<bool>;
    /// A subscriber left: what it held is deliverable now.
    async fn release(&self, topic: &str, group: &str, holder: &str) -> Result<()>;
    async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<DeadRow>>;
    /// Delivers a dead letter to its group again, counting from 1. False if
    /// there is no such dead letter.
    async fn requeue(&self, topic: &str, group: &str, id: &str) -> Result<bool>;
    /// Moves a held message to the dead letters now. False if not held.
    async fn bury(&self, topic: &str, group: &str, id: &str, reason: &str) -> Result<bool>;
    /// Stores a trigger and places its group at the topic's end, in one
    /// commit. Fails with ALREADY_EXISTS for a name in use.
    async fn create_trigger(&self, t: TriggerRow) -> Result<TriggerRow>;
    async fn get_trigger(&self, name: &str) -> Result<Option<TriggerRow>>;
    /// Triggers by name after `after` (of `topic` unless empty).
    async fn list_triggers(
        &self,
        topic: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<TriggerRow>>;
    /// Deletes the trigger created as `id`; false if it is gone.
    async fn delete_trigger(&self, name: &str, id: &str) -> Result<bool>;
    /// Counts what a trigger did, if it still exists as `id`.
    async fn record(&self, name: &str, id: &str, outcome: &Outcome) -> Result<()>;
    /// Drops messages older than their topic's retention that no group
    /// holds or gave up on; returns how many.
    async fn expire(&self, now_ms: i64) -> Result<u64>;
}
