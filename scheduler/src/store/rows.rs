//! Conversions between rows and the flat columns both stores keep.

use crate::error::{Error, Result};
use crate::model::*;

pub const TASK_COLUMNS: &str = "id, run_id, key, agent, agent_version, state, attempt, priority, input, output, \
     error, deps_pending, depends_on, dependents, retry, timeouts, concurrency_key, concurrency_limit, \
     ready_at, lease_id, lease_expires, attempt_deadline, schedule_deadline, worker_id, create_time, \
     start_time, end_time, rev";

pub const RUN_COLUMNS: &str = "id, workflow, workflow_revision, state, inputs, idempotency_key, created_by, \
     failure_policy, create_time, end_time, last_seq, rev";

pub const EVENT_COLUMNS: &str =
    "id, event_id, run_id, seq, kind, task_id, task_key, attempt, worker_id, message, time";

/// A task as columns: JSON for the structured fields.
#[derive(Debug, Clone, sqlx::FromRow)]
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
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("scheduler types always serialize")
}

fn parse<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
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
            error: t.error.as_ref().map(json),
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
        }
    }
}

impl TryFrom<TaskRecord> for TaskRow {
    type Error = Error;
    fn try_from(r: TaskRecord) -> Result<TaskRow> {
        let n = |v: i64| v.clamp(0, i64::from(u32::MAX)) as u32;
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
            attempt: n(r.attempt),
            priority: r.priority.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
            deps_pending: n(r.deps_pending),
            concurrency_limit: n(r.concurrency_limit),
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
        })
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
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

#[derive(Debug, Clone, sqlx::FromRow)]
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
            attempt: r.attempt.clamp(0, i64::from(u32::MAX)) as u32,
            id: r.id,
            event_id: r.event_id,
            run_id: r.run_id,
            seq: r.seq,
            task_id: r.task_id,
            task_key: r.task_key,
            worker_id: r.worker_id,
            message: r.message,
            time: r.time,
        })
    }
}
