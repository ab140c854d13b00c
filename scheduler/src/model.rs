//! The scheduler's rows, as both stores keep them and the state machine
//! changes them. Times are milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Ready,
    Leased,
    Succeeded,
    /// The last attempt failed; it is claimable again once `ready_at` passes.
    Failed,
    Dead,
    Cancelled,
    /// An approval task waiting for a person's decision; never claimable.
    Waiting,
}

/// The `agent` of approval tasks: not a DNS label, so no agent has it.
pub const APPROVAL_AGENT: &str = "@approval";

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        Self::Pending,
        Self::Ready,
        Self::Leased,
        Self::Succeeded,
        Self::Failed,
        Self::Dead,
        Self::Cancelled,
        Self::Waiting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Leased => "leased",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
            Self::Waiting => "waiting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Dead | Self::Cancelled)
    }

    /// States a worker may claim from (FAILED once its backoff has passed).
    pub fn is_claimable(self) -> bool {
        matches!(self, Self::Ready | Self::Failed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        self != Self::Running
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    FailFast,
    Continue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff_ms: u32,
    pub max_backoff_ms: u32,
    pub multiplier: f64,
    pub jitter: f64,
    pub non_retryable: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            multiplier: 2.0,
            jitter: 0.2,
            non_retryable: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// 0: none.
    pub schedule_to_start_ms: u64,
    pub start_to_close_ms: u64,
    pub heartbeat_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            schedule_to_start_ms: 0,
            start_to_close_ms: 600_000,
            heartbeat_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub kind: String,
    pub message: String,
    pub retryable: bool,
}

/// One task of a run, with everything needed to dispatch and retry it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub id: String,
    pub run_id: String,
    pub key: String,
    pub agent: String,
    pub agent_version: String,
    pub state: TaskState,
    /// Current or last attempt, 1-based; 0 before the first lease.
    pub attempt: u32,
    pub priority: i32,
    /// JSON text: a template while PENDING, resolved from READY on.
    pub input: String,
    pub output: Option<String>,
    pub error: Option<TaskError>,
    /// Upstream tasks that have not succeeded yet.
    pub deps_pending: u32,
    /// Keys of the upstream tasks.
    pub depends_on: Vec<String>,
    /// Ids of the downstream tasks.
    pub dependents: Vec<String>,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    pub concurrency_key: String,
    pub concurrency_limit: u32,
    /// When it becomes claimable (READY/FAILED); also its age in the queue.
    pub ready_at: i64,
    pub lease_id: String,
    pub lease_expires: i64,
    /// End of the current attempt's start-to-close budget.
    pub attempt_deadline: i64,
    /// READY tasks not leased by then are dead; 0 means no deadline.
    pub schedule_deadline: i64,
    pub worker_id: String,
    pub create_time: i64,
    pub start_time: i64,
    pub end_time: i64,
    /// Bumped on every write: the stores' compare-and-set guard.
    pub rev: i64,
    /// W3C trace context of the submit; empty when traces are off. Never
    /// changes, so retries and requeues stay in one trace.
    pub traceparent: String,
}

/// A run: one execution of a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub workflow: String,
    pub workflow_revision: i64,
    pub state: RunState,
    /// JSON object text.
    pub inputs: String,
    pub idempotency_key: Option<String>,
    pub created_by: String,
    pub failure_policy: FailurePolicy,
    pub create_time: i64,
    pub end_time: i64,
    /// Sequence number of the run's last event.
    pub last_seq: i64,
    pub rev: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RunStarted,
    TaskReady,
    TaskLeased,
    TaskSucceeded,
    TaskFailed,
    TaskDead,
    TaskCancelled,
    TaskProgress,
    RunSucceeded,
    RunFailed,
    RunCancelled,
    TaskRequeued,
    TaskWaiting,
}

impl EventKind {
    pub const ALL: [EventKind; 13] = [
        Self::RunStarted,
        Self::TaskReady,
        Self::TaskLeased,
        Self::TaskSucceeded,
        Self::TaskFailed,
        Self::TaskDead,
        Self::TaskCancelled,
        Self::TaskProgress,
        Self::RunSucceeded,
        Self::RunFailed,
        Self::RunCancelled,
        Self::TaskRequeued,
        Self::TaskWaiting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RunStarted => "run_started",
            Self::TaskReady => "task_ready",
            Self::TaskLeased => "task_leased",
            Self::TaskSucceeded => "task_succeeded",
            Self::TaskFailed => "task_failed",
            Self::TaskDead => "task_dead",
            Self::TaskCancelled => "task_cancelled",
            Self::TaskProgress => "task_progress",
            Self::RunSucceeded => "run_succeeded",
            Self::RunFailed => "run_failed",
            Self::RunCancelled => "run_cancelled",
            Self::TaskRequeued => "task_requeued",
            Self::TaskWaiting => "task_waiting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn ends_run(self) -> bool {
        matches!(
            self,
            Self::RunSucceeded | Self::RunFailed | Self::RunCancelled
        )
    }
}

/// An event of a run: the outbox row and the `WatchRun` history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Store-assigned global id; 0 until written.
    pub id: i64,
    pub event_id: String,
    pub run_id: String,
    pub seq: i64,
    pub kind: EventKind,
    pub task_id: String,
    pub task_key: String,
    pub attempt: u32,
    pub worker_id: String,
    pub message: String,
    pub time: i64,
    /// The task's trace context, published as a `traceparent` header; not
    /// a column of the event (the outbox reads it from the task).
    pub traceparent: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub task_id: String,
    pub attempt: u32,
    pub time: i64,
    pub stream: String,
    pub line: String,
}

/// Identifies one attempt's lease; results and heartbeats must carry it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub task_id: String,
    pub attempt: u32,
    pub lease_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Success { output: String },
    Failure(TaskError),
}

/// A person's decision on an approval task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub approve: bool,
    /// `user/<name>`.
    pub by: String,
    pub comment: String,
}

/// A stored workflow definition.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowRow {
    pub name: String,
    pub revision: i64,
    /// The encoded `WorkflowSpec`.
    pub spec: Vec<u8>,
    pub create_time: i64,
    /// Who stored the first revision (`user/<name>`); empty for workflows
    /// stored before owners existed.
    pub owner: String,
}

/// The immutable agent version a task runs, kept so that tasks can be
/// dispatched after a restart without asking the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpecRow {
    pub agent: String,
    pub version: String,
    /// The encoded `devcycle.registry.v1.AgentVersion`.
    pub spec: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub state: Option<RunState>,
    pub workflow: Option<String>,
    pub created_after: Option<i64>,
    pub created_before: Option<i64>,
    /// Page cursor: runs created before this one (ids are time-ordered).
    pub before: Option<String>,
    /// Only runs submitted by this actor (`user/<name>`).
    pub created_by: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub run_id: Option<String>,
    pub state: Option<TaskState>,
    /// Page cursor: ids above this.
    pub after: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}
