//! What the Kafka log keeps in PostgreSQL: topics, triggers, cursors, held
//! messages and dead letters. Every function is one statement or runs in
//! the caller's transaction.

use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use crate::error::{Error, Result};
use crate::messages::sqlite::{pairs_json, parse_pairs};
use crate::messages::{DeadRow, Lease, Outcome, Stored, TopicRow, TriggerRow};

pub(super) type Tx = Transaction<'static, Postgres>;

const TOPIC_COLUMNS: &str =
    "name, partitions, retention_s, max_deliveries, owner, publishers, subscribers, create_time";

/// The message columns of `msg_held` and `msg_dead`, `delivery` last.
const MESSAGE_COLUMNS: &str = "id, part, off, key, payload, headers, publish_time, delivery";

const TRIGGER_COLUMNS: &str = "name, id, topic, workflow, header_filter, payload_filter, inputs, \
                               owner, create_time, fired, skipped, last_run_id, last_error";

fn list_json(v: &[String]) -> String {
    serde_json::to_string(v).expect("strings serialize")
}

fn parse_list(s: &str) -> Result<Vec<String>> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("topic access list: {e}")))
}

fn topic_row(r: &PgRow) -> Result<TopicRow> {
    Ok(TopicRow {
        name: r.try_get(0)?,
        partitions: r.try_get::<i32, _>(1)? as u32,
        retention_s: r.try_get::<i64, _>(2)? as u64,
        max_deliveries: r.try_get::<i32, _>(3)? as u32,
        owner: r.try_get(4)?,
        publishers: parse_list(r.try_get(5)?)?,
        subscribers: parse_list(r.try_get(6)?)?,
        create_time: r.try_get(7)?,
    })
}

/// A message from [`MESSAGE_COLUMNS`] starting at column `at`.
fn stored(r: &PgRow, at: usize) -> Result<Stored> {
    Ok(Stored {
        id: r.try_get(at)?,
        partition: r.try_get::<i32, _>(at + 1)? as u32,
        offset: r.try_get(at + 2)?,
        key: r.try_get(at + 3)?,
        payload: r.try_get(at + 4)?,
        headers: parse_pairs(r.try_get(at + 5)?)?,
        publish_time: r.try_get(at + 6)?,
        delivery: r.try_get::<i32, _>(at + 7)? as u32,
    })
}

fn trigger_row(r: &PgRow) -> Result<TriggerRow> {
    Ok(TriggerRow {
        name: r.try_get(0)?,
        id: r.try_get(1)?,
        topic: r.try_get(2)?,
        workflow: r.try_get(3)?,
        header_filter: parse_pairs(r.try_get(4)?)?,
        payload_filter: parse_pairs(r.try_get(5)?)?,
        inputs: parse_pairs(r.try_get(6)?)?,
        owner: r.try_get(7)?,
        create_time: r.try_get(8)?,
        fired: r.try_get::<i64, _>(9)? as u64,
        skipped: r.try_get::<i64, _>(10)? as u64,
        last_run_id: r.try_get(11)?,
        last_error: r.try_get(12)?,
    })
}

/// False if the name is taken.
pub(super) async fn insert_topic(pool: &PgPool, t: &TopicRow) -> Result<bool> {
    let done = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO msg_topics ({TOPIC_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (name) DO NOTHING"
    )))
    .bind(&t.name)
    .bind(t.partitions as i32)
    .bind(t.retention_s as i64)
    .bind(t.max_deliveries as i32)
    .bind(&t.owner)
    .bind(list_json(&t.publishers))
    .bind(list_json(&t.subscribers))
    .bind(t.create_time)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn get_topic(pool: &PgPool, name: &str) -> Result<Option<TopicRow>> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {TOPIC_COLUMNS} FROM msg_topics WHERE name = $1"
    )))
    .bind(name)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(topic_row).transpose()
}

pub(super) async fn list_topics(pool: &PgPool, after: &str, limit: usize) -> Result<Vec<TopicRow>> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {TOPIC_COLUMNS} FROM msg_topics WHERE name > $1 ORDER BY name LIMIT $2"
    )))
    .bind(after)
    .bind(limit as i64)
    .fetch_all(pool)
    .await?
    .iter()
    .map(topic_row)
    .collect()
}

