//! Batches on PostgreSQL: each [`TxOps`] statement handles all rows at
//! once (arrays and `UNNEST`), so a batch costs a fixed number of round
//! trips however many tasks it touches.

use hashbrown::{HashMap, HashSet};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Postgres, Row, Transaction};

use super::CHANNEL;
use crate::error::{Error, Result};
use crate::model::*;
use crate::store::TxOps;
use crate::store::rows::{self, RunRecord, TaskRecord};
use crate::store::sql::*;

pub(super) struct PgTx<'a> {
    pub tx: Transaction<'a, Postgres>,
    pub instance: &'a str,
    pub outbox: bool,
}

pub(super) type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// Binds runs as the twelve arrays of `run_columns!`, in its order.
fn bind_runs<'q>(q: PgQuery<'q>, runs: &[RunRow]) -> PgQuery<'q> {
    let recs: Vec<RunRecord> = runs.iter().map(RunRecord::from).collect();
    let col = |f: fn(&RunRecord) -> String| recs.iter().map(f).collect::<Vec<String>>();
    let num = |f: fn(&RunRecord) -> i64| recs.iter().map(f).collect::<Vec<i64>>();
    let keys: Vec<Option<String>> = recs.iter().map(|r| r.idempotency_key.clone()).collect();
    q.bind(col(|r| r.id.clone()))
        .bind(col(|r| r.workflow.clone()))
        .bind(num(|r| r.workflow_revision))
        .bind(col(|r| r.state.clone()))
        .bind(col(|r| r.inputs.clone()))
        .bind(keys)
        .bind(col(|r| r.created_by.clone()))
        .bind(col(|r| r.failure_policy.clone()))
        .bind(num(|r| r.create_time))
        .bind(num(|r| r.end_time))
        .bind(num(|r| r.last_seq))
        .bind(num(|r| r.rev))
}

/// Binds tasks as the 29 arrays of `task_columns!`, in its order.
fn bind_tasks<'q>(q: PgQuery<'q>, tasks: &[TaskRow]) -> PgQuery<'q> {
    let recs: Vec<TaskRecord> = tasks.iter().map(TaskRecord::from).collect();
    let col = |f: fn(&TaskRecord) -> String| recs.iter().map(f).collect::<Vec<String>>();
    let opt =
        |f: fn(&TaskRecord) -> Option<String>| recs.iter().map(f).collect::<Vec<Option<String>>>();
    let num = |f: fn(&TaskRecord) -> i64| recs.iter().map(f).collect::<Vec<i64>>();
    q.bind(col(|r| r.id.clone()))
        .bind(col(|r| r.run_id.clone()))
        .bind(col(|r| r.key.clone()))
        .bind(col(|r| r.agent.clone()))
        .bind(col(|r| r.agent_version.clone()))
        .bind(col(|r| r.state.clone()))
        .bind(num(|r| r.attempt))
        .bind(num(|r| r.priority))
        .bind(col(|r| r.input.clone()))
        .bind(opt(|r| r.output.clone()))
        .bind(opt(|r| r.error.clone()))
        .bind(num(|r| r.deps_pending))
        .bind(col(|r| r.depends_on.clone()))
        .bind(col(|r| r.dependents.clone()))
        .bind(col(|r| r.retry.clone()))
        .bind(col(|r| r.timeouts.clone()))
        .bind(col(|r| r.concurrency_key.clone()))
        .bind(num(|r| r.concurrency_limit))
        .bind(num(|r| r.ready_at))
        .bind(col(|r| r.lease_id.clone()))
        .bind(num(|r| r.lease_expires))
        .bind(num(|r| r.attempt_deadline))
        .bind(num(|r| r.schedule_deadline))
        .bind(col(|r| r.worker_id.clone()))
        .bind(num(|r| r.create_time))
        .bind(num(|r| r.start_time))
        .bind(num(|r| r.end_time))
        .bind(num(|r| r.rev))
        .bind(col(|r| r.traceparent.clone()))
}

/// Runs `q` and maps each row with `f`.
pub(super) async fn fetch<'e, T>(
    e: impl sqlx::PgExecutor<'e>,
    q: PgQuery<'_>,
    f: fn(&sqlx::postgres::PgRow) -> Result<T>,
) -> Result<Vec<T>> {
    q.fetch_all(e).await?.iter().map(f).collect()
}

/// Pairs runs with their tasks, each run's tasks in creation (id) order.
/// Task locks are taken under their runs' locks, so the queries need no
/// ORDER BY; one there makes the planner walk the whole primary key.
fn group(runs: Vec<RunRow>, mut tasks: Vec<TaskRow>) -> Vec<(RunRow, Vec<TaskRow>)> {
    tasks.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let mut by_run: HashMap<String, Vec<TaskRow>> = HashMap::new();
    for t in tasks {
        by_run.entry(t.run_id.clone()).or_default().push(t);
    }
    runs.into_iter()
        .map(|r| {
            let tasks = by_run.remove(&r.id).unwrap_or_default();
            (r, tasks)
        })
        .collect()
}

