//! Batches on SQLite: each [`TxOps`] statement runs once per row, cached
//! and prepared, on the writer's own thread: no round trips to save.

use std::collections::BTreeSet;

use hashbrown::HashMap;
use rusqlite::types::ToSql;
use rusqlite::{Connection, OptionalExtension, params};

use super::conn::{all, first};
use crate::error::{Error, Result};
use crate::model::*;
use crate::store::TxOps;
use crate::store::cache::RunCache;
use crate::store::rows::{self, RunRecord, TaskRecord};
use crate::store::sql::*;

pub(super) struct SqliteTx<'c> {
    pub conn: &'c Connection,
    pub outbox: bool,
    pub rate_limited: bool,
    /// The id the next event gets: the writer's commit order.
    pub next_event: &'c mut i64,
    pub kept: &'c mut RunCache,
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).expect("strings serialize")
}

/// A run's values in the order of `run_columns!`.
fn run_params(r: &RunRecord) -> [&dyn ToSql; 12] {
    [
        &r.id,
        &r.workflow,
        &r.workflow_revision,
        &r.state,
        &r.inputs,
        &r.idempotency_key,
        &r.created_by,
        &r.failure_policy,
        &r.create_time,
        &r.end_time,
        &r.last_seq,
        &r.rev,
    ]
}

/// A task's values in the order of `task_columns!`.
fn task_params(t: &TaskRecord) -> [&dyn ToSql; 29] {
    [
        &t.id,
        &t.run_id,
        &t.key,
        &t.agent,
        &t.agent_version,
        &t.state,
        &t.attempt,
        &t.priority,
        &t.input,
        &t.output,
        &t.error,
        &t.deps_pending,
        &t.depends_on,
        &t.dependents,
        &t.retry,
        &t.timeouts,
        &t.concurrency_key,
        &t.concurrency_limit,
        &t.ready_at,
        &t.lease_id,
        &t.lease_expires,
        &t.attempt_deadline,
        &t.schedule_deadline,
        &t.worker_id,
        &t.create_time,
        &t.start_time,
        &t.end_time,
        &t.rev,
        &t.traceparent,
    ]
}

fn changed_concurrently(what: &str, id: &str) -> Error {
    Error::Conflict(format!("{what} {id} changed concurrently"))
}

impl SqliteTx<'_> {
    /// Runs as compare-and-set on `rev`: revision 1 is new, or was inserted
    /// early for its idempotency key.
    fn write_runs(&self, runs: &[RunRow]) -> Result<()> {
        let mut upsert = self.conn.prepare_cached(SQLITE_UPSERT_RUN)?;
        let mut update = self.conn.prepare_cached(SQLITE_UPDATE_RUN)?;
        for r in runs {
            let n = if r.rev == 1 {
                upsert.execute(run_params(&RunRecord::from(r)))?
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
                return Err(changed_concurrently("run", &r.id));
            }
        }
        Ok(())
    }

    /// New tasks (revision 1) are inserted whole; changed ones update only
    /// what a transition can change, if still at the revision read.
    fn write_tasks(&self, tasks: &[TaskRow]) -> Result<()> {
        let mut insert = self.conn.prepare_cached(SQLITE_INSERT_TASK)?;
        let mut update = self.conn.prepare_cached(SQLITE_UPDATE_TASK)?;
        for t in tasks {
            let n = if t.rev == 1 {
                insert.execute(task_params(&TaskRecord::from(t)))?
            } else {
                update.execute(params![
                    t.id,
                    t.state.as_str(),
                    t.attempt,
                    t.input,
                    t.output,
                    rows::error_json(t.error.as_ref()),
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
                return Err(changed_concurrently("task", &t.id));
            }
        }
        Ok(())
    }

    /// Events, numbered in commit order.
    fn write_events(&mut self, events: &mut [EventRow]) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(SQLITE_INSERT_EVENT)?;
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
        Ok(())
    }
}

