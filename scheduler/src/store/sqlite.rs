//! The scheduler on SQLite. The engine — the writer on the hot path — runs
//! each batch on the write connection itself, on its own thread: a batch
//! costs no thread hop however many statements it runs. Rare writes from
//! elsewhere (workflow definitions, rate limits, the outbox relay) take the
//! same connection through `block_in_place`, so that waiting for a batch to
//! finish does not stall their runtime thread. Reads go to a reader thread. WAL with `synchronous=NORMAL` (see docs/design.md for what
//! that keeps); checkpoints run on their own thread so that commits never
//! pay for them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::{mpsc, oneshot};

use super::rows::*;
use super::{Applied, Batch, SchedulerStore, TxOps, apply_batch};
use crate::error::{Error, Result};
use crate::model::*;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A thread owning one connection, running jobs in order.
struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Worker {
    fn spawn(name: &str, path: &Path) -> Result<Self> {
        let mut conn = open(path)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| Error::Unavailable(format!("cannot start the {name} thread: {e}")))?;
        Ok(Self { jobs: tx })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }
}

fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "normal")?;
    conn.pragma_update(None, "foreign_keys", "on")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

pub struct SqliteStore {
    /// The write connection and the next event id, owned together.
    writer: Arc<Mutex<(Connection, i64)>>,
    reader: Worker,
    /// Events wait for the relay (`published = 0`) only with an outbox.
    outbox: bool,
    /// Whether any agent has a rate limit: claims skip the lookup if not.
    rate_limited: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Moves WAL pages into the database every half second, so that the WAL
/// stays small and no commit has to.
fn spawn_checkpointer(path: &Path, stop: Arc<AtomicBool>) -> Result<()> {
    let conn = open(path)?;
    std::thread::Builder::new()
        .name("sched-sqlite-checkpoint".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "sqlite checkpoint failed");
                }
            }
        })
        .map_err(|e| Error::Unavailable(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(())
}

impl SqliteStore {
    /// Opens the database file the migrations were applied to. With
    /// `outbox`, events are left for the relay to publish.
    pub fn open(path: impl Into<PathBuf>, outbox: bool) -> Result<Self> {
        let path = path.into();
        let writer = open(&path)?;
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        writer.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        let limited: bool =
            writer.query_row("SELECT EXISTS (SELECT 1 FROM sched_rate_limits)", [], |r| {
                r.get(0)
            })?;
        let next_event: i64 = writer.query_row(
            "SELECT COALESCE(MAX(id), 0) + 1 FROM sched_events",
            [],
            |r| r.get(0),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        spawn_checkpointer(&path, Arc::clone(&stop))?;
        Ok(Self {
            writer: Arc::new(Mutex::new((writer, next_event))),
            reader: Worker::spawn("sched-sqlite-reader", &path)?,
            outbox,
            rate_limited: Arc::new(AtomicBool::new(limited)),
            stop,
        })
    }

    /// Runs `f` on the write connection, on this thread: the engine is the
    /// writer, and a hop to another thread would cost more than the batch.
    fn write<T>(&self, f: impl FnOnce(&mut Connection, &mut i64) -> Result<T>) -> Result<T> {
        let mut w = self.writer.lock();
        let (conn, next) = &mut *w;
        f(conn, next)
    }

    /// [`Self::write`] for callers other than the engine: they may wait for
    /// the engine's batch, and must not hold a runtime thread while they do.
    fn write_aside<T>(&self, f: impl FnOnce(&mut Connection, &mut i64) -> Result<T>) -> Result<T> {
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| self.write(f))
            }
            _ => self.write(f),
        }
    }
}

struct SqliteTx<'c> {
    conn: &'c Connection,
    outbox: bool,
    rate_limited: bool,
    /// The id the next event gets: the writer's commit order.
    next_event: &'c mut i64,
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).expect("strings serialize")
}

