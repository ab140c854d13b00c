//! Conversions between rows and the flat columns both stores keep: one
//! mapper per record, read through [`Columns`] from either engine's rows,
//! and one encoder (`From<&TaskRow>`, `From<&RunRow>`) whose values both
//! engines bind.

use sqlx::Row as _;

use crate::error::{Error, Result};
use crate::model::*;

/// A value both engines can decode from a column.
pub trait Value:
    for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + rusqlite::types::FromSql
{
}

impl<T> Value for T where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
        + rusqlite::types::FromSql
{
}

/// A result row of either engine, read by column index.
pub trait Columns {
    fn get<T: Value>(&self, i: usize) -> Result<T>;
}

impl Columns for sqlx::postgres::PgRow {
    fn get<T: Value>(&self, i: usize) -> Result<T> {
        Ok(self.try_get(i)?)
    }
}

impl Columns for rusqlite::Row<'_> {
    fn get<T: Value>(&self, i: usize) -> Result<T> {
        Ok(rusqlite::Row::get(self, i)?)
    }
}

/// `n` as a count, clamped into `u32`.
pub fn count(n: i64) -> u32 {
    n.clamp(0, i64::from(u32::MAX)) as u32
}

/// A task as columns: JSON for the structured fields.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub id: String,
    pub run_id: String,
    pub key: String,
    pub agent: String,
    pub agent_version: String,
    pub state: String,
    pub attempt: i64,
    pub priority: i64,
    pub input: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub deps_pending: i64,
    pub depends_on: String,
    pub dependents: String,
    pub retry: String,
    pub timeouts: String,
    pub concurrency_key: String,
    pub concurrency_limit: i64,
    pub ready_at: i64,
    pub lease_id: String,
    pub lease_expires: i64,
    pub attempt_deadline: i64,
    pub schedule_deadline: i64,
    pub worker_id: String,
    pub create_time: i64,
    pub start_time: i64,
    pub end_time: i64,
    pub rev: i64,
    pub traceparent: String,
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("scheduler types always serialize")
}

fn parse<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// A task's error as stored.
pub fn error_json(e: Option<&TaskError>) -> Option<String> {
    e.map(json)
}

impl From<&TaskRow> for TaskRecord {
    fn from(t: &TaskRow) -> Self {
        Self {
            id: t.id.clone(),
            run_id: t.run_id.clone(),
            key: t.key.clone(),
            agent: t.agent.clone(),
            agent_version: t.agent_version.clone(),
            state: t.state.as_str().to_owned(),
            attempt: i64::from(t.attempt),
            priority: i64::from(t.priority),
            input: t.input.clone(),
            output: t.output.clone(),
            error: error_json(t.error.as_ref()),
            deps_pending: i64::from(t.deps_pending),
            depends_on: json(&t.depends_on),
            dependents: json(&t.dependents),
            retry: json(&t.retry),
            timeouts: json(&t.timeouts),
            concurrency_key: t.concurrency_key.clone(),
            concurrency_limit: i64::from(t.concurrency_limit),
            ready_at: t.ready_at,
            lease_id: t.lease_id.clone(),
            lease_expires: t.lease_expires,
            attempt_deadline: t.attempt_deadline,
            schedule_deadline: t.schedule_deadline,
            worker_id: t.worker_id.clone(),
            create_time: t.create_time,
            start_time: t.start_time,
            end_time: t.end_time,
            rev: t.rev,
            traceparent: t.traceparent.clone(),
        }
    }
}

impl TryFrom<TaskRecord> for TaskRow {
    type Error = Error;
    fn try_from(r: TaskRecord) -> Result<TaskRow> {
        Ok(TaskRow {
            state: TaskState::parse(&r.state)
                .ok_or_else(|| Error::Corrupt(format!("task state {}", r.state)))?,
            error: r
                .error
                .as_deref()
                .map(|e| parse(e, "task error"))
                .transpose()?,
            depends_on: parse(&r.depends_on, "depends_on")?,
            dependents: parse(&r.dependents, "dependents")?,
            retry: parse(&r.retry, "retry")?,
            timeouts: parse(&r.timeouts, "timeouts")?,
            attempt: count(r.attempt),
            priority: r.priority.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
            deps_pending: count(r.deps_pending),
            concurrency_limit: count(r.concurrency_limit),
            id: r.id,
            run_id: r.run_id,
            key: r.key,
            agent: r.agent,
            agent_version: r.agent_version,
            input: r.input,
            output: r.output,
            concurrency_key: r.concurrency_key,
            ready_at: r.ready_at,
            lease_id: r.lease_id,
            lease_expires: r.lease_expires,
            attempt_deadline: r.attempt_deadline,
            schedule_deadline: r.schedule_deadline,
            worker_id: r.worker_id,
            create_time: r.create_time,
            start_time: r.start_time,
            end_time: r.end_time,
            rev: r.rev,
            traceparent: r.traceparent,
        })
    }
}

