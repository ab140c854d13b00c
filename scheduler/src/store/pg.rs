//! The scheduler on PostgreSQL: multi-row statements (`UNNEST`), row locks
//! with `FOR UPDATE [SKIP LOCKED]`, and `LISTEN/NOTIFY` so that schedulers
//! sharing a database wake each other.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Row, Transaction};

use super::rows::*;
use super::{Applied, Batch, SchedulerStore, TxOps, apply_batch};
use crate::error::{Error, Result};
use crate::model::*;

/// Channel on which a commit announces new claimable tasks or events.
pub const CHANNEL: &str = "devcycle_scheduler";

/// A new revision of a workflow, inserted only if `$4` owns it (or it is
/// new, or `$5`: any owner); returns its revision and owner.
pub(super) const PUT_WORKFLOW: &str = "INSERT INTO sched_workflows (name, revision, spec, create_time, owner) \
     SELECT $1, s.rev, $2, $3, COALESCE(s.owner, $4) \
     FROM (SELECT COALESCE(MAX(revision), 0) + 1 AS rev, \
       (SELECT owner FROM sched_workflows WHERE name = $1 ORDER BY revision DESC LIMIT 1) AS owner \
       FROM sched_workflows WHERE name = $1) AS s \
     WHERE $5 OR COALESCE(s.owner, $4) = $4 \
     RETURNING revision, owner";

pub struct PgStore {
    pool: PgPool,
    /// Tags this process's notifications so its listener can skip them.
    instance: String,
    /// Events wait for the relay (`published = false`) only with an outbox.
    outbox: bool,
}

impl PgStore {
    pub fn new(pool: PgPool, instance: String, outbox: bool) -> Self {
        Self {
            pool,
            instance,
            outbox,
        }
    }
}

struct PgTx<'a> {
    tx: Transaction<'a, Postgres>,
    instance: &'a str,
    outbox: bool,
}

fn task_select(filter: &str) -> String {
    format!("SELECT {TASK_COLUMNS} FROM sched_tasks {filter}")
}

fn run_select(filter: &str) -> String {
    format!("SELECT {RUN_COLUMNS} FROM sched_runs {filter}")
}

