//! A group's reader of a Kafka topic on one scheduler: a consumer assigned
//! every partition at the group's cursors, fetching ahead into a bounded
//! buffer and waking the topic's subscribers as messages arrive.
//!
//! The reader only proposes messages: they are the group's once the
//! transaction that moves its cursors from where the reader started commits
//! (a compare-and-set). When another scheduler moved them first, or a
//! replay did, the reader starts again from the cursors as stored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{Notify, mpsc};

use crate::error::{Error, Result};
use crate::messages::Stored;

/// The header that carries a message's id.
pub(super) const ID_HEADER: &str = "devcycle-id";

/// How many messages a reader fetches ahead of its group (librdkafka's
/// own queue is bounded in bytes: `queued.max.messages.kbytes`).
const BUFFER: usize = 256;

pub(super) struct Reader {
    /// New positions (one per partition) for the fetch task to seek to.
    seek: mpsc::UnboundedSender<Vec<i64>>,
    pub(super) state: tokio::sync::Mutex<State>,
    task: tokio::task::JoinHandle<()>,
}

pub(super) struct State {
    fetched: mpsc::Receiver<(u64, Stored)>,
    /// Counts seeks: what was fetched before the last one is stale.
    epoch: u64,
    /// Per partition, the cursor the next proposed message follows.
    pub(super) pos: Vec<i64>,
    pub(super) used: Instant,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reader {
    pub(super) fn start(
        config: &ClientConfig,
        kafka_topic: &str,
        pos: Vec<i64>,
        wake: Arc<Notify>,
    ) -> Result<Self> {
        let consumer: StreamConsumer = config
            .create()
            .map_err(|e| Error::Unavailable(format!("kafka consumer: {e}")))?;
        assign(&consumer, kafka_topic, &pos)?;
        let (seek, seeks) = mpsc::unbounded_channel();
        let (tx, fetched) = mpsc::channel(BUFFER);
        let task = tokio::spawn(fetch(consumer, kafka_topic.to_owned(), seeks, tx, wake));
        Ok(Self {
            seek,
            state: tokio::sync::Mutex::new(State {
                fetched,
                epoch: 0,
                pos,
                used: Instant::now(),
            }),
            task,
        })
    }
}

impl State {
    /// Up to `max` fetched messages that follow the positions, in fetch
    /// order.
    pub(super) fn take(&mut self, max: usize) -> Vec<Stored> {
        self.used = Instant::now();
        let mut out = Vec::new();
        while out.len() < max {
            match self.fetched.try_recv() {
                Ok((epoch, m)) if epoch == self.epoch => {
                    if self
                        .pos
                        .get(m.partition as usize)
                        .is_some_and(|&p| m.offset >= p)
                    {
                        out.push(m);
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        out
    }

    /// Starts again from `pos`, dropping what was fetched ahead. Needs no
    /// database: safe on any error path.
    pub(super) fn restart(&mut self, reader: &Reader, pos: Vec<i64>) {
        self.epoch += 1;
        self.pos = pos.clone();
        let _ = reader.seek.send(pos);
        while self.fetched.try_recv().is_ok() {}
    }
}

fn assign(consumer: &StreamConsumer, topic: &str, pos: &[i64]) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (p, &off) in pos.iter().enumerate() {
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(off))
            .map_err(|e| Error::Unavailable(format!("kafka assignment: {e}")))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::Unavailable(format!("kafka assignment: {e}")))
}

async fn fetch(
    consumer: StreamConsumer,
    topic: String,
    mut seeks: mpsc::UnboundedReceiver<Vec<i64>>,
    tx: mpsc::Sender<(u64, Stored)>,
    wake: Arc<Notify>,
) {
    let mut epoch = 0;
    loop {
        let m = tokio::select! {
            biased;
            pos = seeks.recv() => {
                let Some(pos) = pos else { return };
                if let Err(e) = assign(&consumer, &topic, &pos) {
                    tracing::warn!(error = %e, topic, "cannot seek a message reader");
                }
                epoch += 1;
                continue;
            }
            m = consumer.recv() => m,
        };
        match m {
            Ok(m) => {
                let Some(stored) = stored(&m) else {
                    tracing::warn!(
                        topic,
                        partition = m.partition(),
                        offset = m.offset(),
                        "a message without an id is skipped"
                    );
                    continue;
                };
                if tx.send((epoch, stored)).await.is_err() {
                    return;
                }
                wake.notify_waiters();
            }
            Err(e) => {
                tracing::warn!(error = %e, topic, "kafka fetch failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// A fetched message as stored; `None` without an id header.
fn stored(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Stored> {
    let mut id = None;
    let mut headers = Vec::new();
    if let Some(h) = m.headers() {
        for h in h.iter() {
            let v = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
            if h.key == ID_HEADER {
                id = Some(v);
            } else {
                headers.push((h.key.to_owned(), v));
            }
        }
    }
    headers.sort();
    Some(Stored {
        id: id?,
        partition: m.partition() as u32,
        offset: m.offset(),
        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
        payload: m.payload().unwrap_or_default().to_vec(),
        headers,
        publish_time: m.timestamp().to_millis().unwrap_or_default(),
        delivery: 1,
    })
}
