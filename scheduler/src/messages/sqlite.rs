//! The message log in SQLite, for `devcycle up`: its own file (WAL,
//! `synchronous=NORMAL`, like the scheduler's), one connection on one
//! thread, so every operation is a transaction with no writer to wait for.
//!
//! A group reads each partition from its cursor; what it was handed and has
//! not acked is a `held` row with a visibility time (the ack deadline, or
//! the end of a nack's delay). Ack deletes the row, dead-lettering moves it
//! to `dead`. Nothing else removes a message from a group.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{
    DeadRow, Lease, MessageLog, NewMessage, Outcome, Placed, Start, Stored, TopicRow, TriggerRow,
};
use crate::error::{Error, Result};
use crate::store::sqlite::conn::{Worker, all, first, open, spawn_checkpointer};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (
  name TEXT PRIMARY KEY, partitions INTEGER NOT NULL, retention_s INTEGER NOT NULL,
  max_deliveries INTEGER NOT NULL, owner TEXT NOT NULL, publishers TEXT NOT NULL,
  subscribers TEXT NOT NULL, create_time INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
  topic TEXT NOT NULL, part INTEGER NOT NULL, next_offset INTEGER NOT NULL,
  PRIMARY KEY (topic, part)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
  seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL,
  id TEXT NOT NULL, key TEXT NOT NULL, payload BLOB NOT NULL, headers TEXT NOT NULL,
  publish_time INTEGER NOT NULL,
  UNIQUE (topic, id), UNIQUE (topic, part, off));
CREATE INDEX IF NOT EXISTS messages_time ON messages (topic, publish_time);
CREATE TABLE IF NOT EXISTS cursors (
  topic TEXT NOT NULL, grp TEXT NOT NULL, part INTEGER NOT NULL, next_offset INTEGER NOT NULL,
  PRIMARY KEY (topic, grp, part)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS held (
  topic TEXT NOT NULL, grp TEXT NOT NULL, seq INTEGER NOT NULL, delivery INTEGER NOT NULL,
  holder TEXT, visible_at INTEGER NOT NULL,
  PRIMARY KEY (topic, grp, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS held_visible ON held (topic, grp, visible_at);
CREATE INDEX IF NOT EXISTS held_holder ON held (holder, visible_at) WHERE holder IS NOT NULL;
CREATE INDEX IF NOT EXISTS held_seq ON held (topic, seq);
CREATE TABLE IF NOT EXISTS dead (
  topic TEXT NOT NULL, grp TEXT NOT NULL, seq INTEGER NOT NULL, delivery INTEGER NOT NULL,
  reason TEXT NOT NULL, dead_time INTEGER NOT NULL,
  PRIMARY KEY (topic, grp, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dead_seq ON dead (topic, seq);
CREATE TABLE IF NOT EXISTS triggers (
  name TEXT PRIMARY KEY, id TEXT NOT NULL, topic TEXT NOT NULL, workflow TEXT NOT NULL,
  header_filter TEXT NOT NULL, payload_filter TEXT NOT NULL, inputs TEXT NOT NULL,
  owner TEXT NOT NULL, create_time INTEGER NOT NULL, fired INTEGER NOT NULL DEFAULT 0,
  skipped INTEGER NOT NULL DEFAULT 0, last_run_id TEXT NOT NULL DEFAULT '',
  last_error TEXT NOT NULL DEFAULT '');
PRAGMA user_version = 1;
";

mod triggers;

const MESSAGE_COLUMNS: &str = "m.id, m.part, m.off, m.key, m.payload, m.headers, m.publish_time";

pub struct SqliteLog {
    worker: Worker,
    /// Stops the checkpoint thread.
    stop: Arc<AtomicBool>,
    /// Partitions for messages without a key, in turn.
    next_unkeyed: AtomicU32,
}

impl SqliteLog {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = open(path)?;
        conn.execute_batch(SCHEMA)?;
        // Holders are subscriber streams of this process: any left from a
        // previous one are gone, and what they held is deliverable now.
        conn.execute(
            "UPDATE held SET holder = NULL, visible_at = MIN(visible_at, ?1) WHERE holder IS NOT NULL",
            [now()],
        )?;
        drop(conn);
        // As for the scheduler's file: checkpoints on their own thread, so
        // that no commit pays for one.
        let stop = Arc::new(AtomicBool::new(false));
        spawn_checkpointer(path, Arc::clone(&stop))?;
        let worker = Worker::spawn_with("messages-sqlite", path, |c| {
            Ok(c.pragma_update(None, "wal_autocheckpoint", 0)?)
        })?;
        Ok(Self {
            worker,
            stop,
            next_unkeyed: AtomicU32::new(0),
        })
    }

    async fn tx<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.worker
            .run(move |conn: &mut Connection| {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let out = f(&tx)?;
                tx.commit()?;
                Ok(out)
            })
            .await
    }
}

impl Drop for SqliteLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn now() -> i64 {
    devcycle::time::now_ms()
}

/// A message's partition: by its key's hash, so one key keeps one order.
fn partition_of(key: &str, partitions: u32, unkeyed: &AtomicU32) -> u32 {
    if key.is_empty() {
        return unkeyed.fetch_add(1, Ordering::Relaxed) % partitions;
    }
    // FNV-1a: stable across processes and releases.
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % u64::from(partitions)) as u32
}

pub(super) fn pairs_json(h: &[(String, String)]) -> String {
    let m: serde_json::Map<String, serde_json::Value> = h
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(m).to_string()
}

pub(super) fn parse_pairs(s: &str) -> Result<Vec<(String, String)>> {
    let m: std::collections::BTreeMap<String, String> =
        serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("stored pairs: {e}")))?;
    Ok(m.into_iter().collect())
}