/// The first place of each id in `ids` that has one.
pub(super) async fn places(
    c: &mut PgConnection,
    topic: &str,
    ids: &[String],
) -> Result<Vec<(String, u32, i64)>> {
    Ok(sqlx::query_as::<_, (String, i32, i64)>(
        "SELECT id, part, off FROM msg_ids WHERE topic = $1 AND id = ANY($2)",
    )
    .bind(topic)
    .bind(ids)
    .fetch_all(c)
    .await?
    .into_iter()
    .map(|(id, p, o)| (id, p as u32, o))
    .collect())
}

/// Claims the first place of each id (an id already placed keeps its
/// place) and returns the first place of every id: one statement.
pub(super) async fn claim(
    c: &mut PgConnection,
    topic: &str,
    ids: &[String],
    parts: &[i32],
    offs: &[i64],
    times: &[i64],
) -> Result<Vec<(String, u32, i64)>> {
    // In id order: concurrent claims of the same ids (a publish and a
    // read, two groups' reads) take their locks in one order. The final
    // SELECT sees `msg_ids` as it was before the INSERT: the two halves
    // are the ids placed now and those placed earlier. An id a concurrent
    // claim committed in between is in neither: it is read again.
    let mut out: Vec<(String, u32, i64)> = sqlx::query_as::<_, (String, i32, i64)>(
        "WITH u AS (
           SELECT * FROM UNNEST($2::text[], $3::int[], $4::bigint[], $5::bigint[])
             AS u(id, part, off, t)),
         ins AS (
           INSERT INTO msg_ids (topic, id, part, off, publish_time)
           SELECT $1, id, part, off, t FROM u ORDER BY id
           ON CONFLICT (topic, id) DO NOTHING RETURNING id, part, off)
         SELECT id, part, off FROM ins
         UNION ALL
         SELECT i.id, i.part, i.off FROM msg_ids i JOIN u ON i.topic = $1 AND i.id = u.id",
    )
    .bind(topic)
    .bind(ids)
    .bind(parts)
    .bind(offs)
    .bind(times)
    .fetch_all(&mut *c)
    .await?
    .into_iter()
    .map(|(id, p, o)| (id, p as u32, o))
    .collect();
    if out.len() < ids.len() {
        let found: std::collections::HashSet<&str> = out.iter().map(|r| r.0.as_str()).collect();
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !found.contains(id.as_str()))
            .cloned()
            .collect();
        let late = places(c, topic, &missing).await?;
        out.extend(late);
    }
    Ok(out)
}

/// The group's cursors, by partition; empty if the group is new.
pub(super) async fn cursors(c: &mut PgConnection, topic: &str, group: &str) -> Result<Vec<i64>> {
    Ok(sqlx::query_as::<_, (i64,)>(
        "SELECT next_offset FROM msg_cursors WHERE topic = $1 AND grp = $2 ORDER BY part",
    )
    .bind(topic)
    .bind(group)
    .fetch_all(c)
    .await?
    .into_iter()
    .map(|(o,)| o)
    .collect())
}