fn task_record(r: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    Ok(TaskRecord {
        id: r.get(0)?,
        run_id: r.get(1)?,
        key: r.get(2)?,
        agent: r.get(3)?,
        agent_version: r.get(4)?,
        state: r.get(5)?,
        attempt: r.get(6)?,
        priority: r.get(7)?,
        input: r.get(8)?,
        output: r.get(9)?,
        error: r.get(10)?,
        deps_pending: r.get(11)?,
        depends_on: r.get(12)?,
        dependents: r.get(13)?,
        retry: r.get(14)?,
        timeouts: r.get(15)?,
        concurrency_key: r.get(16)?,
        concurrency_limit: r.get(17)?,
        ready_at: r.get(18)?,
        lease_id: r.get(19)?,
        lease_expires: r.get(20)?,
        attempt_deadline: r.get(21)?,
        schedule_deadline: r.get(22)?,
        worker_id: r.get(23)?,
        create_time: r.get(24)?,
        start_time: r.get(25)?,
        end_time: r.get(26)?,
        rev: r.get(27)?,
    })
}

fn run_record(r: &Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: r.get(0)?,
        workflow: r.get(1)?,
        workflow_revision: r.get(2)?,
        state: r.get(3)?,
        inputs: r.get(4)?,
        idempotency_key: r.get(5)?,
        created_by: r.get(6)?,
        failure_policy: r.get(7)?,
        create_time: r.get(8)?,
        end_time: r.get(9)?,
        last_seq: r.get(10)?,
        rev: r.get(11)?,
    })
}

fn event_record(r: &Row<'_>) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        id: r.get(0)?,
        event_id: r.get(1)?,
        run_id: r.get(2)?,
        seq: r.get(3)?,
        kind: r.get(4)?,
        task_id: r.get(5)?,
        task_key: r.get(6)?,
        attempt: r.get(7)?,
        worker_id: r.get(8)?,
        message: r.get(9)?,
        time: r.get(10)?,
    })
}

fn tasks_where(conn: &Connection, filter: &str, p: impl rusqlite::Params) -> Result<Vec<TaskRow>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM sched_tasks {filter}"))?;
    let recs = stmt
        .query_map(p, task_record)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    recs.into_iter().map(TaskRow::try_from).collect()
}

fn run_by_id(conn: &Connection, id: &str) -> Result<Option<RunRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM sched_runs WHERE id = ?1"
    ))?;
    stmt.query_row([id], run_record)
        .optional()?
        .map(RunRow::try_from)
        .transpose()
}

