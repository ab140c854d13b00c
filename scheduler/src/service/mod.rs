//! The `Scheduler` gRPC service: requests are validated here; every state
//! change goes through the engine. This is the gRPC boundary: handlers work
//! with the scheduler's `Error`, answered through its one mapping to a status.

mod access;
mod approvals;
mod runs;
mod schedules;
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

pub(crate) use self::schedules::run_ticker;

pub struct SchedulerService {
    pub(crate) store: Arc<dyn SchedulerStore>,
    pub(crate) engine: Engine,
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) schemas: Schemas,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) shutdown: CancellationToken,
    /// Wakes the ticker when a schedule is created or resumed here.
    pub(crate) schedules_changed: tokio::sync::Notify,
    /// What approval tasks "run": no agent, so nothing to resolve.
    pub(crate) approval: Arc<devcycle::proto::registry::v1::AgentVersion>,
}

fn check_id(field: &str, id: &str) -> Result<()> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(FieldError::new(field, format!("{id:?} is not an id")).into());
    }
    Ok(())
}

/// The context a handler is given besides the request: nothing, the
/// caller, the runs it may read, or the runs it may read and change.
macro_rules! call {
    (none, $svc:expr, $f:path, $req:ident) => {
        $f($svc, $req.into_inner()).await
    };
    (caller, $svc:expr, $f:path, $req:ident) => {{
        let caller = Caller::of(&$req)?.clone();
        $f($svc, &caller, $req.into_inner()).await
    }};
    (read, $svc:expr, $f:path, $req:ident) => {{
        let scope = owner_scope(&$req);
        $f($svc, scope, $req.into_inner()).await
    }};
    (write, $svc:expr, $f:path, $req:ident) => {{
        let scopes = write_scopes(&$req);
        $f($svc, scopes, $req.into_inner()).await
    }};
}

/// The trait impl: each method hands its request, with the context it
/// names, to `<module>::<method>`, and answers through `respond`.
macro_rules! rpcs {
    ($($method:ident($ctx:ident) => $module:ident: $req:ident -> $res:ty,)* { $($rest:tt)* }) => {
        #[tonic::async_trait]
        impl Scheduler for SchedulerService {
            $(
                async fn $method(
                    &self,
                    req: Request<pb::$req>,
                ) -> Result<Response<$res>, Status> {
                    respond(call!($ctx, self, $module::$method, req))
                }
            )*
            $($rest)*
        }
    };
}

rpcs! {
    put_workflow(caller) => workflows: PutWorkflowRequest -> pb::PutWorkflowResponse,
    get_workflow(none) => workflows: GetWorkflowRequest -> pb::GetWorkflowResponse,
    list_workflows(none) => workflows: ListWorkflowsRequest -> pb::ListWorkflowsResponse,
    submit_run(caller) => runs: SubmitRunRequest -> pb::SubmitRunResponse,
    submit_task(caller) => runs: SubmitTaskRequest -> pb::SubmitTaskResponse,
    get_run(read) => runs: GetRunRequest -> pb::GetRunResponse,
    list_runs(read) => runs: ListRunsRequest -> pb::ListRunsResponse,
    cancel_run(write) => runs: CancelRunRequest -> pb::CancelRunResponse,
    watch_run(read) => runs: WatchRunRequest -> Self::WatchRunStream,
    get_task(read) => tasks: GetTaskRequest -> pb::GetTaskResponse,
    list_tasks(read) => tasks: ListTasksRequest -> pb::ListTasksResponse,
    retry_task(write) => tasks: RetryTaskRequest -> pb::RetryTaskResponse,
    get_task_logs(read) => tasks: GetTaskLogsRequest -> pb::GetTaskLogsResponse,
    list_dead_letters(read) => tasks: ListDeadLettersRequest -> pb::ListDeadLettersResponse,
    requeue_dead_letter(write) => tasks: RequeueDeadLetterRequest -> pb::RequeueDeadLetterResponse,
    set_agent_rate_limit(none) => tasks: SetAgentRateLimitRequest -> pb::SetAgentRateLimitResponse,
    create_schedule(caller) => schedules: CreateScheduleRequest -> pb::CreateScheduleResponse,
    get_schedule(none) => schedules: GetScheduleRequest -> pb::GetScheduleResponse,
    list_schedules(none) => schedules: ListSchedulesRequest -> pb::ListSchedulesResponse,
    pause_schedule(caller) => schedules: PauseScheduleRequest -> pb::PauseScheduleResponse,
    resume_schedule(caller) => schedules: ResumeScheduleRequest -> pb::ResumeScheduleResponse,
    delete_schedule(caller) => schedules: DeleteScheduleRequest -> pb::DeleteScheduleResponse,
    decide_approval(caller) => approvals: DecideApprovalRequest -> pb::DecideApprovalResponse,
    {
        type WatchRunStream = watch::RunEventStream;
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
}