#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: String,
    pub workflow: String,
    pub workflow_revision: i64,
    pub state: String,
    pub inputs: String,
    pub idempotency_key: Option<String>,
    pub created_by: String,
    pub failure_policy: String,
    pub create_time: i64,
    pub end_time: i64,
    pub last_seq: i64,
    pub rev: i64,
}

pub fn policy_str(p: FailurePolicy) -> &'static str {
    match p {
        FailurePolicy::FailFast => "fail_fast",
        FailurePolicy::Continue => "continue",
    }
}

impl From<&RunRow> for RunRecord {
    fn from(r: &RunRow) -> Self {
        Self {
            id: r.id.clone(),
            workflow: r.workflow.clone(),
            workflow_revision: r.workflow_revision,
            state: r.state.as_str().to_owned(),
            inputs: r.inputs.clone(),
            idempotency_key: r.idempotency_key.clone(),
            created_by: r.created_by.clone(),
            failure_policy: policy_str(r.failure_policy).to_owned(),
            create_time: r.create_time,
            end_time: r.end_time,
            last_seq: r.last_seq,
            rev: r.rev,
        }
    }
}

impl TryFrom<RunRecord> for RunRow {
    type Error = Error;
    fn try_from(r: RunRecord) -> Result<RunRow> {
        Ok(RunRow {
            state: RunState::parse(&r.state)
                .ok_or_else(|| Error::Corrupt(format!("run state {}", r.state)))?,
            failure_policy: if r.failure_policy == "continue" {
                FailurePolicy::Continue
            } else {
                FailurePolicy::FailFast
            },
            id: r.id,
            workflow: r.workflow,
            workflow_revision: r.workflow_revision,
            inputs: r.inputs,
            idempotency_key: r.idempotency_key,
            created_by: r.created_by,
            create_time: r.create_time,
            end_time: r.end_time,
            last_seq: r.last_seq,
            rev: r.rev,
        })
    }
}

#[derive(Debug, Clone)]
pub struct EventRecord {
    pub id: i64,
    pub event_id: String,
    pub run_id: String,
    pub seq: i64,
    pub kind: String,
    pub task_id: String,
    pub task_key: String,
    pub attempt: i64,
    pub worker_id: String,
    pub message: String,
    pub time: i64,
}

impl TryFrom<EventRecord> for EventRow {
    type Error = Error;
    fn try_from(r: EventRecord) -> Result<EventRow> {
        Ok(EventRow {
            kind: EventKind::parse(&r.kind)
                .ok_or_else(|| Error::Corrupt(format!("event kind {}", r.kind)))?,
            attempt: count(r.attempt),
            id: r.id,
            event_id: r.event_id,
            run_id: r.run_id,
            seq: r.seq,
            task_id: r.task_id,
            task_key: r.task_key,
            worker_id: r.worker_id,
            message: r.message,
            time: r.time,
            traceparent: String::new(),
        })
    }
}

/// One mapper per record: columns in the order of `sql::*_columns!`.
pub fn task(r: &impl Columns) -> Result<TaskRow> {
    TaskRow::try_from(TaskRecord {
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
        traceparent: r.get(28)?,
    })
}

pub fn run(r: &impl Columns) -> Result<RunRow> {
    RunRow::try_from(RunRecord {
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

pub fn event(r: &impl Columns) -> Result<EventRow> {
    EventRow::try_from(EventRecord {
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

/// An event of `*_OUTBOX`: its columns, then its task's trace context.
pub fn outbox_event(r: &impl Columns) -> Result<EventRow> {
    Ok(EventRow {
        traceparent: r.get(11)?,
        ..event(r)?
    })
}

pub fn workflow(r: &impl Columns) -> Result<WorkflowRow> {
    Ok(WorkflowRow {
        name: r.get(0)?,
        revision: r.get(1)?,
        spec: r.get(2)?,
        create_time: r.get(3)?,
        owner: r.get(4)?,
    })
}

pub fn log(r: &impl Columns) -> Result<LogRow> {
    Ok(LogRow {
        task_id: r.get(0)?,
        attempt: count(r.get(1)?),
        time: r.get(2)?,
        stream: r.get(3)?,
        line: r.get(4)?,
    })
}

pub fn rate_limit(per_second: f64, burst: i64) -> RateLimit {
    RateLimit {
        per_second,
        burst: count(burst),
    }
}

/// One row of `*_QUEUE_STATS`.
pub fn stat(r: &impl Columns) -> Result<(String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}