async fn fetch_tasks<'e, E: sqlx::PgExecutor<'e>>(
    e: E,
    sql: String,
    ids: &[String],
) -> Result<Vec<TaskRow>> {
    sqlx::query_as::<_, TaskRecord>(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(e)
        .await?
        .into_iter()
        .map(TaskRow::try_from)
        .collect()
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

impl TxOps for PgTx<'_> {
    async fn insert_runs(&mut self, runs: &[RunRow]) -> Result<Vec<Option<String>>> {
        let recs: Vec<RunRecord> = runs.iter().map(RunRecord::from).collect();
        let col = |f: fn(&RunRecord) -> String| recs.iter().map(f).collect::<Vec<String>>();
        let num = |f: fn(&RunRecord) -> i64| recs.iter().map(f).collect::<Vec<i64>>();
        let keys: Vec<Option<String>> = recs.iter().map(|r| r.idempotency_key.clone()).collect();
        let inserted: Vec<String> = sqlx::query_scalar(
            "INSERT INTO sched_runs (id, workflow, workflow_revision, state, inputs, idempotency_key, created_by, \
             failure_policy, create_time, end_time, last_seq, rev) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::int8[]) \
             ON CONFLICT (created_by, idempotency_key) DO NOTHING RETURNING id",
        )
        .bind(col(|r| r.id.clone()))
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
        .fetch_all(&mut *self.tx)
        .await?;
        if inserted.len() == runs.len() {
            return Ok(vec![None; runs.len()]);
        }
        let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
        let taken: Vec<&RunRow> = runs.iter().filter(|r| !inserted.contains(&r.id)).collect();
        let existing: HashMap<(String, String), String> =
            sqlx::query_as::<_, (String, String, String)>(
                "SELECT created_by, idempotency_key, id FROM sched_runs \
                 WHERE (created_by, idempotency_key) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
            )
            .bind(taken.iter().map(|r| r.created_by.as_str()).collect::<Vec<_>>())
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
        let lock = if skip_locked {
            "FOR UPDATE SKIP LOCKED"
        } else {
            "FOR UPDATE"
        };
        let runs: Vec<RunRow> = sqlx::query_as::<_, RunRecord>(sqlx::AssertSqlSafe(run_select(
            &format!("WHERE id = ANY($1) ORDER BY id {lock}"),
        )))
        .bind(run_ids)
        .fetch_all(&mut *self.tx)
        .await?
        .into_iter()
        .map(RunRow::try_from)
        .collect::<Result<_>>()?;
        let locked: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
        let tasks = fetch_tasks(
            &mut *self.tx,
            task_select("WHERE run_id = ANY($1) FOR UPDATE"),
            &locked,
        )
        .await?;
        Ok(group(runs, tasks))
    }

    async fn load_tasks(&mut self, task_ids: &[String]) -> Result<Vec<(RunRow, Vec<TaskRow>)>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let runs: Vec<RunRow> = sqlx::query_as::<_, RunRecord>(sqlx::AssertSqlSafe(run_select(
            "WHERE id IN (SELECT run_id FROM sched_tasks WHERE id = ANY($1)) ORDER BY id FOR UPDATE SKIP LOCKED",
        )))
        .bind(task_ids)
        .fetch_all(&mut *self.tx)
        .await?
        .into_iter()
        .map(RunRow::try_from)
        .collect::<Result<_>>()?;
        let locked: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
        let tasks: Vec<TaskRow> = sqlx::query_as::<_, TaskRecord>(sqlx::AssertSqlSafe(
            task_select("WHERE id = ANY($1) AND run_id = ANY($2) FOR UPDATE"),
        ))
        .bind(task_ids)
        .bind(&locked)
        .fetch_all(&mut *self.tx)
        .await?
        .into_iter()
        .map(TaskRow::try_from)
        .collect::<Result<_>>()?;
        Ok(group(runs, tasks))
    }

    async fn run_ids_of(&mut self, task_ids: &[String]) -> Result<Vec<String>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(
            sqlx::query_scalar("SELECT DISTINCT run_id FROM sched_tasks WHERE id = ANY($1)")
                .bind(task_ids)
                .fetch_all(&mut *self.tx)
                .await?,
        )
    }

    async fn claimable(
        &mut self,
        now: i64,
        agents: &[String],
        exclude: &[String],
        limit: usize,
    ) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sched_tasks WHERE state IN ('ready', 'failed') AND ready_at <= $1 \
             AND (cardinality($2::text[]) = 0 OR agent = ANY($2)) AND NOT (id = ANY($3)) \
             ORDER BY priority DESC, ready_at, id LIMIT $4",
        )
        .bind(now)
        .bind(agents)
        .bind(exclude)
        .bind(limit as i64)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    async fn overdue(&mut self, now: i64, limit: usize) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "(SELECT id FROM sched_tasks WHERE state = 'leased' AND lease_expires <= $1 LIMIT $2) \
             UNION ALL (SELECT id FROM sched_tasks WHERE state IN ('ready', 'failed') \
             AND schedule_deadline > 0 AND schedule_deadline <= $1 LIMIT $2)",
        )
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    async fn running_per_key(&mut self, keys: &[String]) -> Result<HashMap<String, u32>> {
        sqlx::query(
            "INSERT INTO sched_concurrency (key) SELECT UNNEST($1::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(keys)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query(
            "SELECT key FROM sched_concurrency WHERE key = ANY($1) ORDER BY key FOR UPDATE",
        )
        .bind(keys)
        .execute(&mut *self.tx)
        .await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT concurrency_key, COUNT(*) FROM sched_tasks WHERE state = 'leased' \
             AND concurrency_key = ANY($1) GROUP BY concurrency_key",
        )
        .bind(keys)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().map(|(k, n)| (k, n as u32)).collect())
    }

    async fn rate_limits(
        &mut self,
        agents: &[String],
    ) -> Result<HashMap<String, (RateLimit, f64)>> {
        let rows: Vec<(String, f64, i64, f64)> = sqlx::query_as(
            "SELECT agent, per_second, burst, tat FROM sched_rate_limits WHERE agent = ANY($1) \
             ORDER BY agent FOR UPDATE",
        )
        .bind(agents)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(a, per_second, burst, tat)| {
                (
                    a,
                    (
                        RateLimit {
                            per_second,
                            burst: burst.clamp(0, i64::from(u32::MAX)) as u32,
                        },
                        tat,
                    ),
                )
            })
            .collect())
    }

    async fn save_rate_tats(&mut self, tats: &[(String, f64)]) -> Result<()> {
        let agents: Vec<&str> = tats.iter().map(|(a, _)| a.as_str()).collect();
        let values: Vec<f64> = tats.iter().map(|(_, t)| *t).collect();
        sqlx::query(
            "UPDATE sched_rate_limits r SET tat = v.tat FROM UNNEST($1::text[], $2::float8[]) AS v(agent, tat) \
             WHERE r.agent = v.agent",
        )
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
            sqlx::query(
                "INSERT INTO sched_agent_specs (agent, version, spec) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[]) ON CONFLICT DO NOTHING",
            )
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
        if !runs.is_empty() {
            write_runs(&mut self.tx, runs).await?;
        }
        if !tasks.is_empty() {
            write_tasks(&mut self.tx, tasks).await?;
        }
        // Replicas and the outbox relay wake on a notification; one rides
        // with the events' INSERT when there are events.
        let claimable = tasks.iter().any(|t| t.state.is_claimable());
        let what = if claimable { "ready" } else { "events" };
        let notice = format!("{}:{what}", self.instance);
        if !events.is_empty() {
            write_events(&mut self.tx, events, !self.outbox, &notice).await?;
        }
        if !logs.is_empty() {
            sqlx::query(
                "INSERT INTO sched_task_logs (task_id, attempt, time, stream, line) \
                 SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[])",
            )
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
        if claimable && events.is_empty() {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(notice)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    async fn log_lines(&mut self, task_id: &str, attempt: u32) -> Result<u32> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sched_task_logs WHERE task_id = $1 AND attempt = $2",
        )
        .bind(task_id)
        .bind(i64::from(attempt))
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(n.clamp(0, i64::from(u32::MAX)) as u32)
    }

    async fn leased_to(&mut self, worker_id: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sched_tasks WHERE state = 'leased' AND worker_id = $1",
        )
        .bind(worker_id)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    async fn announce(&mut self, payloads: &[String]) -> Result<()> {
        let tagged: Vec<String> = payloads
            .iter()
            .map(|p| format!("{}:notice:{p}", self.instance))
            .collect();
        sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .bind(CHANNEL)
            .bind(tagged)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn next_due(&mut self, now: i64) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(t) FROM ( \
               SELECT MIN(lease_expires) AS t FROM sched_tasks WHERE state = 'leased' \
               UNION ALL SELECT MIN(ready_at) FROM sched_tasks WHERE state = 'failed' AND ready_at > $1 \
               UNION ALL SELECT MIN(schedule_deadline) FROM sched_tasks \
                 WHERE state IN ('ready', 'failed') AND schedule_deadline > 0) AS due",
        )
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await?)
    }
}