fn list_json(v: &[String]) -> String {
    serde_json::to_string(v).expect("strings serialize")
}

fn parse_list(s: &str) -> Result<Vec<String>> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("topic access list: {e}")))
}

fn topic_row(r: &rusqlite::Row<'_>) -> Result<TopicRow> {
    Ok(TopicRow {
        name: r.get(0)?,
        partitions: r.get(1)?,
        retention_s: r.get::<_, i64>(2)? as u64,
        max_deliveries: r.get(3)?,
        owner: r.get(4)?,
        publishers: parse_list(&r.get::<_, String>(5)?)?,
        subscribers: parse_list(&r.get::<_, String>(6)?)?,
        create_time: r.get(7)?,
    })
}

/// A message from [`MESSAGE_COLUMNS`] at column `at`, delivered `delivery` times.
fn stored(r: &rusqlite::Row<'_>, at: usize, delivery: u32) -> Result<Stored> {
    Ok(Stored {
        id: r.get(at)?,
        partition: r.get(at + 1)?,
        offset: r.get(at + 2)?,
        key: r.get(at + 3)?,
        payload: r.get(at + 4)?,
        headers: parse_pairs(&r.get::<_, String>(at + 5)?)?,
        publish_time: r.get(at + 6)?,
        delivery,
    })
}

const TOPIC_COLUMNS: &str =
    "name, partitions, retention_s, max_deliveries, owner, publishers, subscribers, create_time";

fn seq_of(tx: &Transaction<'_>, topic: &str, id: &str) -> Result<Option<i64>> {
    Ok(tx
        .prepare_cached("SELECT seq FROM messages WHERE topic = ?1 AND id = ?2")?
        .query_row(params![topic, id], |r| r.get(0))
        .optional()?)
}

fn bury(
    tx: &Transaction<'_>,
    topic: &str,
    group: &str,
    seq: i64,
    delivery: u32,
    reason: &str,
) -> Result<()> {
    tx.prepare_cached("DELETE FROM held WHERE topic = ?1 AND grp = ?2 AND seq = ?3")?
        .execute(params![topic, group, seq])?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO dead (topic, grp, seq, delivery, reason, dead_time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![topic, group, seq, delivery, reason, now()])?;
    Ok(())
}

