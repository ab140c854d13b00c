//! The `Scheduler` gRPC service: requests are validated here; every state
//! change goes through the engine.

use std::sync::Arc;
use std::time::Duration;

use devcycle::authz::{Caller, Role, Roles};
use devcycle::page;
use devcycle::proto::registry::v1 as reg;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::proto::scheduler::v1::scheduler_server::Scheduler;
use devcycle::time::now_ms;
use devcycle::validate::{self, FieldError};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::engine::{Engine, reject_status};
use crate::error::{Error, Result};
use crate::model::*;
use crate::resolver::Resolver;
use crate::spec::{self, Target};
use crate::store::{Op, OpResult, SchedulerStore};
use crate::submit::{self, Schemas};
use crate::{watch, wire, work};

pub struct SchedulerService {
    pub(crate) store: Arc<dyn SchedulerStore>,
    pub(crate) engine: Engine,
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) schemas: Schemas,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) shutdown: CancellationToken,
}

/// Answers with this service's error mapped by its `From<Error> for Status`.
fn respond<T>(r: Result<T>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

fn check_id(field: &str, id: &str) -> Result<()> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(FieldError::new(field, format!("{id:?} is not an id")).into());
    }
    Ok(())
}

const DEFAULT_WAIT: Duration = Duration::from_secs(60);
const MAX_WAIT: Duration = Duration::from_secs(600);

impl SchedulerService {
    async fn workflow_spec(
        &self,
        spec: Option<pb::submit_run_request::Workflow>,
    ) -> Result<(pb::WorkflowSpec, i64, &'static str)> {
        use pb::submit_run_request::Workflow;
        match spec {
            Some(Workflow::Spec(s)) => Ok((s, 0, "spec")),
            Some(Workflow::WorkflowName(name)) => {
                validate::dns_label("workflow_name", &name)?;
                let w = self.store.get_workflow(&name).await?.ok_or_else(|| {
                    Error::NotFound(format!("workflow_name: workflow {name} does not exist"))
                })?;
                let spec = pb::WorkflowSpec::decode(w.spec.as_slice())
                    .map_err(|e| Error::Corrupt(format!("stored workflow {name}: {e}")))?;
                Ok((spec, w.revision, "workflow"))
            }
            None => Err(FieldError::new(
                "workflow_name",
                "a workflow name or an inline spec is required",
            )
            .into()),
        }
    }

    /// Validates, resolves agents, and starts a run (or finds the run its
    /// idempotency key names). Returns the run id and whether it is new.
    async fn start(&self, caller: &Caller, s: Start<'_>) -> Result<Started> {
        validate::max_bytes("idempotency_key", s.key, 128)?;
        let key = (!s.key.is_empty()).then(|| s.key.to_owned());
        if let Some(k) = &key
            && let Some(existing) = self.store.run_by_key(&caller.actor(), k).await?
        {
            return Ok(Started {
                run_id: existing,
                created: false,
                done: None,
            });
        }
        let prefix = s.prefix;
        let plan = spec::plan_run(&s.spec, s.inputs, prefix)?;
        let mut agents = Vec::with_capacity(plan.tasks.len());
        for t in &plan.tasks {
            let field = match &t.target {
                Target::Agent { .. } => format!("{prefix}.tasks[{}].agent", t.index),
                Target::Capability(_) => format!("{prefix}.tasks[{}].capability", t.index),
            };
            agents.push(self.resolver.resolve(&t.target, &field).await?);
        }
        let specs = dedupe(&agents);
        let run_id = uuid::Uuid::now_v7().to_string();
        // Waiting starts before the run exists, so its end cannot be missed.
        let done = s.wait.then(|| self.engine.hub.wait_for(&run_id));
        let meta = submit::RunMeta {
            run_id: run_id.clone(),
            workflow_name: s.workflow_name,
            workflow_revision: s.revision,
            idempotency_key: key,
            created_by: caller.actor(),
            now: now_ms(),
        };
        let submitted = match submit::build(plan, agents, meta, &self.schemas, prefix) {
            Ok(submit) => self
                .engine
                .submit(submit, specs)
                .await
                .map_err(status_error),
            Err(e) => Err(e),
        };
        // A run that was not created has no end to wait for: close the
        // receiver first, so that forgetting it removes the entry.
        let forget = |done: Option<_>| {
            drop(done);
            self.engine.hub.forget_waiters(&run_id);
        };
        let (id, created) = match submitted {
            Ok(v) => v,
            Err(e) => {
                forget(done);
                return Err(e);
            }
        };
        if !created {
            // The key was taken meanwhile: the run is another one.
            forget(done);
            return Ok(Started {
                run_id: id,
                created,
                done: None,
            });
        }
        Ok(Started {
            run_id: id,
            created,
            done,
        })
    }