/// Each row is a compare-and-set on its revision: a row not written was
/// changed by someone else since it was read.
fn all_written(n: u64, want: usize, what: &str) -> Result<()> {
    match want.checked_sub(n as usize) {
        Some(0) => Ok(()),
        _ => Err(Error::Conflict(format!(
            "{} of {want} {what} changed concurrently",
            want.saturating_sub(n as usize)
        ))),
    }
}

impl TxOps for PgTx<'_> {
    async fn insert_runs(&mut self, runs: &[RunRow]) -> Result<Vec<Option<String>>> {
        let inserted: Vec<String> = fetch(
            &mut *self.tx,
            bind_runs(sqlx::query(PG_INSERT_RUNS), runs),
            |r| Ok(r.try_get(0)?),
        )
        .await?;
        if inserted.len() == runs.len() {
            return Ok(vec![None; runs.len()]);
        }
        let inserted: HashSet<String> = inserted.into_iter().collect();
        let taken: Vec<&RunRow> = runs.iter().filter(|r| !inserted.contains(&r.id)).collect();
        let existing: HashMap<(String, String), String> =
            sqlx::query_as::<_, (String, String, String)>(PG_RUNS_BY_KEY)
                .bind(
                    taken
                        .iter()
                        .map(|r| r.created_by.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    taken
                        .iter()
                        .map(|r| r.idempotency_key.as_deref().unwrap_or_default())
                        .collect::<Vec<_>>(),
                )
                .fetch_all(&mut *self.tx)
                .await?
                .into_iter()
                .map(|(by, key, id)| ((by, key), id))
                .collect();
        runs.iter()
            .map(|r| {
                if inserted.contains(&r.id) {
                    return Ok(None);
                }
                let key = r.idempotency_key.clone().unwrap_or_default();
                existing
                    .get(&(r.created_by.clone(), key.clone()))
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| {
                        Error::Corrupt(format!("run with key {key} neither inserted nor found"))
                    })
            })
            .collect()
    }

    async fn load_runs(
        &mut self,
        run_ids: &[String],
        skip_locked: bool,
    ) -> Result<Vec<(RunRow, Vec<TaskRow>)>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = if skip_locked {
            PG_LOCK_RUNS_SKIP_LOCKED
        } else {
            PG_LOCK_RUNS
        };
        let runs = fetch(&mut *self.tx, sqlx::query(sql).bind(run_ids), rows::run).await?;
        let locked: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        let q = sqlx::query(PG_LOCK_TASKS_OF_RUNS).bind(locked);
        let tasks = fetch(&mut *self.tx, q, rows::task).await?;
        Ok(group(runs, tasks))
    }

    async fn load_tasks(&mut self, task_ids: &[String]) -> Result<Vec<(RunRow, Vec<TaskRow>)>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let q = sqlx::query(PG_LOCK_RUNS_OF_TASKS).bind(task_ids);
        let runs = fetch(&mut *self.tx, q, rows::run).await?;
        let locked: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        let q = sqlx::query(PG_LOCK_TASKS).bind(task_ids).bind(locked);
        let tasks = fetch(&mut *self.tx, q, rows::task).await?;
        Ok(group(runs, tasks))
    }

    async fn run_ids_of(&mut self, task_ids: &[String]) -> Result<Vec<String>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(PG_RUN_IDS_OF)
            .bind(task_ids)
            .fetch_all(&mut *self.tx)
            .await?)
    }

    async fn claimable(
        &mut self,
        now: i64,
        agents: &[String],
        exclude: &[String],
        limit: usize,
    ) -> Result<Vec<String>> {
        let q = if agents.is_empty() {
            sqlx::query_scalar(PG_CLAIMABLE).bind(now)
        } else {
            let mut agents = agents.to_vec();
            agents.sort_unstable();
            agents.dedup();
            sqlx::query_scalar(PG_CLAIMABLE_OF).bind(now).bind(agents)
        };
        Ok(q.bind(exclude)
            .bind(limit as i64)
            .fetch_all(&mut *self.tx)
            .await?)
    }

    async fn overdue(&mut self, now: i64, limit: usize) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(PG_OVERDUE)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(&mut *self.tx)
            .await?)
    }

    async fn running_per_key(&mut self, keys: &[String]) -> Result<HashMap<String, u32>> {
        sqlx::query(PG_ADD_CONCURRENCY_KEYS)
            .bind(keys)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query(PG_LOCK_CONCURRENCY_KEYS)
            .bind(keys)
            .execute(&mut *self.tx)
            .await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(PG_RUNNING_PER_KEY)
            .bind(keys)
            .fetch_all(&mut *self.tx)
            .await?;
        Ok(rows.into_iter().map(|(k, n)| (k, n as u32)).collect())
    }

    async fn rate_limits(
        &mut self,
        agents: &[String],
    ) -> Result<HashMap<String, (RateLimit, f64)>> {
        let rows: Vec<(String, f64, i64, f64)> = sqlx::query_as(PG_LOCK_RATE_LIMITS)
            .bind(agents)
            .fetch_all(&mut *self.tx)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(a, per_second, burst, tat)| (a, (rows::rate_limit(per_second, burst), tat)))
            .collect())
    }

    async fn save_rate_tats(&mut self, tats: &[(String, f64)]) -> Result<()> {
        let agents: Vec<&str> = tats.iter().map(|(a, _)| a.as_str()).collect();
        let values: Vec<f64> = tats.iter().map(|(_, t)| *t).collect();
        sqlx::query(PG_SAVE_RATE_TATS)
            .bind(agents)
            .bind(values)
            .execute(&mut *self.tx)
            .await?;
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
            sqlx::query(PG_INSERT_AGENT_SPECS)
                .bind(agents.iter().map(|a| a.agent.as_str()).collect::<Vec<_>>())
                .bind(
                    agents
                        .iter()
                        .map(|a| a.version.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(agents.iter().map(|a| a.spec.as_slice()).collect::<Vec<_>>())
                .execute(&mut *self.tx)
                .await?;
        }
        // Replicas and the outbox relay wake on a notification: one when
        // there are events or claimable tasks.
        let claimable = tasks.iter().any(|t| t.state.is_claimable());
        let what = if claimable { "ready" } else { "events" };
        let notice = format!("{}:{what}", self.instance);
        let notify = claimable || !events.is_empty();
        if !runs.is_empty() || !tasks.is_empty() || notify {
            let q = bind_runs(sqlx::query(PG_WRITE), runs);
            let q = bind_events(bind_tasks(q, tasks), events)
                .bind(!self.outbox)
                .bind(CHANNEL)
                .bind(notice)
                .bind(notify);
            let row = q.fetch_one(&mut *self.tx).await?;
            all_written(row.try_get::<i64, _>(0)? as u64, runs.len(), "runs")?;
            all_written(row.try_get::<i64, _>(1)? as u64, tasks.len(), "tasks")?;
            let ids: Vec<i64> = row.try_get(3)?;
            let event_ids: Vec<String> = row.try_get(4)?;
            let ids: HashMap<String, i64> = event_ids.into_iter().zip(ids).collect();
            for e in events.iter_mut() {
                e.id = ids.get(&e.event_id).copied().unwrap_or_default();
            }
        }
        if !logs.is_empty() {
            sqlx::query(PG_INSERT_LOGS)
                .bind(logs.iter().map(|l| l.task_id.as_str()).collect::<Vec<_>>())
                .bind(
                    logs.iter()
                        .map(|l| i64::from(l.attempt))
                        .collect::<Vec<_>>(),
                )
                .bind(logs.iter().map(|l| l.time).collect::<Vec<_>>())
                .bind(logs.iter().map(|l| l.stream.as_str()).collect::<Vec<_>>())
                .bind(logs.iter().map(|l| l.line.as_str()).collect::<Vec<_>>())
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    async fn log_lines(&mut self, task_id: &str, attempt: u32) -> Result<u32> {
        let n: i64 = sqlx::query_scalar(LOG_LINES)
            .bind(task_id)
            .bind(i64::from(attempt))
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(rows::count(n))
    }

    async fn leased_to(&mut self, worker_id: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(LEASED_TO)
            .bind(worker_id)
            .fetch_all(&mut *self.tx)
            .await?)
    }

    async fn announce(&mut self, payloads: &[String]) -> Result<()> {
        let tagged: Vec<String> = payloads
            .iter()
            .map(|p| format!("{}:notice:{p}", self.instance))
            .collect();
        sqlx::query(PG_NOTIFY_EACH)
            .bind(CHANNEL)
            .bind(tagged)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn next_due(&mut self, now: i64) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(NEXT_DUE)
            .bind(now)
            .fetch_one(&mut *self.tx)
            .await?)
    }
}

/// Binds events as the ten arrays of the events' `UNNEST`, in its order.
fn bind_events<'q>(q: PgQuery<'q>, events: &'q [EventRow]) -> PgQuery<'q> {
    let s = |f: fn(&EventRow) -> &str| events.iter().map(f).collect::<Vec<&str>>();
    q.bind(s(|e| e.event_id.as_str()))
        .bind(s(|e| e.run_id.as_str()))
        .bind(events.iter().map(|e| e.seq).collect::<Vec<_>>())
        .bind(s(|e| e.kind.as_str()))
        .bind(s(|e| e.task_id.as_str()))
        .bind(s(|e| e.task_key.as_str()))
        .bind(
            events
                .iter()
                .map(|e| i64::from(e.attempt))
                .collect::<Vec<_>>(),
        )
        .bind(s(|e| e.worker_id.as_str()))
        .bind(s(|e| e.message.as_str()))
        .bind(events.iter().map(|e| e.time).collect::<Vec<_>>())
}
