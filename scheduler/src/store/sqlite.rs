//! The scheduler on SQLite. The engine — the writer on the hot path — runs
//! each batch on the write connection itself, on its own thread: a batch
//! costs no thread hop however many statements it runs. Rare writes from
//! elsewhere (workflow definitions, rate limits, the outbox relay) take the
//! same connection through `block_in_place`, so that waiting for a batch to
//! finish does not stall their runtime thread. Reads go to a reader thread.
//! WAL with `synchronous=NORMAL` (see docs/design.md for what that keeps);
//! checkpoints run on their own thread so that commits never pay for them.
//! Statements are in [`super::sql`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, params};

use self::conn::{Worker, all, first, open, spawn_checkpointer};
use self::tx::SqliteTx;
use super::cache::RunCache;
use super::rows;
use super::sql::*;
use super::{Applied, Batch, SchedulerStore, apply_batch};
use crate::error::Result;
use crate::model::*;

pub(crate) mod conn;
mod schedules;
mod tx;

/// The write connection and what goes with it.
struct Writer {
    conn: Connection,
    /// The id the next event gets.
    next_event: i64,
    /// Runs the engine's batches left unfinished; see [`RunCache`].
    kept: RunCache,
}

pub struct SqliteStore {
    writer: Arc<Mutex<Writer>>,
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

impl SqliteStore {
    /// Opens the database file the migrations were applied to. With
    /// `outbox`, events are left for the relay to publish.
    pub fn open(path: impl Into<PathBuf>, outbox: bool) -> Result<Self> {
        let path = path.into();
        let writer = open(&path)?;
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        writer.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        let limited: bool = writer.query_row(SQLITE_ANY_RATE_LIMIT, [], |r| r.get(0))?;
        let next_event: i64 = writer.query_row(SQLITE_NEXT_EVENT_ID, [], |r| r.get(0))?;
        let stop = Arc::new(AtomicBool::new(false));
        spawn_checkpointer(&path, Arc::clone(&stop))?;
        Ok(Self {
            writer: Arc::new(Mutex::new(Writer {
                conn: writer,
                next_event,
                kept: RunCache::default(),
            })),
            reader: Worker::spawn("sched-sqlite-reader", &path)?,
            outbox,
            rate_limited: Arc::new(AtomicBool::new(limited)),
            stop,
        })
    }

    /// How many runs the engine's batches left unfinished are kept.
    pub fn kept_runs(&self) -> usize {
        self.writer.lock().kept.len()
    }

    /// Runs `f` on the write connection, on this thread: the engine is the
    /// writer, and a hop to another thread would cost more than the batch.
    fn write<T>(&self, f: impl FnOnce(&mut Writer) -> Result<T>) -> Result<T> {
        f(&mut self.writer.lock())
    }

    /// [`Self::write`] for callers other than the engine: they may wait for
    /// the engine's batch, and must not hold a runtime thread while they do.
    fn write_aside<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let f = |w: &mut Writer| f(&mut w.conn);
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| self.write(f))
            }
            _ => self.write(f),
        }
    }
}

#[async_trait]
impl SchedulerStore for SqliteStore {
    fn concurrent_writers(&self) -> bool {
        false
    }