    /// The run, after waiting for it to end when asked.
    async fn answer(&self, started: Started, wait: bool, wait_ms: u32) -> Result<pb::Run> {
        let run_id = started.run_id.as_str();
        let limit = if wait_ms == 0 {
            DEFAULT_WAIT
        } else {
            Duration::from_millis(u64::from(wait_ms)).min(MAX_WAIT)
        };
        if let Some(done) = started.done {
            match tokio::time::timeout(limit, done).await {
                Ok(Ok(f)) => {
                    return Ok(wire::run(&f.0, &f.1));
                }
                _ => self.engine.hub.forget_waiters(run_id),
            }
        } else if wait {
            let done = self.engine.hub.wait_for(run_id);
            // The run may have ended before we started waiting.
            if let Some((run, tasks)) = self.store.get_run(run_id).await?
                && run.state.is_terminal()
            {
                self.engine.hub.forget_waiters(run_id);
                return Ok(wire::run(&run, &tasks));
            }
            match tokio::time::timeout(limit, done).await {
                Ok(Ok(f)) => return Ok(wire::run(&f.0, &f.1)),
                _ => self.engine.hub.forget_waiters(run_id),
            }
        }
        self.fetch_run(run_id).await
    }

    /// Fails as if the run did not exist when `scope` may not see it.
    async fn check_owner(&self, scope: &Option<String>, run_id: &str) -> Result<()> {
        let Some(owner) = scope else {
            return Ok(());
        };
        match self.store.get_run(run_id).await? {
            Some((run, _)) if run.created_by == *owner => Ok(()),
            _ => Err(Error::NotFound(format!("run {run_id} does not exist"))),
        }
    }

    /// Fails unless the caller may change the run: NOT_FOUND when it may not
    /// even see it, PERMISSION_DENIED when it sees it but may not change it.
    async fn check_writer(&self, scopes: &Scopes, run_id: &str) -> Result<()> {
        self.check_owner(&scopes.read, run_id).await?;
        let Some(me) = &scopes.write else {
            return Ok(());
        };
        match self.store.get_run(run_id).await? {
            Some((run, _)) if run.created_by == *me => Ok(()),
            Some((run, _)) => Err(Error::PermissionDenied(format!(
                "run {run_id} belongs to {}; only its creator, maintainers and admins may change it",
                run.created_by
            ))),
            None => Err(Error::NotFound(format!("run {run_id} does not exist"))),
        }
    }

    async fn check_task_writer(&self, scopes: &Scopes, task_id: &str) -> Result<()> {
        if scopes.read.is_none() && scopes.write.is_none() {
            return Ok(());
        }
        let t = self
            .store
            .get_task(task_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("task {task_id} does not exist")))?;
        self.check_writer(scopes, &t.run_id)
            .await
            .map_err(|e| match e {
                Error::NotFound(_) => Error::NotFound(format!("task {task_id} does not exist")),
                other => other,
            })
    }

    async fn check_task_owner(&self, scope: &Option<String>, task_id: &str) -> Result<()> {
        if scope.is_none() {
            return Ok(());
        }
        let t = self
            .store
            .get_task(task_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("task {task_id} does not exist")))?;
        self.check_owner(scope, &t.run_id)
            .await
            .map_err(|_| Error::NotFound(format!("task {task_id} does not exist")))
    }

    async fn fetch_run(&self, run_id: &str) -> Result<pb::Run> {
        let (run, tasks) = self
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("run {run_id} does not exist")))?;
        Ok(wire::run(&run, &tasks))
    }

    async fn op(&self, op: Op) -> Result<()> {
        match self.engine.rpc(op).await.map_err(status_error)? {
            OpResult::Rejected(r) => Err(status_error(reject_status(r))),
            _ => Ok(()),
        }
    }

    /// Gives task `id` a fresh attempt budget; answers with the task after.
    async fn retry(&self, id: String) -> Result<pb::Task> {
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

/// A run that was started or found.
struct Started {
    run_id: String,
    created: bool,
    /// Resolves when the run ends; set when the caller waits for a new run.
    done: Option<tokio::sync::oneshot::Receiver<crate::hub::Finished>>,
}

/// A run to start, as a submit described it.
struct Start<'a> {
    spec: pb::WorkflowSpec,
    revision: i64,
    /// Field path of the spec in errors: "spec", "workflow" or "task".
    prefix: &'a str,
    inputs: &'a std::collections::HashMap<String, String>,
    key: &'a str,
    workflow_name: String,
    wait: bool,
}

