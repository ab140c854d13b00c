//! The scheduler on PostgreSQL: multi-row statements (`UNNEST`), row locks
//! with `FOR UPDATE [SKIP LOCKED]`, and `LISTEN/NOTIFY` so that schedulers
//! sharing a database wake each other. Statements are in [`super::sql`].

use async_trait::async_trait;
use sqlx::postgres::PgPool;

pub use self::listen::listen;
use self::tx::{PgTx, fetch};
use super::rows;
use super::sql::*;
use super::{Applied, Batch, SchedulerStore, apply_batch};
use crate::error::{Error, Result};
use crate::model::*;

mod listen;
mod schedules;
mod tx;

/// Channel on which a commit announces new claimable tasks or events.
pub const CHANNEL: &str = "devcycle_scheduler";

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
        let (revision, owner) = stored.ok_or_else(|| super::not_owner(name))?;
        Ok(WorkflowRow {
            name: name.to_owned(),
            revision,
            spec,
            create_time: now,
            owner,
        })
    }

    async fn get_workflow(&self, name: &str) -> Result<Option<WorkflowRow>> {
        let q = sqlx::query(GET_WORKFLOW).bind(name);
        q.fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::workflow)
            .transpose()
    }

    async fn list_workflows(&self, after: Option<&str>, limit: usize) -> Result<Vec<WorkflowRow>> {
        let q = sqlx::query(LIST_WORKFLOWS)
            .bind(after.unwrap_or(""))
            .bind(limit as i64);
        fetch(&self.pool, q, rows::workflow).await
    }

    async fn ended_runs(&self, ids: &[String]) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(PG_ENDED_RUNS)
            .bind(ids)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn get_run(&self, id: &str) -> Result<Option<(RunRow, Vec<TaskRow>)>> {
        let run = sqlx::query(RUN).bind(id).fetch_optional(&self.pool).await?;
        let Some(run) = run.as_ref().map(rows::run).transpose()? else {
            return Ok(None);
        };
        let tasks = fetch(&self.pool, sqlx::query(TASKS_OF_RUN).bind(id), rows::task).await?;
        Ok(Some((run, tasks)))
    }

    async fn run_by_key(&self, created_by: &str, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(RUN_BY_KEY)
            .bind(created_by)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn list_runs(&self, f: &RunFilter, limit: usize) -> Result<Vec<RunRow>> {
        // Optional filters: planned per execution (see `On::list` in the
        // registry), so the chosen filters' indexes serve.
        let q = sqlx::query(LIST_RUNS)
            .persistent(false)
            .bind(f.state.map(|s| s.as_str()).unwrap_or(""))
            .bind(f.workflow.as_deref().unwrap_or(""))
            .bind(f.created_after.unwrap_or(i64::MIN))
            .bind(f.created_before.unwrap_or(i64::MAX))
            .bind(f.before.as_deref().unwrap_or(""))
            .bind(limit as i64)
            .bind(f.created_by.as_deref().unwrap_or(""));
        fetch(&self.pool, q, rows::run).await
    }

    async fn get_task(&self, id: &str) -> Result<Option<TaskRow>> {
        let q = sqlx::query(TASK).bind(id);
        let task = q.fetch_optional(&self.pool).await?;
        task.as_ref().map(rows::task).transpose()
    }

    async fn list_tasks(&self, f: &TaskFilter, limit: usize) -> Result<Vec<TaskRow>> {
        let q = sqlx::query(LIST_TASKS)
            .persistent(false)
            .bind(f.run_id.as_deref().unwrap_or(""))
            .bind(f.state.map(|s| s.as_str()).unwrap_or(""))
            .bind(f.after.as_deref().unwrap_or(""))
            .bind(limit as i64);
        fetch(&self.pool, q, rows::task).await
    }

    async fn run_events(
        &self,
        run_id: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<EventRow>> {
        let q = sqlx::query(RUN_EVENTS)
            .bind(run_id)
            .bind(after_seq)
            .bind(limit as i64);
        fetch(&self.pool, q, rows::event).await
    }

    async fn task_logs(&self, task_id: &str, limit: usize) -> Result<Vec<LogRow>> {
        let q = sqlx::query(TASK_LOGS).bind(task_id).bind(limit as i64);
        fetch(&self.pool, q, rows::log).await
    }

    async fn agent_spec(&self, agent: &str, version: &str) -> Result<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar(AGENT_SPEC)
            .bind(agent)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn set_rate_limit(&self, agent: &str, limit: Option<RateLimit>) -> Result<()> {
        let q = match limit {
            None => sqlx::query(DELETE_RATE_LIMIT).bind(agent),
            Some(l) => sqlx::query(PUT_RATE_LIMIT)
                .bind(agent)
                .bind(l.per_second)
                .bind(i64::from(l.burst)),
        };
        q.execute(&self.pool).await?;
        Ok(())
    }

    async fn queue_stats(&self) -> Result<Vec<(String, String, i64)>> {
        let q = sqlx::query(PG_QUEUE_STATS);
        fetch(&self.pool, q, rows::stat).await
    }

    async fn outbox(&self, limit: usize) -> Result<Vec<EventRow>> {
        let q = sqlx::query(PG_OUTBOX).bind(limit as i64);
        fetch(&self.pool, q, rows::outbox_event).await
    }

    async fn mark_published(&self, ids: &[i64]) -> Result<()> {
        sqlx::query(PG_MARK_PUBLISHED)
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
