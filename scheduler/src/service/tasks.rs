//! Tasks, their logs, the dead-letter queue and agent rate limits.

use devcycle::page;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::validate::{self, FieldError};

use super::access::Scopes;
use super::{SchedulerService, check_id};
use crate::error::{Error, Result};
use crate::model::*;
use crate::store::Op;
use crate::wire;

pub(super) async fn get_task(
    svc: &SchedulerService,
    scope: Option<String>,
    r: pb::GetTaskRequest,
) -> Result<pb::GetTaskResponse> {
    let id = &r.task_id;
    check_id("task_id", id)?;
    svc.check_task_owner(&scope, id).await?;
    let t = svc
        .store
        .get_task(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("task {id} does not exist")))?;
    Ok(pb::GetTaskResponse {
        task: Some(wire::task(&t)),
    })
}

pub(super) async fn list_tasks(
    svc: &SchedulerService,
    scope: Option<String>,
    r: pb::ListTasksRequest,
) -> Result<pb::ListTasksResponse> {
    if !r.run_id.is_empty() {
        check_id("run_id", &r.run_id)?;
        svc.check_owner(&scope, &r.run_id).await?;
    } else if scope.is_some() {
        return Err(Error::PermissionDenied(
            "run_id: required: your role lists the tasks of your own runs only".into(),
        ));
    }
    let size = page::page_size(r.page_size)?;
    let filter = TaskFilter {
        run_id: (!r.run_id.is_empty()).then_some(r.run_id),
        state: wire::task_state_from(r.state)
            .ok_or_else(|| FieldError::new("state", "unknown task state"))?,
        after: page::decode_token(&r.page_token)?,
    };
    let mut tasks = svc.store.list_tasks(&filter, size + 1).await?;
    let next_page_token = page::finish(&mut tasks, size, |t| t.id.clone());
    Ok(pb::ListTasksResponse {
        tasks: tasks.iter().map(wire::task).collect(),
        next_page_token,
    })
}

pub(super) async fn retry_task(
    svc: &SchedulerService,
    scopes: Scopes,
    r: pb::RetryTaskRequest,
) -> Result<pb::RetryTaskResponse> {
    let id = r.task_id;
    check_id("task_id", &id)?;
    svc.check_task_writer(&scopes, &id).await?;
    Ok(pb::RetryTaskResponse {
        task: Some(svc.retry(id).await?),
    })
}

pub(super) async fn get_task_logs(
    svc: &SchedulerService,
    scope: Option<String>,
    r: pb::GetTaskLogsRequest,
) -> Result<pb::GetTaskLogsResponse> {
    check_id("task_id", &r.task_id)?;
    svc.check_task_owner(&scope, &r.task_id).await?;
    if r.limit < 0 {
        return Err(FieldError::new("limit", "must not be negative").into());
    }
    let limit = if r.limit == 0 {
        1000
    } else {
        (r.limit as usize).min(1000)
    };
    let rows = svc.store.task_logs(&r.task_id, limit).await?;
    let truncated = rows.iter().any(|l| l.line == crate::engine::LOG_TRUNCATED);
    Ok(pb::GetTaskLogsResponse {
        lines: rows
            .into_iter()
            .map(|l| pb::LogLine {
                time: Some(devcycle::time::to_timestamp(l.time)),
                stream: l.stream,
                line: l.line,
                attempt: l.attempt,
            })
            .collect(),
        truncated,
    })
}

pub(super) async fn list_dead_letters(
    svc: &SchedulerService,
    scope: Option<String>,
    r: pb::ListDeadLettersRequest,
) -> Result<pb::ListDeadLettersResponse> {
    if scope.is_some() {
        return Err(Error::PermissionDenied(
                        "the dead-letter queue spans every user's runs: it needs the viewer, maintainer or admin role".into(),
                    ));
    }
    let size = page::page_size(r.page_size)?;
    let filter = TaskFilter {
        run_id: None,
        state: Some(TaskState::Dead),
        after: page::decode_token(&r.page_token)?,
    };
    let mut tasks = svc.store.list_tasks(&filter, size + 1).await?;
    let next_page_token = page::finish(&mut tasks, size, |t| t.id.clone());
    Ok(pb::ListDeadLettersResponse {
        dead_letters: tasks
            .iter()
            .map(|t| pb::DeadLetter {
                task: Some(wire::task(t)),
                dead_time: Some(devcycle::time::to_timestamp(t.end_time)),
            })
            .collect(),
        next_page_token,
    })
}

pub(super) async fn requeue_dead_letter(
    svc: &SchedulerService,
    scopes: Scopes,
    r: pb::RequeueDeadLetterRequest,
) -> Result<pb::RequeueDeadLetterResponse> {
    let id = r.task_id;
    check_id("task_id", &id)?;
    svc.check_task_writer(&scopes, &id).await?;
    let t = svc
        .store
        .get_task(&id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("task {id} does not exist")))?;
    if t.state != TaskState::Dead {
        return Err(Error::FailedPrecondition(format!(
            "task_id: task {id} is {}, not a dead letter",
            t.state.as_str()
        )));
    }
    Ok(pb::RequeueDeadLetterResponse {
        task: Some(svc.retry(id).await?),
    })
}

pub(super) async fn set_agent_rate_limit(
    svc: &SchedulerService,
    r: pb::SetAgentRateLimitRequest,
) -> Result<pb::SetAgentRateLimitResponse> {
    validate::dns_label("agent", &r.agent)?;
    if !r.per_second.is_finite() || r.per_second < 0.0 || r.per_second > 1_000_000.0 {
        return Err(FieldError::new("per_second", "must be between 0 and 1000000").into());
    }
    if r.burst > 1_000_000 {
        return Err(FieldError::new("burst", "must be at most 1000000").into());
    }
    let limit = (r.per_second > 0.0).then_some(RateLimit {
        per_second: r.per_second,
        burst: r.burst,
    });
    svc.store.set_rate_limit(&r.agent, limit).await?;
    Ok(pb::SetAgentRateLimitResponse {})
}

impl SchedulerService {
    /// Gives task `id` a fresh attempt budget; answers with the task after.
    pub(super) async fn retry(&self, id: String) -> Result<pb::Task> {
        self.op(Op::Retry {
            task_id: id.clone(),
        })
        .await?;
        let t = self
            .store
            .get_task(&id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("task {id} does not exist")))?;
        Ok(wire::task(&t))
    }
}
