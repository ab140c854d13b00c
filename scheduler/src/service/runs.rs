//! Runs: submitting, reading, listing, cancelling and watching them.

use std::sync::Arc;

use devcycle::authz::Caller;
use devcycle::page;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::validate::{self, FieldError};

use super::access::Scopes;
use super::start::Start;
use super::{SchedulerService, check_id};
use crate::error::{Error, Result};
use crate::model::*;
use crate::store::{Op, OpResult};
use crate::{watch, wire};

pub(super) async fn submit_run(
    svc: &SchedulerService,
    caller: &Caller,
    r: pb::SubmitRunRequest,
) -> Result<pb::SubmitRunResponse> {
    let (spec, revision, prefix) = svc.workflow_spec(r.workflow).await?;
    let name = spec.name.clone();
    let start = Start {
        spec,
        revision,
        prefix,
        inputs: &r.inputs,
        key: &r.idempotency_key,
        workflow_name: name,
        wait: r.wait,
    };
    let started = svc.start(caller.actor(), start).await?;
    let created = started.created;
    let run = svc.answer(started, r.wait, r.wait_timeout_ms).await?;
    Ok(pb::SubmitRunResponse {
        run: Some(run),
        created,
    })
}

pub(super) async fn submit_task(
    svc: &SchedulerService,
    caller: &Caller,
    r: pb::SubmitTaskRequest,
) -> Result<pb::SubmitTaskResponse> {
    let mut task = validate::present("task", r.task)?;
    if task.id.is_empty() {
        task.id = "task".into();
    }
    if !task.depends_on.is_empty() {
        return Err(FieldError::new("task.depends_on", "a single task has no upstream").into());
    }
    let spec = pb::WorkflowSpec {
        name: "task".into(),
        tasks: vec![task],
        ..Default::default()
    };
    let no_inputs = Default::default();
    let start = Start {
        spec,
        revision: 0,
        prefix: "task",
        inputs: &no_inputs,
        key: &r.idempotency_key,
        workflow_name: String::new(),
        wait: r.wait,
    };
    let started = svc
        .start(caller.actor(), start)
        .await
        .map_err(|e| match e {
            // The one-task spec's fields are the request's `task.*`.
            Error::Invalid(f) => Error::Invalid(FieldError::new(
                f.field.replacen("task.tasks[0]", "task", 1),
                f.reason,
            )),
            other => other,
        })?;
    let created = started.created;
    let run = svc.answer(started, r.wait, r.wait_timeout_ms).await?;
    Ok(pb::SubmitTaskResponse {
        run: Some(run),
        created,
    })
}

pub(super) async fn get_run(
    svc: &SchedulerService,
    scope: Option<String>,
    r: pb::GetRunRequest,
) -> Result<pb::GetRunResponse> {
    let id = &r.run_id;
    check_id("run_id", id)?;
    svc.check_owner(&scope, id).await?;
    Ok(pb::GetRunResponse {
        run: Some(svc.fetch_run(id).await?),
    })
}

pub(super) async fn list_runs(
    svc: &SchedulerService,
    scope: Option<String>,
    r: pb::ListRunsRequest,
) -> Result<pb::ListRunsResponse> {
    let size = page::page_size(r.page_size)?;
    let before = page::decode_token(&r.page_token)?
        .map(|id| {
            uuid::Uuid::parse_str(&id)
                .map(|_| id)
                .map_err(|_| FieldError::new("page_token", "not a token from a previous response"))
        })
        .transpose()?;
    if !r.workflow.is_empty() {
        validate::dns_label("workflow", &r.workflow)?;
    }
    let filter = RunFilter {
        state: wire::run_state_from(r.state)
            .ok_or_else(|| FieldError::new("state", "unknown run state"))?,
        workflow: (!r.workflow.is_empty()).then_some(r.workflow),
        created_after: validate::timestamp("created_after", r.created_after.as_ref())?,
        created_before: validate::timestamp("created_before", r.created_before.as_ref())?,
        before,
        created_by: scope,
    };
    let mut runs = svc.store.list_runs(&filter, size + 1).await?;
    let next_page_token = page::finish(&mut runs, size, |r| r.id.clone());
    Ok(pb::ListRunsResponse {
        runs: runs.iter().map(|r| wire::run(r, &[])).collect(),
        next_page_token,
    })
}

pub(super) async fn cancel_run(
    svc: &SchedulerService,
    scopes: Scopes,
    r: pb::CancelRunRequest,
) -> Result<pb::CancelRunResponse> {
    check_id("run_id", &r.run_id)?;
    validate::max_bytes("reason", &r.reason, 1024)?;
    svc.check_writer(&scopes, &r.run_id).await?;
    svc.op(Op::CancelRun {
        run_id: r.run_id.clone(),
        reason: r.reason,
    })
    .await?;
    Ok(pb::CancelRunResponse {
        run: Some(svc.fetch_run(&r.run_id).await?),
    })
}

pub(super) async fn watch_run(
    svc: &SchedulerService,
    scope: Option<String>,
    r: pb::WatchRunRequest,
) -> Result<watch::RunEventStream> {
    check_id("run_id", &r.run_id)?;
    svc.check_owner(&scope, &r.run_id).await?;
    if r.after_sequence < 0 {
        return Err(FieldError::new("after_sequence", "must not be negative").into());
    }
    let (run, _) = svc
        .store
        .get_run(&r.run_id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("run {} does not exist", r.run_id)))?;
    if r.after_sequence > run.last_seq {
        return Err(Error::FailedPrecondition(format!(
            "after_sequence: {} is beyond the run's last event {}",
            r.after_sequence, run.last_seq
        )));
    }
    Ok(watch::follow(
        Arc::clone(&svc.store),
        Arc::clone(&svc.engine.hub),
        r.run_id,
        r.after_sequence,
        svc.shutdown.clone(),
    ))
}

impl SchedulerService {
    pub(super) async fn fetch_run(&self, run_id: &str) -> Result<pb::Run> {
        let (run, tasks) = self
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("run {run_id} does not exist")))?;
        Ok(wire::run(&run, &tasks))
    }

    pub(super) async fn op(&self, op: Op) -> Result<()> {
        match self.engine.rpc(op).await? {
            OpResult::Rejected(r) => Err(r.into()),
            _ => Ok(()),
        }
    }
}