/// Up to `max` messages the group has not read, in publish order: each
/// partition with a backlog is read from its cursor along its index, and
/// the heads are merged, so a group far behind costs no more than one
/// that is caught up.
fn unread(tx: &Transaction<'_>, name: &str, group: &str, max: usize) -> Result<Vec<(i64, Stored)>> {
    let behind: Vec<(u32, i64)> = all(
        tx,
        "SELECT c.part, c.next_offset FROM cursors c
         JOIN partitions p ON p.topic = c.topic AND p.part = c.part
         WHERE c.topic = ?1 AND c.grp = ?2 AND c.next_offset < p.next_offset",
        params![name, group],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut out = Vec::new();
    for (part, from) in behind {
        out.extend(all(
            tx,
            &format!(
                "SELECT m.seq, {MESSAGE_COLUMNS} FROM messages m
                 WHERE m.topic = ?1 AND m.part = ?2 AND m.off >= ?3 ORDER BY m.off LIMIT ?4"
            ),
            params![name, part, from, max as i64],
            |r| Ok((r.get(0)?, stored(r, 1, 1)?)),
        )?);
    }
    out.sort_by_key(|(seq, _)| *seq);
    out.truncate(max);
    Ok(out)
}

/// Places `group`'s cursors where `start` says, if it is new or `replay`.
fn join(tx: &Transaction<'_>, name: &str, group: &str, start: Start, replay: bool) -> Result<()> {
    let known: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM cursors WHERE topic = ?1 AND grp = ?2)")?
        .query_row(params![name, group], |r| r.get(0))?;
    if known && !replay {
        return Ok(());
    }
    let parts: Vec<(u32, i64)> = all(
        tx,
        "SELECT part, next_offset FROM partitions WHERE topic = ?1 ORDER BY part",
        [name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    for (part, end) in parts {
        let from = match start {
            Start::Earliest => 0,
            Start::Latest => end,
            Start::Offset(o) => o.min(end),
            Start::Time(t) => tx
                .prepare_cached(
                    "SELECT MIN(off) FROM messages
                     WHERE topic = ?1 AND part = ?2 AND publish_time >= ?3",
                )?
                .query_row(params![name, part, t], |r| r.get::<_, Option<i64>>(0))?
                .unwrap_or(end),
        };
        tx.prepare_cached(
            "INSERT OR REPLACE INTO cursors (topic, grp, part, next_offset)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![name, group, part, from])?;
    }
    if replay {
        // What the replay delivers again is no longer held; what lies
        // before the new position stays held, to be acked or redelivered.
        tx.prepare_cached(
            "DELETE FROM held WHERE topic = ?1 AND grp = ?2 AND seq IN (
               SELECT h.seq FROM held h
               JOIN messages m ON m.seq = h.seq
               JOIN cursors c ON c.topic = h.topic AND c.grp = h.grp AND c.part = m.part
               WHERE h.topic = ?1 AND h.grp = ?2 AND m.off >= c.next_offset)",
        )?
        .execute(params![name, group])?;
    }
    Ok(())
}

#[async_trait]
impl MessageLog for SqliteLog {
    async fn create_topic(&self, t: TopicRow) -> Result<TopicRow> {
        self.tx(move |tx| {
            let inserted = tx.execute(
                &format!(
                    "INSERT INTO topics ({TOPIC_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (name) DO NOTHING"
                ),
                params![
                    t.name,
                    t.partitions,
                    t.retention_s as i64,
                    t.max_deliveries,
                    t.owner,
                    list_json(&t.publishers),
                    list_json(&t.subscribers),
                    t.create_time
                ],
            )?;
            if inserted == 0 {
                return Err(Error::AlreadyExists(format!(
                    "topic {} already exists",
                    t.name
                )));
            }
            for p in 0..t.partitions {
                tx.execute(
                    "INSERT INTO partitions (topic, part, next_offset) VALUES (?1, ?2, 0)",
                    params![t.name, p],
                )?;
            }
            Ok(t)
        })
        .await
    }

    async fn get_topic(&self, name: &str) -> Result<Option<TopicRow>> {
        let name = name.to_owned();
        self.worker
            .run(move |c| {
                first(
                    c,
                    &format!("SELECT {TOPIC_COLUMNS} FROM topics WHERE name = ?1"),
                    [name],
                    topic_row,
                )
            })
            .await
    }

    async fn list_topics(&self, after: &str, limit: usize) -> Result<Vec<TopicRow>> {
        let after = after.to_owned();
        self.worker
            .run(move |c| {
                all(
                    c,
                    &format!(
                        "SELECT {TOPIC_COLUMNS} FROM topics WHERE name > ?1 ORDER BY name LIMIT ?2"
                    ),
                    params![after, limit as i64],
                    topic_row,
                )
            })
            .await
    }

    async fn publish(&self, topic: &TopicRow, msgs: Vec<NewMessage>) -> Result<Vec<Placed>> {
        let parts: Vec<u32> = msgs
            .iter()
            .map(|m| partition_of(&m.key, topic.partitions, &self.next_unkeyed))
            .collect();
        let name = topic.name.clone();
        self.tx(move |tx| {
            let at = now();
            let mut out = Vec::with_capacity(msgs.len());
            for (m, part) in msgs.into_iter().zip(parts) {
                let earlier = tx
                    .prepare_cached("SELECT part, off FROM messages WHERE topic = ?1 AND id = ?2")?
                    .query_row(params![name, m.id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((partition, offset)) = earlier {
                    out.push(Placed {
                        partition,
                        offset,
                        duplicate: true,
                    });
                    continue;
                }
                let offset: i64 = tx
                    .prepare_cached(
                        "UPDATE partitions SET next_offset = next_offset + 1
                         WHERE topic = ?1 AND part = ?2 RETURNING next_offset - 1",
                    )?
                    .query_row(params![name, part], |r| r.get(0))?;
                tx.prepare_cached(
                    "INSERT INTO messages (topic, part, off, id, key, payload, headers, publish_time)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    name,
                    part,
                    offset,
                    m.id,
                    m.key,
                    m.payload,
                    pairs_json(&m.headers),
                    at
                ])?;
                out.push(Placed {
                    partition: part,
                    offset,
                    duplicate: false,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn join(&self, topic: &TopicRow, group: &str, start: Start, replay: bool) -> Result<()> {
        let (name, group) = (topic.name.clone(), group.to_owned());
        self.tx(move |tx| join(tx, &name, &group, start, replay))
            .await
    }

    async fn deliver(&self, topic: &TopicRow, lease: Lease<'_>, max: usize) -> Result<Vec<Stored>> {
        let (name, group, holder) = (
            topic.name.clone(),
            lease.group.to_owned(),
            lease.holder.to_owned(),
        );
        let (max_deliveries, deadline_ms) = (topic.max_deliveries, lease.deadline_ms);
        self.tx(move |tx| {
            let at = now();
            let visible = at + deadline_ms;
            let mut out = Vec::new();
            // Held messages whose time came: redelivered, or dead.
            let due: Vec<(i64, u32)> = all(
                tx,
                "SELECT seq, delivery FROM held WHERE topic = ?1 AND grp = ?2 AND visible_at <= ?3
                 ORDER BY visible_at, seq LIMIT ?4",
                params![name, group, at, max as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            for (seq, delivery) in due {
                if delivery >= max_deliveries {
                    let reason = format!("not acked after {delivery} deliveries");
                    bury(tx, &name, &group, seq, delivery, &reason)?;
                    continue;
                }
                tx.prepare_cached(
                    "UPDATE held SET delivery = ?4, holder = ?5, visible_at = ?6
                     WHERE topic = ?1 AND grp = ?2 AND seq = ?3",
                )?
                .execute(params![
                    name,
                    group,
                    seq,
                    delivery + 1,
                    holder,
                    visible
                ])?;
                let m = first(
                    tx,
                    &format!("SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.seq = ?1"),
                    [seq],
                    |r| stored(r, 0, delivery + 1),
                )?
                .ok_or_else(|| Error::Corrupt(format!("held message {seq} is gone")))?;
                out.push(m);
            }
            let room = max.saturating_sub(out.len());
            if room == 0 {
                return Ok(out);
            }
            let fresh = unread(tx, &name, &group, room)?;
            for (seq, m) in fresh {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO held (topic, grp, seq, delivery, holder, visible_at)
                     VALUES (?1, ?2, ?3, 1, ?4, ?5)",
                )?
                .execute(params![name, group, seq, holder, visible])?;
                tx.prepare_cached(
                    "UPDATE cursors SET next_offset = MAX(next_offset, ?4)
                     WHERE topic = ?1 AND grp = ?2 AND part = ?3",
                )?
                .execute(params![name, group, m.partition, m.offset + 1])?;
                out.push(m);
            }
            Ok(out)
        })
        .await
    }

    async fn held(&self, topic: &str, group: &str, holder: &str) -> Result<usize> {
        let args = (topic.to_owned(), group.to_owned(), holder.to_owned());
        self.worker
            .run(move |c| {
                let n: i64 = c
                    .prepare_cached(
                        "SELECT COUNT(*) FROM held
                         WHERE holder = ?3 AND visible_at > ?4 AND topic = ?1 AND grp = ?2",
                    )?
                    .query_row(params![args.0, args.1, args.2, now()], |r| r.get(0))?;
                Ok(n as usize)
            })
            .await
    }

    async fn next_redelivery(
        &self,
        topic: &str,
        group: &str,
        holder: Option<&str>,
    ) -> Result<Option<i64>> {
        let args = (
            topic.to_owned(),
            group.to_owned(),
            holder.map(str::to_owned),
        );
        self.worker
            .run(move |c| {
                let (topic, group, holder) = args;
                Ok(match holder {
                    None => c
                        .prepare_cached(
                            "SELECT MIN(visible_at) FROM held WHERE topic = ?1 AND grp = ?2",
                        )?
                        .query_row(params![topic, group], |r| r.get(0))?,
                    Some(h) => c
                        .prepare_cached(
                            "SELECT MIN(visible_at) FROM held
                             WHERE holder = ?3 AND topic = ?1 AND grp = ?2",
                        )?
                        .query_row(params![topic, group, h], |r| r.get(0))?,
                })
            })
            .await
    }

    async fn ack(&self, topic: &str, group: &str, ids: &[String]) -> Result<usize> {
        let (topic, group, ids) = (topic.to_owned(), group.to_owned(), ids.to_vec());
        self.tx(move |tx| {
            let mut n = 0;
            for id in ids {
                let Some(seq) = seq_of(tx, &topic, &id)? else {
                    continue;
                };
                n += tx
                    .prepare_cached("DELETE FROM held WHERE topic = ?1 AND grp = ?2 AND seq = ?3")?
                    .execute(params![topic, group, seq])?;
            }
            Ok(n)
        })
        .await
    }

    async fn nack(
        &self,
        topic: &TopicRow,
        group: &str,
        id: &str,
        delay_ms: i64,
        reason: &str,
    ) -> Result<bool> {
        let (name, group, id, reason) = (
            topic.name.clone(),
            group.to_owned(),
            id.to_owned(),
            reason.to_owned(),
        );
        let max_deliveries = topic.max_deliveries;
        self.tx(move |tx| {
            let Some(seq) = seq_of(tx, &name, &id)? else {
                return Ok(false);
            };
            let delivery: Option<u32> = tx
                .prepare_cached(
                    "SELECT delivery FROM held WHERE topic = ?1 AND grp = ?2 AND seq = ?3",
                )?
                .query_row(params![name, group, seq], |r| r.get(0))
                .optional()?;
            let Some(delivery) = delivery else {
                return Ok(false);
            };
            if delivery >= max_deliveries {
                let why = super::nack_reason(delivery, &reason);
                bury(tx, &name, &group, seq, delivery, &why)?;
            } else {
                tx.prepare_cached(
                    "UPDATE held SET holder = NULL, visible_at = ?4
                     WHERE topic = ?1 AND grp = ?2 AND seq = ?3",
                )?
                .execute(params![name, group, seq, now() + delay_ms])?;
            }
            Ok(true)
        })
        .await
    }

    async fn release(&self, topic: &str, group: &str, holder: &str) -> Result<()> {
        let args = (topic.to_owned(), group.to_owned(), holder.to_owned());
        self.tx(move |tx| {
            tx.prepare_cached(
                "UPDATE held SET holder = NULL, visible_at = MIN(visible_at, ?4)
                 WHERE topic = ?1 AND grp = ?2 AND holder = ?3",
            )?
            .execute(params![args.0, args.1, args.2, now()])?;
            Ok(())
        })
        .await
    }

    async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<DeadRow>> {
        let (after, after_group) = super::dead_page(after)?;
        let (topic, group) = (topic.to_owned(), group.to_owned());
        self.worker
            .run(move |c| {
                all(
                    c,
                    &format!(
                        "SELECT d.grp, d.reason, d.dead_time, d.delivery, d.seq, {MESSAGE_COLUMNS}
                         FROM dead d JOIN messages m ON m.seq = d.seq
                         WHERE d.topic = ?1 AND (?2 = '' OR d.grp = ?2)
                           AND (d.seq, d.grp) > (?3, ?5)
                         ORDER BY d.seq, d.grp LIMIT ?4"
                    ),
                    params![topic, group, after, limit as i64, after_group],
                    |r| {
                        Ok(DeadRow {
                            group: r.get(0)?,
                            reason: r.get(1)?,
                            dead_time: r.get(2)?,
                            seq: r.get(4)?,
                            message: stored(r, 5, r.get(3)?)?,
                        })
                    },
                )
            })
            .await
    }

    async fn requeue(&self, topic: &str, group: &str, id: &str) -> Result<bool> {
        let (topic, group, id) = (topic.to_owned(), group.to_owned(), id.to_owned());
        self.tx(move |tx| {
            let Some(seq) = seq_of(tx, &topic, &id)? else {
                return Ok(false);
            };
            let gone = tx
                .prepare_cached("DELETE FROM dead WHERE topic = ?1 AND grp = ?2 AND seq = ?3")?
                .execute(params![topic, group, seq])?;
            if gone == 0 {
                return Ok(false);
            }
            tx.prepare_cached(
                "INSERT OR REPLACE INTO held (topic, grp, seq, delivery, holder, visible_at)
                 VALUES (?1, ?2, ?3, 0, NULL, ?4)",
            )?
            .execute(params![topic, group, seq, now()])?;
            Ok(true)
        })
        .await
    }

    async fn bury(&self, topic: &str, group: &str, id: &str, reason: &str) -> Result<bool> {
        let args = (
            topic.to_owned(),
            group.to_owned(),
            id.to_owned(),
            reason.to_owned(),
        );
        self.tx(move |tx| {
            let (topic, group, id, reason) = &args;
            let Some(seq) = seq_of(tx, topic, id)? else {
                return Ok(false);
            };
            let delivery: Option<u32> = tx
                .prepare_cached(
                    "SELECT delivery FROM held WHERE topic = ?1 AND grp = ?2 AND seq = ?3",
                )?
                .query_row(params![topic, group, seq], |r| r.get(0))
                .optional()?;
            let Some(delivery) = delivery else {
                return Ok(false);
            };
            bury(tx, topic, group, seq, delivery, reason)?;
            Ok(true)
        })
        .await
    }

    async fn create_trigger(&self, t: TriggerRow) -> Result<TriggerRow> {
        self.tx(move |tx| {
            triggers::insert(tx, &t)?;
            join(tx, &t.topic, &t.group(), Start::Latest, false)?;
            Ok(t)
        })
        .await
    }

    async fn get_trigger(&self, name: &str) -> Result<Option<TriggerRow>> {
        let name = name.to_owned();
        self.worker.run(move |c| triggers::get(c, &name)).await
    }

    async fn list_triggers(
        &self,
        topic: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<TriggerRow>> {
        let (topic, after) = (topic.to_owned(), after.to_owned());
        self.worker
            .run(move |c| triggers::list(c, &topic, &after, limit))
            .await
    }

    async fn delete_trigger(&self, name: &str, id: &str) -> Result<bool> {
        let (name, id) = (name.to_owned(), id.to_owned());
        self.tx(move |tx| triggers::delete(tx, &name, &id)).await
    }

    async fn record(&self, name: &str, id: &str, outcome: &Outcome) -> Result<()> {
        let (name, id, outcome) = (name.to_owned(), id.to_owned(), outcome.clone());
        self.tx(move |tx| triggers::record(tx, &name, &id, &outcome))
            .await
    }

    async fn expire(&self, now_ms: i64) -> Result<u64> {
        self.tx(move |tx| {
            let n = tx.execute(
                "DELETE FROM messages WHERE seq IN (
                   SELECT m.seq FROM messages m JOIN topics t ON t.name = m.topic
                   WHERE m.publish_time < ?1 - t.retention_s * 1000
                     AND NOT EXISTS (SELECT 1 FROM held h WHERE h.topic = m.topic AND h.seq = m.seq)
                     AND NOT EXISTS (SELECT 1 FROM dead d WHERE d.topic = m.topic AND d.seq = m.seq))",
                [now_ms],
            )?;
            Ok(n as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_partition() {
        let n = AtomicU32::new(0);
        let p = partition_of("order-7", 8, &n);
        assert!((0..20).all(|_| partition_of("order-7", 8, &n) == p));
        let spread: std::collections::HashSet<u32> = (0..64)
            .map(|i| partition_of(&format!("k{i}"), 8, &n))
            .collect();
        assert!(spread.len() > 4, "keys spread over partitions: {spread:?}");
        let unkeyed: Vec<u32> = (0..4).map(|_| partition_of("", 4, &n)).collect();
        assert_eq!(unkeyed, vec![0, 1, 2, 3]);
    }
}
