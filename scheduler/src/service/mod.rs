//! The `Scheduler` gRPC service: requests are validated here; every state
//! change goes through the engine. This is the gRPC boundary: handlers work
//! with the scheduler's `Error`, answered through its one mapping to a status.

mod access;
mod runs;
mod start;
mod tasks;
mod workflows;

use std::sync::Arc;
use std::time::Duration;

use devcycle::authz::Caller;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::proto::scheduler::v1::scheduler_server::Scheduler;
use devcycle::validate::FieldError;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use self::access::{owner_scope, write_scopes};
use crate::engine::Engine;
use crate::error::{Result, respond};
use crate::resolver::Resolver;
use crate::store::SchedulerStore;
use crate::submit::Schemas;
use crate::{watch, work};

pub struct SchedulerService {
    pub(crate) store: Arc<dyn SchedulerStore>,
    pub(crate) engine: Engine,
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) schemas: Schemas,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) shutdown: CancellationToken,
}

fn check_id(field: &str, id: &str) -> Result<()> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(FieldError::new(field, format!("{id:?} is not an id")).into());
    }
    Ok(())
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn put_workflow(
        &self,
        req: Request<pb::PutWorkflowRequest>,
    ) -> Result<Response<pb::PutWorkflowResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        respond(workflows::put_workflow(self, &caller, req.into_inner()).await)
    }

    async fn get_workflow(
        &self,
        req: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::GetWorkflowResponse>, Status> {
        respond(workflows::get_workflow(self, req.into_inner()).await)
    }

    async fn list_workflows(
        &self,
        req: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        respond(workflows::list_workflows(self, req.into_inner()).await)
    }

    async fn submit_run(
        &self,
        req: Request<pb::SubmitRunRequest>,
    ) -> Result<Response<pb::SubmitRunResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        respond(runs::submit_run(self, &caller, req.into_inner()).await)
    }

    async fn submit_task(
        &self,
        req: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        let caller = Caller::of(&req)?.clone();
        respond(runs::submit_task(self, &caller, req.into_inner()).await)
    }

    async fn get_run(
        &self,
        req: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        let scope = owner_scope(&req);
        respond(runs::get_run(self, scope, req.into_inner()).await)
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let scope = owner_scope(&req);
        respond(runs::list_runs(self, scope, req.into_inner()).await)
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let scopes = write_scopes(&req);
        respond(runs::cancel_run(self, scopes, req.into_inner()).await)
    }

    type WatchRunStream = watch::RunEventStream;

    async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let scope = owner_scope(&req);
        respond(runs::watch_run(self, scope, req.into_inner()).await)
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let scope = owner_scope(&req);
        respond(tasks::get_task(self, scope, req.into_inner()).await)
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let scope = owner_scope(&req);
        respond(tasks::list_tasks(self, scope, req.into_inner()).await)
    }

    async fn retry_task(
        &self,
        req: Request<pb::RetryTaskRequest>,
    ) -> Result<Response<pb::RetryTaskResponse>, Status> {
        let scopes = write_scopes(&req);
        respond(tasks::retry_task(self, scopes, req.into_inner()).await)
    }

    async fn get_task_logs(
        &self,
        req: Request<pb::GetTaskLogsRequest>,
    ) -> Result<Response<pb::GetTaskLogsResponse>, Status> {
        let scope = owner_scope(&req);
        respond(tasks::get_task_logs(self, scope, req.into_inner()).await)
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let scope = owner_scope(&req);
        respond(tasks::list_dead_letters(self, scope, req.into_inner()).await)
    }

    async fn requeue_dead_letter(
        &self,
        req: Request<pb::RequeueDeadLetterRequest>,
    ) -> Result<Response<pb::RequeueDeadLetterResponse>, Status> {
        let scopes = write_scopes(&req);
        respond(tasks::requeue_dead_letter(self, scopes, req.into_inner()).await)
    }

    async fn set_agent_rate_limit(
        &self,
        req: Request<pb::SetAgentRateLimitRequest>,
    ) -> Result<Response<pb::SetAgentRateLimitResponse>, Status> {
        respond(tasks::set_agent_rate_limit(self, req.into_inner()).await)
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