/// Whose runs the caller may see and change: everyone's, except for end
/// users (through the gateway) whose roles include none of admin,
/// maintainer or viewer — they see only runs they submitted.
fn owner_scope<T>(req: &Request<T>) -> Option<String> {
    scope_of(Caller::of(req).ok()?)
}

fn scope_of(caller: &Caller) -> Option<String> {
    scopes(caller).read
}

/// Whose runs a caller may see and change: `None` means everyone's, else
/// only those it created. Read and write differ: a viewer sees every run
/// but changes none of another's, even as a developer too. Mesh peers
/// without a forwarded principal (services, and the user certificates only
/// admins and maintainers get) are not scoped.
struct Scopes {
    read: Option<String>,
    write: Option<String>,
}

fn scopes(caller: &Caller) -> Scopes {
    let Some(p) = caller.principal.as_ref() else {
        return Scopes {
            read: None,
            write: None,
        };
    };
    let manage = p.roles.intersects(Roles::ADMIN.or(Roles::MAINTAINER));
    Scopes {
        read: (!manage && !p.roles.contains(Role::Viewer)).then(|| caller.actor()),
        write: (!manage).then(|| caller.actor()),
    }
}

fn write_scopes<T>(req: &Request<T>) -> Scopes {
    Caller::of(req).map(scopes).unwrap_or(Scopes {
        read: None,
        write: None,
    })
}

fn dedupe(agents: &[Arc<reg::AgentVersion>]) -> Vec<Arc<reg::AgentVersion>> {
    let mut out: Vec<Arc<reg::AgentVersion>> = Vec::new();
    for a in agents {
        if !out
            .iter()
            .any(|o| o.agent == a.agent && o.version == a.version)
        {
            out.push(Arc::clone(a));
        }
    }
    out
}

/// Engine statuses carried through the service's error type.
fn status_error(s: Status) -> Error {
    match s.code() {
        tonic::Code::NotFound => Error::NotFound(s.message().to_owned()),
        tonic::Code::FailedPrecondition => Error::FailedPrecondition(s.message().to_owned()),
        tonic::Code::Aborted => Error::Conflict(s.message().to_owned()),
        // The engine's INVALID_ARGUMENT is a `FieldError` ("field: reason").
        tonic::Code::InvalidArgument => {
            let (field, reason) = s
                .message()
                .split_once(": ")
                .unwrap_or(("request", s.message()));
            Error::Invalid(FieldError::new(field, reason))
        }
        _ => Error::Unavailable(s.message().to_owned()),
    }
}