    async fn apply(&self, batch: Batch) -> Result<Applied> {
        let (outbox, rate_limited) = (self.outbox, self.rate_limited.load(Ordering::Relaxed));
        self.write(move |w| {
            let Writer {
                conn,
                next_event,
                kept,
            } = w;
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before = *next_event;
            let mut ops = SqliteTx {
                conn: &tx,
                outbox,
                rate_limited,
                next_event,
                kept,
            };
            let applied = futures::executor::block_on(apply_batch(&mut ops, batch))
                .and_then(|a| Ok(tx.commit().map(|()| a)?));
            if applied.is_err() {
                // Rolled back: its event ids were never used, and the runs
                // kept may be ahead of the database.
                *next_event = before;
                kept.clear();
            }
            applied
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
        self.write_aside(move |conn| {
            let p = params![name, spec, now, by, any_owner];
            let stored: Option<(i64, String)> = first(conn, sqlite!(PUT_WORKFLOW), p, |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            let (revision, owner) = stored.ok_or_else(|| super::not_owner(&name))?;
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
            .run(move |conn| first(conn, sqlite!(GET_WORKFLOW), [name], |r| rows::workflow(r)))
            .await
    }

    async fn list_workflows(&self, after: Option<&str>, limit: usize) -> Result<Vec<WorkflowRow>> {
        let after = after.unwrap_or("").to_owned();
        self.reader
            .run(move |conn| {
                let p = params![after, limit as i64];
                all(conn, sqlite!(LIST_WORKFLOWS), p, |r| rows::workflow(r))
            })
            .await
    }

    async fn get_run(&self, id: &str) -> Result<Option<(RunRow, Vec<TaskRow>)>> {
        let id = id.to_owned();
        self.reader
            .run(move |conn| {
                let Some(run) = first(conn, sqlite!(RUN), [&id], |r| rows::run(r))? else {
                    return Ok(None);
                };
                let tasks = all(conn, sqlite!(TASKS_OF_RUN), [&id], |r| rows::task(r))?;
                Ok(Some((run, tasks)))
            })
            .await
    }

    async fn run_by_key(&self, created_by: &str, key: &str) -> Result<Option<String>> {
        let (by, key) = (created_by.to_owned(), key.to_owned());
        self.reader
            .run(move |conn| first(conn, sqlite!(RUN_BY_KEY), [by, key], |r| Ok(r.get(0)?)))
            .await
    }

    async fn list_runs(&self, f: &RunFilter, limit: usize) -> Result<Vec<RunRow>> {
        let f = f.clone();
        self.reader
            .run(move |conn| {
                let p = params![
                    f.state.map(|s| s.as_str()).unwrap_or(""),
                    f.workflow.as_deref().unwrap_or(""),
                    f.created_after.unwrap_or(i64::MIN),
                    f.created_before.unwrap_or(i64::MAX),
                    f.before.as_deref().unwrap_or(""),
                    limit as i64,
                    f.created_by.as_deref().unwrap_or("")
                ];
                all(conn, sqlite!(LIST_RUNS), p, |r| rows::run(r))
            })
            .await
    }

    async fn get_task(&self, id: &str) -> Result<Option<TaskRow>> {
        let id = id.to_owned();
        self.reader
            .run(move |conn| first(conn, sqlite!(TASK), [id], |r| rows::task(r)))
            .await
    }

    async fn list_tasks(&self, f: &TaskFilter, limit: usize) -> Result<Vec<TaskRow>> {
        let f = f.clone();
        self.reader
            .run(move |conn| {
                let p = params![
                    f.run_id.as_deref().unwrap_or(""),
                    f.state.map(|s| s.as_str()).unwrap_or(""),
                    f.after.as_deref().unwrap_or(""),
                    limit as i64
                ];
                all(conn, sqlite!(LIST_TASKS), p, |r| rows::task(r))
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
                let p = params![run_id, after_seq, limit as i64];
                all(conn, sqlite!(RUN_EVENTS), p, |r| rows::event(r))
            })
            .await
    }

    async fn task_logs(&self, task_id: &str, limit: usize) -> Result<Vec<LogRow>> {
        let task_id = task_id.to_owned();
        self.reader
            .run(move |conn| {
                let p = params![task_id, limit as i64];
                all(conn, sqlite!(TASK_LOGS), p, |r| rows::log(r))
            })
            .await
    }

    async fn agent_spec(&self, agent: &str, version: &str) -> Result<Option<Vec<u8>>> {
        let (agent, version) = (agent.to_owned(), version.to_owned());
        self.reader
            .run(move |conn| {
                first(conn, sqlite!(AGENT_SPEC), [agent, version], |r| {
                    Ok(r.get(0)?)
                })
            })
            .await
    }

    async fn set_rate_limit(&self, agent: &str, limit: Option<RateLimit>) -> Result<()> {
        let agent = agent.to_owned();
        let flag = Arc::clone(&self.rate_limited);
        self.write_aside(move |conn| {
            match limit {
                None => conn.execute(sqlite!(DELETE_RATE_LIMIT), [agent])?,
                Some(l) => conn.execute(
                    sqlite!(PUT_RATE_LIMIT),
                    params![agent, l.per_second, l.burst],
                )?,
            };
            let any: bool = conn.query_row(SQLITE_ANY_RATE_LIMIT, [], |r| r.get(0))?;
            flag.store(any, Ordering::Relaxed);
            Ok(())
        })
    }

    async fn queue_stats(&self) -> Result<Vec<(String, String, i64)>> {
        self.reader
            .run(move |conn| all(conn, SQLITE_QUEUE_STATS, [], |r| rows::stat(r)))
            .await
    }

    async fn outbox(&self, limit: usize) -> Result<Vec<EventRow>> {
        self.reader
            .run(move |conn| {
                all(conn, SQLITE_OUTBOX, [limit as i64], |r| {
                    rows::outbox_event(r)
                })
            })
            .await
    }

    async fn mark_published(&self, ids: &[i64]) -> Result<()> {
        self.write_aside(|conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(SQLITE_MARK_PUBLISHED)?;
                for id in ids {
                    stmt.execute([id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }
}