/// Places the group's cursors (one per partition, in order) if it has
/// none; with `replay` always, forgetting what it holds at or after them.
/// Two schedulers joining a new group at once place it once.
pub(super) async fn place(
    tx: &mut Tx,
    topic: &str,
    group: &str,
    at: &[i64],
    replay: bool,
) -> Result<()> {
    let parts: Vec<i32> = (0..at.len() as i32).collect();
    sqlx::query(
        "INSERT INTO msg_cursors (topic, grp, part, next_offset)
         SELECT $1, $2, * FROM UNNEST($3::int[], $4::bigint[])
         ON CONFLICT (topic, grp, part) DO UPDATE SET next_offset = EXCLUDED.next_offset
         WHERE $5",
    )
    .bind(topic)
    .bind(group)
    .bind(&parts)
    .bind(at)
    .bind(replay)
    .execute(&mut **tx)
    .await?;
    if replay {
        sqlx::query(
            "DELETE FROM msg_held h USING msg_cursors c
             WHERE h.topic = $1 AND h.grp = $2 AND c.topic = h.topic AND c.grp = h.grp
               AND c.part = h.part AND h.off >= c.next_offset",
        )
        .bind(topic)
        .bind(group)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Moves the cursors of `parts` from `from` to `to`; returns the
/// partitions that were still at `from` (the others moved on elsewhere).
pub(super) async fn advance(
    tx: &mut Tx,
    topic: &str,
    group: &str,
    parts: &[i32],
    from: &[i64],
    to: &[i64],
) -> Result<Vec<u32>> {
    Ok(sqlx::query_as::<_, (i32,)>(
        "UPDATE msg_cursors c SET next_offset = v.to_off
         FROM UNNEST($3::int[], $4::bigint[], $5::bigint[]) AS v(part, from_off, to_off)
         WHERE c.topic = $1 AND c.grp = $2 AND c.part = v.part AND c.next_offset = v.from_off
         RETURNING c.part",
    )
    .bind(topic)
    .bind(group)
    .bind(parts)
    .bind(from)
    .bind(to)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|(p,)| p as u32)
    .collect())
}

/// Holds freshly read messages for `holder` until `visible_at`; returns
/// the ids it held (not those the group holds already).
pub(super) async fn hold(
    tx: &mut Tx,
    topic: &str,
    group: &str,
    holder: &str,
    visible_at: i64,
    msgs: &[Stored],
) -> Result<std::collections::HashSet<String>> {
    let mut cols = Columns::default();
    for m in msgs {
        cols.push(m);
    }
    let held: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO msg_held (topic, grp, id, part, off, key, payload, headers, publish_time,
                               delivery, holder, visible_at)
         SELECT $1, $2, *, 1, $10, $11 FROM UNNEST($3::text[], $4::int[], $5::bigint[],
             $6::text[], $7::bytea[], $8::text[], $9::bigint[])
         ON CONFLICT (topic, grp, id) DO NOTHING RETURNING id",
    )
    .bind(topic)
    .bind(group)
    .bind(&cols.ids)
    .bind(&cols.parts)
    .bind(&cols.offs)
    .bind(&cols.keys)
    .bind(&cols.payloads)
    .bind(&cols.headers)
    .bind(&cols.times)
    .bind(holder)
    .bind(visible_at)
    .fetch_all(&mut **tx)
    .await?;
    Ok(held.into_iter().map(|(id,)| id).collect())
}

#[derive(Default)]
struct Columns {
    ids: Vec<String>,
    parts: Vec<i32>,
    offs: Vec<i64>,
    keys: Vec<String>,
    payloads: Vec<Vec<u8>>,
    headers: Vec<String>,
    times: Vec<i64>,
}

impl Columns {
    fn push(&mut self, m: &Stored) {
        self.ids.push(m.id.clone());
        self.parts.push(m.partition as i32);
        self.offs.push(m.offset);
        self.keys.push(m.key.clone());
        self.payloads.push(m.payload.clone());
        self.headers.push(pairs_json(&m.headers));
        self.times.push(m.publish_time);
    }
}

/// Takes up to `max` of the group's held messages whose time came: those
/// delivered `max_deliveries` times go to the dead letters, the rest are
/// handed to `holder` until `visible_at`, counting the delivery.
pub(super) async fn redeliver(
    tx: &mut Tx,
    topic: &TopicRow,
    lease: Lease<'_>,
    now: i64,
    visible_at: i64,
    max: usize,
) -> Result<Vec<Stored>> {
    let (group, holder, max_deliveries) = (lease.group, lease.holder, topic.max_deliveries);
    let topic = topic.name.as_str();
    sqlx::query(
        "WITH due AS (
           SELECT id FROM msg_held WHERE topic = $1 AND grp = $2 AND visible_at <= $3
             AND delivery >= $5 ORDER BY visible_at, id LIMIT $4 FOR UPDATE SKIP LOCKED),
         gone AS (
           DELETE FROM msg_held h USING due
           WHERE h.topic = $1 AND h.grp = $2 AND h.id = due.id RETURNING h.*)
         INSERT INTO msg_dead (topic, grp, id, part, off, key, payload, headers, publish_time,
                               delivery, reason, dead_time)
         SELECT topic, grp, id, part, off, key, payload, headers, publish_time, delivery,
                'not acked after ' || delivery || ' deliveries', $3 FROM gone
         ON CONFLICT (topic, grp, id) DO NOTHING",
    )
    .bind(topic)
    .bind(group)
    .bind(now)
    .bind(max as i64)
    .bind(max_deliveries as i32)
    .execute(&mut **tx)
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "WITH due AS (
           SELECT id FROM msg_held WHERE topic = $1 AND grp = $2 AND visible_at <= $3
           ORDER BY visible_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
         UPDATE msg_held h SET delivery = h.delivery + 1, holder = $5, visible_at = $6
         FROM due WHERE h.topic = $1 AND h.grp = $2 AND h.id = due.id
         RETURNING {}",
        prefixed("h.")
    )))
    .bind(topic)
    .bind(group)
    .bind(now)
    .bind(max as i64)
    .bind(holder)
    .bind(visible_at)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| stored(r, 0))
    .collect()
}