impl TxOps for SqliteTx<'_> {
    async fn insert_runs(&mut self, runs: &[RunRow]) -> Result<Vec<Option<String>>> {
        let mut insert = self.conn.prepare_cached(SQLITE_INSERT_RUN)?;
        let mut by_key = self.conn.prepare_cached(sqlite!(RUN_BY_KEY))?;
        let mut out = Vec::with_capacity(runs.len());
        for r in runs {
            let rec = RunRecord::from(r);
            if insert.execute(run_params(&rec))? == 1 {
                out.push(None);
            } else {
                let key = params![rec.created_by, rec.idempotency_key];
                out.push(Some(by_key.query_row(key, |row| row.get(0))?));
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
            if let Some(run) = first(self.conn, sqlite!(RUN), [id], |r| rows::run(r))? {
                let tasks = all(self.conn, sqlite!(TASKS_OF_RUN), [id], |r| rows::task(r))?;
                out.push((run, tasks));
            }
        }
        Ok(out)
    }

    async fn load_tasks(&mut self, task_ids: &[String]) -> Result<Vec<(RunRow, Vec<TaskRow>)>> {
        let mut by_run: HashMap<String, Vec<TaskRow>> = HashMap::new();
        for id in task_ids {
            if let Some(t) = first(self.conn, sqlite!(TASK), [id], |r| rows::task(r))? {
                by_run.entry(t.run_id.clone()).or_default().push(t);
            }
        }
        let mut out = Vec::with_capacity(by_run.len());
        for (run_id, tasks) in by_run {
            if let Some(run) = first(self.conn, sqlite!(RUN), [&run_id], |r| rows::run(r))? {
                out.push((run, tasks));
            }
        }
        Ok(out)
    }

    async fn run_ids_of(&mut self, task_ids: &[String]) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(SQLITE_RUN_ID_OF)?;
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
        let (exclude, limit) = (json_list(exclude), limit as i64);
        let row = |r: &rusqlite::Row| -> Result<(i64, i64, String)> {
            Ok((r.get(1)?, r.get(2)?, r.get(0)?))
        };
        let mut best: Vec<(i64, i64, String)> = if agents.is_empty() {
            all(
                self.conn,
                SQLITE_CLAIMABLE,
                params![now, exclude, limit],
                row,
            )?
        } else {
            let mut best = Vec::new();
            for agent in agents.iter().collect::<BTreeSet<_>>() {
                let p = params![now, exclude, limit, agent];
                best.extend(all(self.conn, SQLITE_CLAIMABLE_OF, p, row)?);
            }
            best
        };
        // Priority first, then age, then id: the queue's order.
        best.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        Ok(best
            .into_iter()
            .take(limit as usize)
            .map(|(_, _, id)| id)
            .collect())
    }

    async fn overdue(&mut self, now: i64, limit: usize) -> Result<Vec<String>> {
        let p = params![now, limit as i64];
        all(self.conn, SQLITE_OVERDUE, p, |r| Ok(r.get(0)?))
    }

    async fn running_per_key(&mut self, keys: &[String]) -> Result<HashMap<String, u32>> {
        let mut stmt = self.conn.prepare_cached(SQLITE_RUNNING_OF_KEY)?;
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
        let mut stmt = self.conn.prepare_cached(SQLITE_RATE_LIMIT)?;
        let mut out = HashMap::new();
        for a in agents {
            let row: Option<(f64, i64, f64)> = stmt
                .query_row([a], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            if let Some((per_second, burst, tat)) = row {
                out.insert(a.clone(), (rows::rate_limit(per_second, burst), tat));
            }
        }
        Ok(out)
    }

    async fn save_rate_tats(&mut self, tats: &[(String, f64)]) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(SQLITE_SAVE_RATE_TAT)?;
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
        if !agents.is_empty() {
            let mut stmt = self.conn.prepare_cached(SQLITE_INSERT_AGENT_SPEC)?;
            for a in agents {
                stmt.execute(params![a.agent, a.version, a.spec])?;
            }
        }
        if !runs.is_empty() {
            self.write_runs(runs)?;
        }
        if !tasks.is_empty() {
            self.write_tasks(tasks)?;
        }
        if !events.is_empty() {
            self.write_events(events)?;
        }
        if !logs.is_empty() {
            let mut stmt = self.conn.prepare_cached(SQLITE_INSERT_LOG)?;
            for l in logs {
                stmt.execute(params![l.task_id, l.attempt, l.time, l.stream, l.line])?;
            }
        }
        Ok(())
    }

    async fn next_due(&mut self, now: i64) -> Result<Option<i64>> {
        let mut stmt = self.conn.prepare_cached(sqlite!(NEXT_DUE))?;
        Ok(stmt.query_row([now], |r| r.get(0))?)
    }

    async fn log_lines(&mut self, task_id: &str, attempt: u32) -> Result<u32> {
        let mut stmt = self.conn.prepare_cached(sqlite!(LOG_LINES))?;
        let n: i64 = stmt.query_row(params![task_id, attempt], |r| r.get(0))?;
        Ok(rows::count(n))
    }

    async fn leased_to(&mut self, worker_id: &str) -> Result<Vec<String>> {
        all(
            self.conn,
            sqlite!(LEASED_TO),
            [worker_id],
            |r| Ok(r.get(0)?),
        )
    }

    /// One process per database file: nobody else to tell.
    async fn announce(&mut self, _payloads: &[String]) -> Result<()> {
        Ok(())
    }

    /// The engine is the database's only writer, so what it wrote is what
    /// the database holds.
    fn cache(&mut self) -> Option<&mut RunCache> {
        Some(self.kept)
    }
}