async fn write_runs(tx: &mut Transaction<'_, Postgres>, runs: &[RunRow]) -> Result<()> {
    let recs: Vec<RunRecord> = runs.iter().map(RunRecord::from).collect();
    let col = |f: fn(&RunRecord) -> String| recs.iter().map(f).collect::<Vec<String>>();
    let num = |f: fn(&RunRecord) -> i64| recs.iter().map(f).collect::<Vec<i64>>();
    let keys: Vec<Option<String>> = recs.iter().map(|r| r.idempotency_key.clone()).collect();
    let n = sqlx::query(
        "INSERT INTO sched_runs (id, workflow, workflow_revision, state, inputs, idempotency_key, created_by, \
         failure_policy, create_time, end_time, last_seq, rev) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], \
         $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::int8[]) \
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, end_time = excluded.end_time, \
         last_seq = excluded.last_seq, rev = excluded.rev \
         WHERE sched_runs.rev = excluded.rev - 1",
    )
    .bind(col(|r| r.id.clone()))
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
    .execute(&mut **tx)
    .await?
    .rows_affected();
    all_written(n, runs.len(), "runs")
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

async fn write_tasks(tx: &mut Transaction<'_, Postgres>, tasks: &[TaskRow]) -> Result<()> {
    let recs: Vec<TaskRecord> = tasks.iter().map(TaskRecord::from).collect();
    let col = |f: fn(&TaskRecord) -> String| recs.iter().map(f).collect::<Vec<String>>();
    let opt =
        |f: fn(&TaskRecord) -> Option<String>| recs.iter().map(f).collect::<Vec<Option<String>>>();
    let num = |f: fn(&TaskRecord) -> i64| recs.iter().map(f).collect::<Vec<i64>>();
    let n = sqlx::query(
        "INSERT INTO sched_tasks (id, run_id, key, agent, agent_version, state, attempt, priority, input, output, \
         error, deps_pending, depends_on, dependents, retry, timeouts, concurrency_key, concurrency_limit, \
         ready_at, lease_id, lease_expires, attempt_deadline, schedule_deadline, worker_id, create_time, \
         start_time, end_time, rev) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], \
         $8::int8[], $9::text[], $10::text[], $11::text[], $12::int8[], $13::text[], $14::text[], $15::text[], \
         $16::text[], $17::text[], $18::int8[], $19::int8[], $20::text[], $21::int8[], $22::int8[], $23::int8[], \
         $24::text[], $25::int8[], $26::int8[], $27::int8[], $28::int8[]) \
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, attempt = excluded.attempt, \
         input = excluded.input, output = excluded.output, error = excluded.error, \
         deps_pending = excluded.deps_pending, ready_at = excluded.ready_at, lease_id = excluded.lease_id, \
         lease_expires = excluded.lease_expires, attempt_deadline = excluded.attempt_deadline, \
         schedule_deadline = excluded.schedule_deadline, worker_id = excluded.worker_id, \
         start_time = excluded.start_time, end_time = excluded.end_time, rev = excluded.rev \
         WHERE sched_tasks.rev = excluded.rev - 1",
    )
    .bind(col(|r| r.id.clone()))
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
    .execute(&mut **tx)
    .await?
    .rows_affected();
    all_written(n, tasks.len(), "tasks")
}

async fn write_events(
    tx: &mut Transaction<'_, Postgres>,
    events: &mut [EventRow],
    published: bool,
    notice: &str,
) -> Result<()> {
    let s = |f: fn(&EventRow) -> &str| events.iter().map(f).collect::<Vec<&str>>();
    // The notification is an uncorrelated subquery: sent once, at commit.
    let rows = sqlx::query(
        "WITH ins AS (INSERT INTO sched_events (event_id, run_id, seq, kind, task_id, task_key, attempt, \
         worker_id, message, time, published) \
         SELECT *, $11 FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], \
         $7::int8[], $8::text[], $9::text[], $10::int8[]) RETURNING id, event_id) \
         SELECT ins.id, ins.event_id FROM ins, (SELECT pg_notify($12, $13)) AS notified",
    )
    .bind(s(|e| e.event_id.as_str()))
    .bind(s(|e| e.run_id.as_str()))
    .bind(events.iter().map(|e| e.seq).collect::<Vec<_>>())
    .bind(s(|e| e.kind.as_str()))
    .bind(s(|e| e.task_id.as_str()))
    .bind(s(|e| e.task_key.as_str()))
    .bind(events.iter().map(|e| i64::from(e.attempt)).collect::<Vec<_>>())
    .bind(s(|e| e.worker_id.as_str()))
    .bind(s(|e| e.message.as_str()))
    .bind(events.iter().map(|e| e.time).collect::<Vec<_>>())
    .bind(published)
    .bind(CHANNEL)
    .bind(notice)
    .fetch_all(&mut **tx)
    .await?;
    let ids: HashMap<String, i64> = rows
        .into_iter()
        .map(|r| (r.get::<String, _>(1), r.get::<i64, _>(0)))
        .collect();
    for e in events.iter_mut() {
        e.id = ids.get(&e.event_id).copied().unwrap_or_default();
    }
    Ok(())
}

#[async_trait]
impl SchedulerStore for PgStore {
    async fn apply(&self, batch: Batch) -> Result<Applied> {
        let mut tx = PgTx {
            tx: self.pool.begin().await?,
            instance: &self.instance,
            outbox: self.outbox,
        };
        let applied = apply_batch(&mut tx, batch).await?;
        tx.tx.commit().await?;
        Ok(applied)
    }

    async fn put_workflow(
        &self,
        name: &str,
        spec: Vec<u8>,
        now: i64,
        by: &str,
        any_owner: bool,
    ) -> Result<WorkflowRow> {
        let stored: Option<(i64, String)> = sqlx::query_as(PUT_WORKFLOW)
            .bind(name)
            .bind(&spec)
            .bind(now)
            .bind(by)
            .bind(any_owner)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| match devcycle::db::classify(&e) {
                devcycle::db::Failure::UniqueViolation => {
                    Error::Conflict(format!("workflow {name} was changed concurrently; retry"))
                }
                _ => e.into(),
            })?;
        let (revision, owner) = stored.ok_or_else(|| not_owner(name))?;
        Ok(WorkflowRow {
            name: name.to_owned(),
            revision,
            spec,
            create_time: now,
            owner,
        })
    }

    async fn get_workflow(&self, name: &str) -> Result<Option<WorkflowRow>> {
        let row: Option<(String, i64, Vec<u8>, i64, String)> = sqlx::query_as(
            "SELECT name, revision, spec, create_time, owner FROM sched_workflows WHERE name = $1 \
             ORDER BY revision DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(name, revision, spec, create_time, owner)| WorkflowRow {
                name,
                revision,
                spec,
                create_time,
                owner,
            }),
        )
    }

    async fn list_workflows(&self, after: Option<&str>, limit: usize) -> Result<Vec<WorkflowRow>> {
        let rows: Vec<(String, i64, Vec<u8>, i64, String)> = sqlx::query_as(
            "SELECT w.name, w.revision, w.spec, w.create_time, w.owner FROM sched_workflows w WHERE w.name > $1 \
             AND w.revision = (SELECT MAX(revision) FROM sched_workflows x WHERE x.name = w.name) \
             ORDER BY w.name LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(name, revision, spec, create_time, owner)| WorkflowRow {
                name,
                revision,
                spec,
                create_time,
                owner,
            })
            .collect())
    }

    async fn ended_runs(&self, ids: &[String]) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sched_runs WHERE id = ANY($1) AND state <> 'running'",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn get_run(&self, id: &str) -> Result<Option<(RunRow, Vec<TaskRow>)>> {
        let Some(run) =
            sqlx::query_as::<_, RunRecord>(sqlx::AssertSqlSafe(run_select("WHERE id = $1")))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let tasks = fetch_tasks(
            &self.pool,
            task_select("WHERE run_id = ANY($1) ORDER BY id"),
            &[id.to_owned()],
        )
        .await?;
        Ok(Some((RunRow::try_from(run)?, tasks)))
    }

    async fn run_by_key(&self, created_by: &str, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sched_runs WHERE created_by = $1 AND idempotency_key = $2",
        )
        .bind(created_by)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_runs(&self, f: &RunFilter, limit: usize) -> Result<Vec<RunRow>> {
        sqlx::query_as::<_, RunRecord>(sqlx::AssertSqlSafe(run_select(
            "WHERE ($1 = '' OR state = $1) AND ($2 = '' OR workflow = $2) AND create_time >= $3 \
             AND create_time < $4 AND ($5 = '' OR id < $5) AND ($7 = '' OR created_by = $7) \
             ORDER BY id DESC LIMIT $6",
        )))
        .bind(f.state.map(|s| s.as_str()).unwrap_or(""))
        .bind(f.workflow.as_deref().unwrap_or(""))
        .bind(f.created_after.unwrap_or(i64::MIN))
        .bind(f.created_before.unwrap_or(i64::MAX))
        .bind(f.before.as_deref().unwrap_or(""))
        .bind(limit as i64)
        .bind(f.created_by.as_deref().unwrap_or(""))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(RunRow::try_from)
        .collect()
    }

    async fn get_task(&self, id: &str) -> Result<Option<TaskRow>> {
        Ok(fetch_tasks(
            &self.pool,
            task_select("WHERE id = ANY($1)"),
            &[id.to_owned()],
        )
        .await?
        .into_iter()
        .next())
    }

    async fn list_tasks(&self, f: &TaskFilter, limit: usize) -> Result<Vec<TaskRow>> {
        sqlx::query_as::<_, TaskRecord>(sqlx::AssertSqlSafe(task_select(
            "WHERE ($1 = '' OR run_id = $1) AND ($2 = '' OR state = $2) AND id > $3 ORDER BY id LIMIT $4",
        )))
        .bind(f.run_id.as_deref().unwrap_or(""))
        .bind(f.state.map(|s| s.as_str()).unwrap_or(""))
        .bind(f.after.as_deref().unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(TaskRow::try_from)
        .collect()
    }

    async fn run_events(
        &self,
        run_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<EventRow>> {
        sqlx::query_as::<_, EventRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM sched_events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        )))
        .bind(run_id)
        .bind(after_seq)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(EventRow::try_from)
        .collect()
    }

    async fn task_logs(&self, task_id: &str, limit: usize) -> Result<Vec<LogRow>> {
        let rows: Vec<(String, i64, i64, String, String)> = sqlx::query_as(
            "SELECT task_id, attempt, time, stream, line FROM sched_task_logs WHERE task_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(task_id)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(task_id, attempt, time, stream, line)| LogRow {
                task_id,
                attempt: attempt.clamp(0, i64::from(u32::MAX)) as u32,
                time,
                stream,
                line,
            })
            .collect())
    }

    async fn agent_spec(&self, agent: &str, version: &str) -> Result<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar(
            "SELECT spec FROM sched_agent_specs WHERE agent = $1 AND version = $2",
        )
        .bind(agent)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn set_rate_limit(&self, agent: &str, limit: Option<RateLimit>) -> Result<()> {
        match limit {
            None => {
                sqlx::query("DELETE FROM sched_rate_limits WHERE agent = $1")
                    .bind(agent)
                    .execute(&self.pool)
                    .await?;
            }
            Some(l) => {
                sqlx::query(
                    "INSERT INTO sched_rate_limits (agent, per_second, burst, tat) VALUES ($1, $2, $3, 0) \
                     ON CONFLICT (agent) DO UPDATE SET per_second = excluded.per_second, burst = excluded.burst",
                )
                .bind(agent)
                .bind(l.per_second)
                .bind(i64::from(l.burst))
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    async fn outbox(&self, limit: usize) -> Result<Vec<EventRow>> {
        sqlx::query_as::<_, EventRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM sched_events WHERE NOT published ORDER BY id LIMIT $1"
        )))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(EventRow::try_from)
        .collect()
    }

    async fn mark_published(&self, ids: &[i64]) -> Result<()> {
        sqlx::query("UPDATE sched_events SET published = true WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Follows other schedulers' commits: new claimable tasks wake the engine,
/// new events wake `WatchRun` streams and the relay. Ends with `shutdown`.
pub fn listen(
    pool: PgPool,
    instance: String,
    hub: std::sync::Arc<crate::hub::Hub>,
    engine: crate::engine::Engine,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let listener = async {
                let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = match listener.await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler listener cannot listen; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            };
            // Anything committed while we were not listening.
            let _ = engine.send(crate::engine::Cmd::RemoteReady);
            hub.remote_change();
            loop {
                let n = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = listener.try_recv() => n,
                };
                match n {
                    Ok(Some(n)) => {
                        let Some((from, what)) = n.payload().split_once(':') else {
                            continue;
                        };
                        if from == instance {
                            continue;
                        }
                        if let Some(body) = what.strip_prefix("notice:") {
                            remote_notices(&engine, body);
                            continue;
                        }
                        if what == "ready" {
                            let _ = engine.send(crate::engine::Cmd::RemoteReady);
                        }
                        hub.remote_change();
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    });
}

/// Hands another scheduler's notices to the engine.
fn remote_notices(engine: &crate::engine::Engine, body: &str) {
    use crate::engine::Cmd;
    let Some(n) = super::notice::parse(body) else {
        tracing::warn!("unreadable scheduler notice ignored");
        return;
    };
    let cancels = n.cancels();
    if !cancels.is_empty() {
        let _ = engine.send(Cmd::RemoteCancel(cancels));
    }
    for (worker_id, session) in n.w {
        let _ = engine.send(Cmd::RemoteConnect { worker_id, session });
    }
}

pub(super) fn not_owner(name: &str) -> Error {
    Error::PermissionDenied(format!(
        "spec.name: workflow {name} belongs to another user; only its owner, maintainers and admins may replace it"
    ))
}