fn prefixed(p: &str) -> String {
    MESSAGE_COLUMNS
        .split(", ")
        .map(|c| format!("{p}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) async fn held(
    pool: &PgPool,
    topic: &str,
    group: &str,
    holder: &str,
    now: i64,
) -> Result<usize> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM msg_held
         WHERE topic = $1 AND grp = $2 AND holder = $3 AND visible_at > $4",
    )
    .bind(topic)
    .bind(group)
    .bind(holder)
    .bind(now)
    .fetch_one(pool)
    .await?;
    Ok(n as usize)
}

pub(super) async fn next_redelivery(
    pool: &PgPool,
    topic: &str,
    group: &str,
    holder: Option<&str>,
) -> Result<Option<i64>> {
    let (at,): (Option<i64>,) = sqlx::query_as(
        "SELECT MIN(visible_at) FROM msg_held
         WHERE topic = $1 AND grp = $2 AND ($3::text IS NULL OR holder = $3)",
    )
    .bind(topic)
    .bind(group)
    .bind(holder)
    .fetch_one(pool)
    .await?;
    Ok(at)
}

pub(super) async fn ack(pool: &PgPool, topic: &str, group: &str, ids: &[String]) -> Result<usize> {
    let done = sqlx::query("DELETE FROM msg_held WHERE topic = $1 AND grp = $2 AND id = ANY($3)")
        .bind(topic)
        .bind(group)
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() as usize)
}

/// How many times the held message was delivered, locked; `None` if it is
/// not held.
pub(super) async fn delivery(
    tx: &mut Tx,
    topic: &str,
    group: &str,
    id: &str,
) -> Result<Option<u32>> {
    Ok(sqlx::query_as::<_, (i32,)>(
        "SELECT delivery FROM msg_held WHERE topic = $1 AND grp = $2 AND id = $3 FOR UPDATE",
    )
    .bind(topic)
    .bind(group)
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .map(|(d,)| d as u32))
}

pub(super) async fn postpone(
    tx: &mut Tx,
    topic: &str,
    group: &str,
    id: &str,
    visible_at: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE msg_held SET holder = NULL, visible_at = $4
         WHERE topic = $1 AND grp = $2 AND id = $3",
    )
    .bind(topic)
    .bind(group)
    .bind(id)
    .bind(visible_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves a held message to the dead letters.
pub(super) async fn bury(
    tx: &mut Tx,
    topic: &str,
    group: &str,
    id: &str,
    reason: &str,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "WITH gone AS (
           DELETE FROM msg_held WHERE topic = $1 AND grp = $2 AND id = $3 RETURNING *)
         INSERT INTO msg_dead (topic, grp, id, part, off, key, payload, headers, publish_time,
                               delivery, reason, dead_time)
         SELECT topic, grp, id, part, off, key, payload, headers, publish_time, delivery, $4, $5
         FROM gone
         ON CONFLICT (topic, grp, id) DO UPDATE SET reason = EXCLUDED.reason,
           delivery = EXCLUDED.delivery, dead_time = EXCLUDED.dead_time",
    )
    .bind(topic)
    .bind(group)
    .bind(id)
    .bind(reason)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn release(
    pool: &PgPool,
    topic: &str,
    group: &str,
    holder: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE msg_held SET holder = NULL, visible_at = LEAST(visible_at, $4)
         WHERE topic = $1 AND grp = $2 AND holder = $3",
    )
    .bind(topic)
    .bind(group)
    .bind(holder)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn dead_letters(
    pool: &PgPool,
    topic: &str,
    group: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<DeadRow>> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT grp, reason, dead_time, seq, {MESSAGE_COLUMNS} FROM msg_dead
         WHERE topic = $1 AND ($2 = '' OR grp = $2) AND seq > $3 ORDER BY seq LIMIT $4"
    )))
    .bind(topic)
    .bind(group)
    .bind(after)
    .bind(limit as i64)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(DeadRow {
            group: r.try_get(0)?,
            reason: r.try_get(1)?,
            dead_time: r.try_get(2)?,
            seq: r.try_get(3)?,
            message: stored(r, 4)?,
        })
    })
    .collect()
}