impl TxOps for SqliteTx<'_> {
    async fn insert_runs(&mut self, runs: &[RunRow]) -> Result<Vec<Option<String>>> {
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO sched_runs (id, workflow, workflow_revision, state, inputs, idempotency_key, created_by, \
             failure_policy, create_time, end_time, last_seq, rev) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
             ON CONFLICT (created_by, idempotency_key) DO NOTHING",
        )?;
        let mut by_key = self.conn.prepare_cached(
            "SELECT id FROM sched_runs WHERE created_by = ?1 AND idempotency_key = ?2",
        )?;
        let mut out = Vec::with_capacity(runs.len());
        for r in runs {
            let rec = RunRecord::from(r);
            let n = insert.execute(params![
                rec.id,
                rec.workflow,
                rec.workflow_revision,
                rec.state,
                rec.inputs,
                rec.idempotency_key,
                rec.created_by,
                rec.failure_policy,
                rec.create_time,
                rec.end_time,
                rec.last_seq,
                rec.rev
            ])?;
            if n == 1 {
                out.push(None);
            } else {
                let id: String = by_key
                    .query_row(params![rec.created_by, rec.idempotency_key], |row| {
                        row.get(0)
                    })?;
                out.push(Some(id));
            }
        }
        Ok(out)
    }

    async fn load_runs(
        &mut self,
        run_ids: &[String],
        _skip_locked: bool,
    ) -> Result<Vec<(RunRow, Vec<TaskRow>)>> {
        let mut out = Vec::with_capacity(run_ids.len());
        for id in run_ids {
            if let Some(run) = run_by_id(self.conn, id)? {
                let tasks = tasks_where(self.conn, "WHERE run_id = ?1 ORDER BY id", [id])?;
                out.push((run, tasks));
            }
        }
        Ok(out)
    }

    async fn load_tasks(&mut self, task_ids: &[String]) -> Result<Vec<(RunRow, Vec<TaskRow>)>> {
        let mut by_run: HashMap<String, Vec<TaskRow>> = HashMap::new();
        for id in task_ids {
            for t in tasks_where(self.conn, "WHERE id = ?1", [id])? {
                by_run.entry(t.run_id.clone()).or_default().push(t);
            }
        }
        let mut out = Vec::with_capacity(by_run.len());
        for (run_id, tasks) in by_run {
            if let Some(run) = run_by_id(self.conn, &run_id)? {
                out.push((run, tasks));
            }
        }
        Ok(out)
    }

    async fn run_ids_of(&mut self, task_ids: &[String]) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT run_id FROM sched_tasks WHERE id = ?1")?;
        let mut out = Vec::new();
        for id in task_ids {
            if let Some(r) = stmt
                .query_row([id], |row| row.get::<_, String>(0))
                .optional()?
                && !out.contains(&r)
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn claimable(
        &mut self,
        now: i64,
        agents: &[String],
        exclude: &[String],
        limit: usize,
    ) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM sched_tasks WHERE state IN ('ready', 'failed') AND ready_at <= ?1 \
             AND (?2 = '[]' OR agent IN (SELECT value FROM json_each(?2))) \
             AND id NOT IN (SELECT value FROM json_each(?3)) \
             ORDER BY priority DESC, ready_at, id LIMIT ?4",
        )?;
        let ids = stmt
            .query_map(
                params![now, json_list(agents), json_list(exclude), limit as i64],
                |r| r.get(0),
            )?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    async fn overdue(&mut self, now: i64, limit: usize) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM (SELECT id FROM sched_tasks WHERE state = 'leased' AND lease_expires <= ?1 LIMIT ?2) \
             UNION ALL SELECT id FROM (SELECT id FROM sched_tasks WHERE state IN ('ready', 'failed') \
             AND schedule_deadline > 0 AND schedule_deadline <= ?1 LIMIT ?2)",
        )?;
        let ids = stmt
            .query_map(params![now, limit as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    async fn running_per_key(&mut self, keys: &[String]) -> Result<HashMap<String, u32>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT COUNT(*) FROM sched_tasks WHERE state = 'leased' AND concurrency_key = ?1",
        )?;
        let mut out = HashMap::new();
        for k in keys {
            let n: i64 = stmt.query_row([k], |r| r.get(0))?;
            out.insert(k.clone(), n as u32);
        }
        Ok(out)
    }

    async fn rate_limits(
        &mut self,
        agents: &[String],
    ) -> Result<HashMap<String, (RateLimit, f64)>> {
        if !self.rate_limited {
            return Ok(HashMap::new());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT per_second, burst, tat FROM sched_rate_limits WHERE agent = ?1",
        )?;
        let mut out = HashMap::new();
        for a in agents {
            let row: Option<(f64, i64, f64)> = stmt
                .query_row([a], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            if let Some((per_second, burst, tat)) = row {
                let burst = burst.clamp(0, i64::from(u32::MAX)) as u32;
                out.insert(a.clone(), (RateLimit { per_second, burst }, tat));
            }
        }
        Ok(out)
    }

    async fn save_rate_tats(&mut self, tats: &[(String, f64)]) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("UPDATE sched_rate_limits SET tat = ?2 WHERE agent = ?1")?;
        for (a, t) in tats {
            stmt.execute(params![a, t])?;
        }
        Ok(())
    }

    async fn write(
        &mut self,
        runs: &[RunRow],
        tasks: &[TaskRow],
        events: &mut [EventRow],
        logs: &[LogRow],
        agents: &[AgentSpecRow],
    ) -> Result<()> {
        let c = self.conn;
        if !agents.is_empty() {
            let mut stmt = c.prepare_cached(
                "INSERT INTO sched_agent_specs (agent, version, spec) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )?;
            for a in agents {
                stmt.execute(params![a.agent, a.version, a.spec])?;
            }
        }
        if !runs.is_empty() {
            let mut upsert = c.prepare_cached(
                "INSERT INTO sched_runs (id, workflow, workflow_revision, state, inputs, idempotency_key, \
                 created_by, failure_policy, create_time, end_time, last_seq, rev) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, end_time = excluded.end_time, \
                 last_seq = excluded.last_seq, rev = excluded.rev WHERE sched_runs.rev = excluded.rev - 1",
            )?;
            let mut update = c.prepare_cached(
                "UPDATE sched_runs SET state = ?2, end_time = ?3, last_seq = ?4, rev = ?5 WHERE id = ?1 AND rev = ?5 - 1",
            )?;
            for r in runs {
                // Revision 1: new, or inserted early for its idempotency key.
                let n = if r.rev == 1 {
                    let r = RunRecord::from(r);
                    upsert.execute(params![
                        r.id,
                        r.workflow,
                        r.workflow_revision,
                        r.state,
                        r.inputs,
                        r.idempotency_key,
                        r.created_by,
                        r.failure_policy,
                        r.create_time,
                        r.end_time,
                        r.last_seq,
                        r.rev
                    ])?
                } else {
                    update.execute(params![
                        r.id,
                        r.state.as_str(),
                        r.end_time,
                        r.last_seq,
                        r.rev
                    ])?
                };
                if n != 1 {
                    return Err(Error::Conflict(format!(
                        "run {} changed concurrently",
                        r.id
                    )));
                }
            }
        }
        if !tasks.is_empty() {
            // New tasks (revision 1) are inserted whole; changed ones update
            // only what a transition can change, if still at the revision read.
            let mut insert = c.prepare_cached(
                "INSERT INTO sched_tasks (id, run_id, key, agent, agent_version, state, attempt, priority, input, \
                 output, error, deps_pending, depends_on, dependents, retry, timeouts, concurrency_key, \
                 concurrency_limit, ready_at, lease_id, lease_expires, attempt_deadline, schedule_deadline, \
                 worker_id, create_time, start_time, end_time, rev) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, \
                 ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28)",
            )?;
            let mut update = c.prepare_cached(
                "UPDATE sched_tasks SET state = ?2, attempt = ?3, input = ?4, output = ?5, error = ?6, \
                 deps_pending = ?7, ready_at = ?8, lease_id = ?9, lease_expires = ?10, attempt_deadline = ?11, \
                 schedule_deadline = ?12, worker_id = ?13, start_time = ?14, end_time = ?15, rev = ?16 \
                 WHERE id = ?1 AND rev = ?16 - 1",
            )?;
            for t in tasks {
                let n = if t.rev == 1 {
                    let t = TaskRecord::from(t);
                    insert.execute(params![
                        t.id,
                        t.run_id,
                        t.key,
                        t.agent,
                        t.agent_version,
                        t.state,
                        t.attempt,
                        t.priority,
                        t.input,
                        t.output,
                        t.error,
                        t.deps_pending,
                        t.depends_on,
                        t.dependents,
                        t.retry,
                        t.timeouts,
                        t.concurrency_key,
                        t.concurrency_limit,
                        t.ready_at,
                        t.lease_id,
                        t.lease_expires,
                        t.attempt_deadline,
                        t.schedule_deadline,
                        t.worker_id,
                        t.create_time,
                        t.start_time,
                        t.end_time,
                        t.rev
                    ])?
                } else {
                    update.execute(params![
                        t.id,
                        t.state.as_str(),
                        t.attempt,
                        t.input,
                        t.output,
                        t.error
                            .as_ref()
                            .map(|e| serde_json::to_string(e).unwrap_or_default()),
                        t.deps_pending,
                        t.ready_at,
                        t.lease_id,
                        t.lease_expires,
                        t.attempt_deadline,
                        t.schedule_deadline,
                        t.worker_id,
                        t.start_time,
                        t.end_time,
                        t.rev
                    ])?
                };
                if n != 1 {
                    return Err(Error::Conflict(format!(
                        "task {} changed concurrently",
                        t.id
                    )));
                }
            }
        }
        if !events.is_empty() {
            let mut stmt = c.prepare_cached(
                "INSERT INTO sched_events (event_id, run_id, seq, kind, task_id, task_key, attempt, worker_id, \
                 message, time, published, id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for e in events.iter_mut() {
                e.id = *self.next_event;
                *self.next_event += 1;
                stmt.execute(params![
                    e.event_id,
                    e.run_id,
                    e.seq,
                    e.kind.as_str(),
                    e.task_id,
                    e.task_key,
                    e.attempt,
                    e.worker_id,
                    e.message,
                    e.time,
                    !self.outbox,
                    e.id
                ])?;
            }
        }
        if !logs.is_empty() {
            let mut stmt = c.prepare_cached(
                "INSERT INTO sched_task_logs (task_id, attempt, time, stream, line) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for l in logs {
                stmt.execute(params![l.task_id, l.attempt, l.time, l.stream, l.line])?;
            }
        }
        Ok(())
    }

    async fn next_due(&mut self, now: i64) -> Result<Option<i64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT MIN(t) FROM ( \
               SELECT MIN(lease_expires) AS t FROM sched_tasks WHERE state = 'leased' \
               UNION ALL SELECT MIN(ready_at) FROM sched_tasks WHERE state = 'failed' AND ready_at > ?1 \
               UNION ALL SELECT MIN(schedule_deadline) FROM sched_tasks \
                 WHERE state IN ('ready', 'failed') AND schedule_deadline > 0)",
        )?;
        Ok(stmt.query_row([now], |r| r.get(0))?)
    }

    async fn log_lines(&mut self, task_id: &str, attempt: u32) -> Result<u32> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT count(*) FROM sched_task_logs WHERE task_id = ?1 AND attempt = ?2",
        )?;
        let n: i64 = stmt.query_row(rusqlite::params![task_id, attempt], |r| r.get(0))?;
        Ok(n.clamp(0, i64::from(u32::MAX)) as u32)
    }

    async fn leased_to(&mut self, worker_id: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM sched_tasks WHERE state = 'leased' AND worker_id = ?1",
        )?;
        let ids = stmt
            .query_map([worker_id], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    /// One process per database file: nobody else to tell.
    async fn announce(&mut self, _payloads: &[String]) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl SchedulerStore for SqliteStore {
    fn concurrent_writers(&self) -> bool {
        false
    }

    async fn apply(&self, batch: Batch) -> Result<Applied> {
        let (outbox, rate_limited) = (self.outbox, self.rate_limited.load(Ordering::Relaxed));
        self.write(move |conn, next_event| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = *next_event;
            let mut ops = SqliteTx {
                conn: &tx,
                outbox,
                rate_limited,
                next_event,
            };
            let applied = futures::executor::block_on(apply_batch(&mut ops, batch));
            let applied = match applied {
                Ok(a) => a,
                Err(e) => {
                    // Rolled back: its event ids were never used.
                    *next_event = before;
                    return Err(e);
                }
            };
            if let Err(e) = tx.commit() {
                *next_event = before;
                return Err(e.into());
            }
            Ok(applied)
        })
    }

    async fn put_workflow(
        &self,
        name: &str,
        spec: Vec<u8>,
        now: i64,
        by: &str,
        any_owner: bool,
    ) -> Result<WorkflowRow> {
        let (name, by) = (name.to_owned(), by.to_owned());
        self.write_aside(move |conn, _| {
            let sql = super::pg::PUT_WORKFLOW.replace('$', "?");
            let stored: Option<(i64, String)> = conn
                .query_row(&sql, params![name, spec, now, by, any_owner], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let (revision, owner) = stored.ok_or_else(|| super::pg::not_owner(&name))?;
            Ok(WorkflowRow {
                name,
                revision,
                spec,
                create_time: now,
                owner,
            })
        })
    }

    async fn get_workflow(&self, name: &str) -> Result<Option<WorkflowRow>> {
        let name = name.to_owned();
        self.reader
            .run(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT name, revision, spec, create_time, owner FROM sched_workflows WHERE name = ?1 \
                         ORDER BY revision DESC LIMIT 1",
                        [name],
                        workflow_row,
                    )
                    .optional()?)
            })
            .await
    }

    async fn list_workflows(&self, after: Option<&str>, limit: usize) -> Result<Vec<WorkflowRow>> {
        let after = after.unwrap_or("").to_owned();
        self.reader
            .run(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT w.name, w.revision, w.spec, w.create_time, w.owner FROM sched_workflows w WHERE w.name > ?1 \
                     AND w.revision = (SELECT MAX(revision) FROM sched_workflows x WHERE x.name = w.name) \
                     ORDER BY w.name LIMIT ?2",
                )?;
                let rows = stmt
                    .query_map(params![after, limit as i64], workflow_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await
    }

    async fn get_run(&self, id: &str) -> Result<Option<(RunRow, Vec<TaskRow>)>> {
        let id = id.to_owned();
        self.reader
            .run(move |conn| {
                let Some(run) = run_by_id(conn, &id)? else {
                    return Ok(None);
                };
                let tasks = tasks_where(conn, "WHERE run_id = ?1 ORDER BY id", [&id])?;
                Ok(Some((run, tasks)))
            })
            .await
    }

    async fn run_by_key(&self, created_by: &str, key: &str) -> Result<Option<String>> {
        let (by, key) = (created_by.to_owned(), key.to_owned());
        self.reader
            .run(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT id FROM sched_runs WHERE created_by = ?1 AND idempotency_key = ?2",
                        [by, key],
                        |r| r.get(0),
                    )
                    .optional()?)
            })
            .await
    }

    async fn list_runs(&self, f: &RunFilter, limit: usize) -> Result<Vec<RunRow>> {
        let f = f.clone();
        self.reader
            .run(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM sched_runs WHERE (?1 = '' OR state = ?1) AND (?2 = '' OR workflow = ?2) \
                     AND create_time >= ?3 AND create_time < ?4 AND (?5 = '' OR id < ?5) \
                     AND (?7 = '' OR created_by = ?7) ORDER BY id DESC LIMIT ?6"
                ))?;
                let recs = stmt
                    .query_map(
                        params![
                            f.state.map(|s| s.as_str()).unwrap_or(""),
                            f.workflow.as_deref().unwrap_or(""),
                            f.created_after.unwrap_or(i64::MIN),
                            f.created_before.unwrap_or(i64::MAX),
                            f.before.as_deref().unwrap_or(""),
                            limit as i64,
                            f.created_by.as_deref().unwrap_or("")
                        ],
                        run_record,
                    )?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                recs.into_iter().map(RunRow::try_from).collect()
            })
            .await
    }

    async fn get_task(&self, id: &str) -> Result<Option<TaskRow>> {
        let id = id.to_owned();
        self.reader
            .run(move |conn| Ok(tasks_where(conn, "WHERE id = ?1", [id])?.into_iter().next()))
            .await
    }

    async fn list_tasks(&self, f: &TaskFilter, limit: usize) -> Result<Vec<TaskRow>> {
        let f = f.clone();
        self.reader
            .run(move |conn| {
                tasks_where(
                    conn,
                    "WHERE (?1 = '' OR run_id = ?1) AND (?2 = '' OR state = ?2) AND id > ?3 ORDER BY id LIMIT ?4",
                    params![
                        f.run_id.as_deref().unwrap_or(""),
                        f.state.map(|s| s.as_str()).unwrap_or(""),
                        f.after.as_deref().unwrap_or(""),
                        limit as i64
                    ],
                )
            })
            .await
    }

    async fn run_events(
        &self,
        run_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<EventRow>> {
        let run_id = run_id.to_owned();
        self.reader
            .run(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM sched_events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
                ))?;
                let recs = stmt
                    .query_map(params![run_id, after_seq, limit as i64], event_record)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                recs.into_iter().map(EventRow::try_from).collect()
            })
            .await
    }

    async fn task_logs(&self, task_id: &str, limit: usize) -> Result<Vec<LogRow>> {
        let task_id = task_id.to_owned();
        self.reader
            .run(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT task_id, attempt, time, stream, line FROM sched_task_logs WHERE task_id = ?1 \
                     ORDER BY id LIMIT ?2",
                )?;
                let rows = stmt
                    .query_map(params![task_id, limit as i64], |r| {
                        Ok(LogRow {
                            task_id: r.get(0)?,
                            attempt: r.get::<_, i64>(1)?.clamp(0, i64::from(u32::MAX)) as u32,
                            time: r.get(2)?,
                            stream: r.get(3)?,
                            line: r.get(4)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await
    }

    async fn agent_spec(&self, agent: &str, version: &str) -> Result<Option<Vec<u8>>> {
        let (agent, version) = (agent.to_owned(), version.to_owned());
        self.reader
            .run(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT spec FROM sched_agent_specs WHERE agent = ?1 AND version = ?2",
                        [agent, version],
                        |r| r.get(0),
                    )
                    .optional()?)
            })
            .await
    }

    async fn set_rate_limit(&self, agent: &str, limit: Option<RateLimit>) -> Result<()> {
        let agent = agent.to_owned();
        let flag = Arc::clone(&self.rate_limited);
        self.write_aside(move |conn, _| {
            match limit {
                None => conn.execute("DELETE FROM sched_rate_limits WHERE agent = ?1", [agent])?,
                Some(l) => conn.execute(
                    "INSERT INTO sched_rate_limits (agent, per_second, burst, tat) VALUES (?1, ?2, ?3, 0) \
                     ON CONFLICT (agent) DO UPDATE SET per_second = excluded.per_second, burst = excluded.burst",
                    params![agent, l.per_second, l.burst],
                )?,
            };
            let any: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM sched_rate_limits)", [], |r| r.get(0))?;
            flag.store(any, Ordering::Relaxed);
            Ok(())
        })
    }

    async fn outbox(&self, limit: usize) -> Result<Vec<EventRow>> {
        self.reader
            .run(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM sched_events WHERE published = 0 ORDER BY id LIMIT ?1"
                ))?;
                let recs = stmt
                    .query_map([limit as i64], event_record)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                recs.into_iter().map(EventRow::try_from).collect()
            })
            .await
    }

    async fn mark_published(&self, ids: &[i64]) -> Result<()> {
        self.write_aside(|conn, _| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE sched_events SET published = 1 WHERE id = ?1 AND published = 0",
                )?;
                for id in ids {
                    stmt.execute([id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }
}

fn workflow_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WorkflowRow> {
    Ok(WorkflowRow {
        name: r.get(0)?,
        revision: r.get(1)?,
        spec: r.get(2)?,
        create_time: r.get(3)?,
        owner: r.get(4)?,
    })
}