fn workflow_pb(w: WorkflowRow) -> Result<pb::Workflow> {
    Ok(pb::Workflow {
        spec: Some(
            pb::WorkflowSpec::decode(w.spec.as_slice())
                .map_err(|e| Error::Corrupt(format!("stored workflow {}: {e}", w.name)))?,
        ),
        revision: w.revision,
        create_time: Some(devcycle::time::to_timestamp(w.create_time)),
        owner: w.owner,
    })
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn put_workflow(
        &self,
        req: Request<pb::PutWorkflowRequest>,
    ) -> Result<Response<pb::PutWorkflowResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        respond(
            async {
                let spec = validate::present("spec", req.into_inner().spec)?;
                spec::check_spec(&spec, "spec")?;
                let any_owner = scopes(&caller).write.is_none();
                let w = self
                    .store
                    .put_workflow(
                        &spec.name,
                        spec.encode_to_vec(),
                        now_ms(),
                        &caller.actor(),
                        any_owner,
                    )
                    .await?;
                Ok(pb::PutWorkflowResponse {
                    workflow: Some(workflow_pb(w)?),
                })
            }
            .await,
        )
    }

    async fn get_workflow(
        &self,
        req: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::GetWorkflowResponse>, Status> {
        respond(
            async {
                let name = &req.get_ref().name;
                validate::dns_label("name", name)?;
                let w =
                    self.store.get_workflow(name).await?.ok_or_else(|| {
                        Error::NotFound(format!("workflow {name} does not exist"))
                    })?;
                Ok(pb::GetWorkflowResponse {
                    workflow: Some(workflow_pb(w)?),
                })
            }
            .await,
        )
    }

    async fn list_workflows(
        &self,
        req: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        respond(
            async {
                let r = req.into_inner();
                let size = page::page_size(r.page_size)?;
                let after = page::decode_token(&r.page_token)?;
                let mut rows = self
                    .store
                    .list_workflows(after.as_deref(), size + 1)
                    .await?;
                let next_page_token = page::finish(&mut rows, size, |w| w.name.clone());
                Ok(pb::ListWorkflowsResponse {
                    workflows: rows.into_iter().map(workflow_pb).collect::<Result<_>>()?,
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn submit_run(
        &self,
        req: Request<pb::SubmitRunRequest>,
    ) -> Result<Response<pb::SubmitRunResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        respond(
            async {
                let r = req.into_inner();
                let (spec, revision, prefix) = self.workflow_spec(r.workflow).await?;
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
                let started = self.start(&caller, start).await?;
                let created = started.created;
                let run = self.answer(started, r.wait, r.wait_timeout_ms).await?;
                Ok(pb::SubmitRunResponse {
                    run: Some(run),
                    created,
                })
            }
            .await,
        )
    }

    async fn submit_task(
        &self,
        req: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        respond(
            async {
                let r = req.into_inner();
                let mut task = validate::present("task", r.task)?;
                if task.id.is_empty() {
                    task.id = "task".into();
                }
                if !task.depends_on.is_empty() {
                    return Err(FieldError::new(
                        "task.depends_on",
                        "a single task has no upstream",
                    )
                    .into());
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
                let started = self.start(&caller, start).await.map_err(|e| match e {
                    // The one-task spec's fields are the request's `task.*`.
                    Error::Invalid(f) => Error::Invalid(FieldError::new(
                        f.field.replacen("task.tasks[0]", "task", 1),
                        f.reason,
                    )),
                    other => other,
                })?;
                let created = started.created;
                let run = self.answer(started, r.wait, r.wait_timeout_ms).await?;
                Ok(pb::SubmitTaskResponse {
                    run: Some(run),
                    created,
                })
            }
            .await,
        )
    }

    async fn get_run(
        &self,
        req: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        let scope = owner_scope(&req);
        respond(
            async {
                let id = &req.get_ref().run_id;
                check_id("run_id", id)?;
                self.check_owner(&scope, id).await?;
                Ok(pb::GetRunResponse {
                    run: Some(self.fetch_run(id).await?),
                })
            }
            .await,
        )
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let scope = owner_scope(&req);
        respond(
            async {
                let r = req.into_inner();
                let size = page::page_size(r.page_size)?;
                let before = page::decode_token(&r.page_token)?
                    .map(|id| {
                        uuid::Uuid::parse_str(&id).map(|_| id).map_err(|_| {
                            FieldError::new("page_token", "not a token from a previous response")
                        })
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
                    created_before: validate::timestamp(
                        "created_before",
                        r.created_before.as_ref(),
                    )?,
                    before,
                    created_by: scope,
                };
                let mut runs = self.store.list_runs(&filter, size + 1).await?;
                let next_page_token = page::finish(&mut runs, size, |r| r.id.clone());
                Ok(pb::ListRunsResponse {
                    runs: runs.iter().map(|r| wire::run(r, &[])).collect(),
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let scopes = write_scopes(&req);
        respond(
            async {
                let r = req.into_inner();
                check_id("run_id", &r.run_id)?;
                validate::max_bytes("reason", &r.reason, 1024)?;
                self.check_writer(&scopes, &r.run_id).await?;
                self.op(Op::CancelRun {
                    run_id: r.run_id.clone(),
                    reason: r.reason,
                })
                .await?;
                Ok(pb::CancelRunResponse {
                    run: Some(self.fetch_run(&r.run_id).await?),
                })
            }
            .await,
        )
    }

    type WatchRunStream = watch::RunEventStream;

    async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let scope = owner_scope(&req);
        respond(
            async {
                let r = req.into_inner();
                check_id("run_id", &r.run_id)?;
                self.check_owner(&scope, &r.run_id).await?;
                if r.after_sequence < 0 {
                    return Err(FieldError::new("after_sequence", "must not be negative").into());
                }
                let (run, _) =
                    self.store.get_run(&r.run_id).await?.ok_or_else(|| {
                        Error::NotFound(format!("run {} does not exist", r.run_id))
                    })?;
                if r.after_sequence > run.last_seq {
                    return Err(Error::FailedPrecondition(format!(
                        "after_sequence: {} is beyond the run's last event {}",
                        r.after_sequence, run.last_seq
                    )));
                }
                Ok(watch::follow(
                    Arc::clone(&self.store),
                    Arc::clone(&self.engine.hub),
                    r.run_id,
                    r.after_sequence,
                    self.shutdown.clone(),
                ))
            }
            .await,
        )
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let scope = owner_scope(&req);
        respond(
            async {
                let id = &req.get_ref().task_id;
                check_id("task_id", id)?;
                self.check_task_owner(&scope, id).await?;
                let t = self
                    .store
                    .get_task(id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("task {id} does not exist")))?;
                Ok(pb::GetTaskResponse {
                    task: Some(wire::task(&t)),
                })
            }
            .await,
        )
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let scope = owner_scope(&req);
        respond(
            async {
                let r = req.into_inner();
                if !r.run_id.is_empty() {
                    check_id("run_id", &r.run_id)?;
                    self.check_owner(&scope, &r.run_id).await?;
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
                let mut tasks = self.store.list_tasks(&filter, size + 1).await?;
                let next_page_token = page::finish(&mut tasks, size, |t| t.id.clone());
                Ok(pb::ListTasksResponse {
                    tasks: tasks.iter().map(wire::task).collect(),
                    next_page_token,
                })
            }
            .await,
        )
    }

    async fn retry_task(
        &self,
        req: Request<pb::RetryTaskRequest>,
    ) -> Result<Response<pb::RetryTaskResponse>, Status> {
        let scopes = write_scopes(&req);
        respond(
            async {
                let id = req.into_inner().task_id;
                check_id("task_id", &id)?;
                self.check_task_writer(&scopes, &id).await?;
                Ok(pb::RetryTaskResponse {
                    task: Some(self.retry(id).await?),
                })
            }
            .await,
        )
    }

    async fn get_task_logs(
        &self,
        req: Request<pb::GetTaskLogsRequest>,
    ) -> Result<Response<pb::GetTaskLogsResponse>, Status> {
        let scope = owner_scope(&req);
        respond(
            async {
                let r = req.into_inner();
                check_id("task_id", &r.task_id)?;
                self.check_task_owner(&scope, &r.task_id).await?;
                if r.limit < 0 {
                    return Err(FieldError::new("limit", "must not be negative").into());
                }
                let limit = if r.limit == 0 {
                    1000
                } else {
                    (r.limit as usize).min(1000)
                };
                let rows = self.store.task_logs(&r.task_id, limit).await?;
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
            .await,
        )
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let scope = owner_scope(&req);
        respond(
            async {
                if scope.is_some() {
                    return Err(Error::PermissionDenied(
                        "the dead-letter queue spans every user's runs: it needs the viewer, maintainer or admin role".into(),
                    ));
                }
                let r = req.into_inner();
                let size = page::page_size(r.page_size)?;
                let filter = TaskFilter {
                    run_id: None,
                    state: Some(TaskState::Dead),
                    after: page::decode_token(&r.page_token)?,
                };
                let mut tasks = self.store.list_tasks(&filter, size + 1).await?;
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
            .await,
        )
    }

    async fn requeue_dead_letter(
        &self,
        req: Request<pb::RequeueDeadLetterRequest>,
    ) -> Result<Response<pb::RequeueDeadLetterResponse>, Status> {
        let scopes = write_scopes(&req);
        respond(
            async {
                let id = req.into_inner().task_id;
                check_id("task_id", &id)?;
                self.check_task_writer(&scopes, &id).await?;
                let t = self
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
                    task: Some(self.retry(id).await?),
                })
            }
            .await,
        )
    }

    async fn set_agent_rate_limit(
        &self,
        req: Request<pb::SetAgentRateLimitRequest>,
    ) -> Result<Response<pb::SetAgentRateLimitResponse>, Status> {
        respond(
            async {
                let r = req.into_inner();
                validate::dns_label("agent", &r.agent)?;
                if !r.per_second.is_finite() || r.per_second < 0.0 || r.per_second > 1_000_000.0 {
                    return Err(
                        FieldError::new("per_second", "must be between 0 and 1000000").into(),
                    );
                }
                if r.burst > 1_000_000 {
                    return Err(FieldError::new("burst", "must be at most 1000000").into());
                }
                let limit = (r.per_second > 0.0).then_some(RateLimit {
                    per_second: r.per_second,
                    burst: r.burst,
                });
                self.store.set_rate_limit(&r.agent, limit).await?;
                Ok(pb::SetAgentRateLimitResponse {})
            }
            .await,
        )
    }

    type WorkStream = work::WorkStream;

    async fn work(
        &self,
        req: Request<Streaming<pb::WorkRequest>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let caller = Caller::of(&req)?.clone();
        work::accept(
            &self.engine,
            caller,
            req.into_inner(),
            self.heartbeat_interval,
            self.shutdown.clone(),
        )
        .await
        .map(Response::new)
    }
}