/// Makes a dead letter held again, deliverable now, counting from 1.
pub(super) async fn requeue(
    pool: &PgPool,
    topic: &str,
    group: &str,
    id: &str,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "WITH back AS (
           DELETE FROM msg_dead WHERE topic = $1 AND grp = $2 AND id = $3 RETURNING *)
         INSERT INTO msg_held (topic, grp, id, part, off, key, payload, headers, publish_time,
                               delivery, holder, visible_at)
         SELECT topic, grp, id, part, off, key, payload, headers, publish_time, 0, NULL, $4
         FROM back
         ON CONFLICT (topic, grp, id) DO UPDATE SET delivery = 0, holder = NULL, visible_at = $4",
    )
    .bind(topic)
    .bind(group)
    .bind(id)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// False if the name is taken.
pub(super) async fn insert_trigger(tx: &mut Tx, t: &TriggerRow) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO msg_triggers (name, id, topic, workflow, header_filter, payload_filter,
                                   inputs, owner, create_time)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&t.name)
    .bind(&t.id)
    .bind(&t.topic)
    .bind(&t.workflow)
    .bind(pairs_json(&t.header_filter))
    .bind(pairs_json(&t.payload_filter))
    .bind(pairs_json(&t.inputs))
    .bind(&t.owner)
    .bind(t.create_time)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn get_trigger(pool: &PgPool, name: &str) -> Result<Option<TriggerRow>> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {TRIGGER_COLUMNS} FROM msg_triggers WHERE name = $1"
    )))
    .bind(name)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(trigger_row).transpose()
}

pub(super) async fn list_triggers(
    pool: &PgPool,
    topic: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<TriggerRow>> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {TRIGGER_COLUMNS} FROM msg_triggers WHERE ($1 = '' OR topic = $1) AND name > $2
         ORDER BY name LIMIT $3"
    )))
    .bind(topic)
    .bind(after)
    .bind(limit as i64)
    .fetch_all(pool)
    .await?
    .iter()
    .map(trigger_row)
    .collect()
}

/// Deletes the trigger created as `id` and forgets its group.
pub(super) async fn delete_trigger(pool: &PgPool, name: &str, id: &str) -> Result<bool> {
    let mut tx = pool.begin().await?;
    let topic: Option<(String,)> =
        sqlx::query_as("DELETE FROM msg_triggers WHERE name = $1 AND id = $2 RETURNING topic")
            .bind(name)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((topic,)) = topic else {
        return Ok(false);
    };
    let group = format!("trigger.{name}.{id}");
    for table in ["msg_cursors", "msg_held", "msg_dead"] {
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE topic = $1 AND grp = $2"
        )))
        .bind(&topic)
        .bind(&group)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn record(pool: &PgPool, name: &str, id: &str, o: &Outcome) -> Result<()> {
    let q = match o {
        Outcome::Fired { run_id } => sqlx::query(
            "UPDATE msg_triggers SET fired = fired + 1, last_run_id = $3, last_error = ''
             WHERE name = $1 AND id = $2",
        )
        .bind(name)
        .bind(id)
        .bind(run_id),
        Outcome::Repeated => return Ok(()),
        Outcome::Skipped => {
            sqlx::query("UPDATE msg_triggers SET skipped = skipped + 1 WHERE name = $1 AND id = $2")
                .bind(name)
                .bind(id)
        }
        Outcome::Failed { error } => {
            sqlx::query("UPDATE msg_triggers SET last_error = $3 WHERE name = $1 AND id = $2")
                .bind(name)
                .bind(id)
                .bind(error)
        }
    };
    q.execute(pool).await?;
    Ok(())
}

/// Forgets the ids of messages past their topic's retention (Kafka drops
/// the messages themselves); returns how many.
pub(super) async fn expire(pool: &PgPool, now: i64) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM msg_ids i USING msg_topics t
         WHERE t.name = i.topic AND i.publish_time < $1 - t.retention_s * 1000",
    )
    .bind(now)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Per partition, the first offset published at or after `t` (ms).
pub(super) async fn first_since(
    pool: &PgPool,
    topic: &str,
    t: i64,
) -> Result<std::collections::HashMap<u32, i64>> {
    Ok(sqlx::query_as::<_, (i32, i64)>(
        "SELECT part, MIN(off) FROM msg_ids WHERE topic = $1 AND publish_time >= $2 GROUP BY part",
    )
    .bind(topic)
    .bind(t)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(p, o)| (p as u32, o))
    .collect())
}
