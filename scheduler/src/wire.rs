//! Rows to wire types.

use devcycle::proto::scheduler::v1 as pb;
use devcycle::time::to_timestamp;

use crate::model::*;

fn ts(ms: i64) -> Option<prost_types::Timestamp> {
    (ms > 0).then(|| to_timestamp(ms))
}

pub fn task_state(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Ready => pb::TaskState::Ready,
        TaskState::Leased => pb::TaskState::Leased,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Dead => pb::TaskState::Dead,
        TaskState::Cancelled => pb::TaskState::Cancelled,
        TaskState::Waiting => pb::TaskState::Waiting,
    }
}

pub fn task_state_from(s: i32) -> Option<Option<TaskState>> {
    Some(match pb::TaskState::try_from(s).ok()? {
        pb::TaskState::Unspecified => None,
        pb::TaskState::Pending => Some(TaskState::Pending),
        pb::TaskState::Ready => Some(TaskState::Ready),
        pb::TaskState::Leased => Some(TaskState::Leased),
        pb::TaskState::Succeeded => Some(TaskState::Succeeded),
        pb::TaskState::Failed => Some(TaskState::Failed),
        pb::TaskState::Dead => Some(TaskState::Dead),
        pb::TaskState::Cancelled => Some(TaskState::Cancelled),
        pb::TaskState::Waiting => Some(TaskState::Waiting),
    })
}

pub fn run_state(s: RunState) -> pb::RunState {
    match s {
        RunState::Running => pb::RunState::Running,
        RunState::Succeeded => pb::RunState::Succeeded,
        RunState::Failed => pb::RunState::Failed,
        RunState::Cancelled => pb::RunState::Cancelled,
    }
}

pub fn run_state_from(s: i32) -> Option<Option<RunState>> {
    Some(match pb::RunState::try_from(s).ok()? {
        pb::RunState::Unspecified => None,
        pb::RunState::Running => Some(RunState::Running),
        pb::RunState::Succeeded => Some(RunState::Succeeded),
        pb::RunState::Failed => Some(RunState::Failed),
        pb::RunState::Cancelled => Some(RunState::Cancelled),
    })
}

pub fn task(t: &TaskRow) -> pb::Task {
    pb::Task {
        id: t.id.clone(),
        run_id: t.run_id.clone(),
        key: t.key.clone(),
        agent: t.agent.clone(),
        agent_version: t.agent_version.clone(),
        state: task_state(t.state) as i32,
        attempt: t.attempt,
        max_attempts: t.retry.max_attempts,
        priority: t.priority,
        input: t.input.clone(),
        output: t.output.clone().unwrap_or_default(),
        error: t.error.as_ref().map(|e| pb::TaskError {
            kind: e.kind.clone(),
            message: e.message.clone(),
            retryable: e.retryable,
        }),
        depends_on: t.depends_on.clone(),
        worker_id: t.worker_id.clone(),
        ready_time: if t.state.is_claimable() {
            ts(t.ready_at)
        } else {
            None
        },
        lease_expire_time: if t.state == TaskState::Leased {
            ts(t.lease_expires)
        } else {
            None
        },
        create_time: ts(t.create_time),
        start_time: ts(t.start_time),
        end_time: ts(t.end_time),
        concurrency_key: t.concurrency_key.clone(),
    }
}

pub fn run(r: &RunRow, tasks: &[TaskRow]) -> pb::Run {
    pb::Run {
        id: r.id.clone(),
        workflow: r.workflow.clone(),
        workflow_revision: r.workflow_revision,
        state: run_state(r.state) as i32,
        inputs: r.inputs.clone(),
        idempotency_key: r.idempotency_key.clone().unwrap_or_default(),
        created_by: r.created_by.clone(),
        create_time: ts(r.create_time),
        end_time: ts(r.end_time),
        tasks: tasks.iter().map(task).collect(),
    }
}

pub fn event_kind(k: EventKind) -> pb::RunEventKind {
    match k {
        EventKind::RunStarted => pb::RunEventKind::RunStarted,
        EventKind::TaskReady => pb::RunEventKind::TaskReady,
        EventKind::TaskLeased => pb::RunEventKind::TaskLeased,
        EventKind::TaskSucceeded => pb::RunEventKind::TaskSucceeded,
        EventKind::TaskFailed => pb::RunEventKind::TaskFailed,
        EventKind::TaskDead => pb::RunEventKind::TaskDead,
        EventKind::TaskCancelled => pb::RunEventKind::TaskCancelled,
        EventKind::TaskProgress => pb::RunEventKind::TaskProgress,
        EventKind::RunSucceeded => pb::RunEventKind::RunSucceeded,
        EventKind::RunFailed => pb::RunEventKind::RunFailed,
        EventKind::RunCancelled => pb::RunEventKind::RunCancelled,
        EventKind::TaskRequeued => pb::RunEventKind::TaskRequeued,
        EventKind::TaskWaiting => pb::RunEventKind::TaskWaiting,
    }
}

pub fn event(e: &EventRow) -> pb::RunEvent {
    pb::RunEvent {
        event_id: e.event_id.clone(),
        run_id: e.run_id.clone(),
        sequence: e.seq,
        kind: event_kind(e.kind) as i32,
        task_id: e.task_id.clone(),
        task_key: e.task_key.clone(),
        attempt: e.attempt,
        worker_id: e.worker_id.clone(),
        message: e.message.clone(),
        time: ts(e.time),
    }
}
