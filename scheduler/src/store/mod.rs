//! The scheduler's storage. All state changes arrive as a [`Batch`] applied
//! in ONE transaction (group commit): the engine gathers every submit,
//! result, heartbeat and claim that arrives while the previous batch commits,
//! so the cost of a commit is shared by all of them.
//!
//! `apply` is written once ([`apply_batch`]) over [`TxOps`], the handful of
//! statements an engine needs: PostgreSQL implements them with multi-row
//! statements (`UNNEST`), SQLite with prepared statements on a dedicated
//! thread that owns the connection, so a whole batch costs one thread hop.
//! The statements themselves are in [`sql`], written once where the engines
//! agree; it lists where they do not.
//!
//! Lock order, on PostgreSQL: run rows (by id), then their task rows, then
//! concurrency-key rows, then rate-limit rows. Every change to a task holds
//! its run's lock, which is what makes claims by many schedulers safe.

mod apply;
pub mod cache;
pub mod notice;
pub mod pg;
mod rows;
pub mod schedules;
mod sql;
pub mod sqlite;

use async_trait::async_trait;
use hashbrown::HashMap;

pub use apply::apply_batch;
pub use schedules::{ScheduleRow, ScheduleStore};

use crate::error::{Error, Result};
use crate::machine::{CancelNotice, Reject};
use crate::model::*;

/// A new run to start, with all its tasks.
#[derive(Debug, Clone)]
pub struct Submit {
    pub run: RunRow,
    pub tasks: Vec<TaskRow>,
    pub agents: Vec<AgentSpecRow>,
}

/// An operation on existing rows.
#[derive(Debug, Clone)]
pub enum Op {
    Complete {
        lease: Lease,
        outcome: Outcome,
    },
    Heartbeat {
        lease: Lease,
    },
    /// A lease given back unstarted: by its worker, or because it could
    /// not be delivered. The attempt does not count.
    Release {
        lease: Lease,
        undelivered: bool,
    },
    Progress {
        lease: Lease,
        percent: u32,
        message: String,
    },
    CancelRun {
        run_id: String,
        reason: String,
    },
    Retry {
        task_id: String,
    },
    /// Approves or rejects a waiting approval task.
    Decide {
        task_id: String,
        decision: Decision,
    },
    /// `op`, sent by worker `worker_id` over its stream: applied only if
    /// the lease it names was given to that worker.
    Worker {
        worker_id: String,
        op: Box<Op>,
    },
    /// A worker (re)connected holding `held`; its other leases are returned
    /// (`resumed`: they never reached it) or failed (its process restarted).
    Reconcile {
        worker_id: String,
        held: Vec<Lease>,
        resumed: bool,
    },
}

impl Op {
    /// The operation itself, without who sent it.
    pub fn inner(&self) -> &Op {
        match self {
            Op::Worker { op, .. } => op.inner(),
            op => op,
        }
    }

    /// The lease an operation from a worker names.
    pub fn lease(&self) -> Option<&Lease> {
        match self.inner() {
            Op::Complete { lease, .. }
            | Op::Heartbeat { lease }
            | Op::Release { lease, .. }
            | Op::Progress { lease, .. } => Some(lease),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Done,
    /// A heartbeat: the lease's new expiry.
    Extended(i64),
    /// A reconcile: the leases the worker validly holds, with their runs
    /// and the log lines already stored for each.
    Held(Vec<HeldLease>),
    Rejected(Reject),
}

/// A lease a reconnected worker still holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub lease: Lease,
    pub run_id: String,
    /// Log lines stored for this attempt so far (the per-attempt bound
    /// holds across streams).
    pub log_lines: u32,
}

/// A worker with free slots: lease it up to `max` tasks.
#[derive(Debug, Clone)]
pub struct Claim {
    pub worker_id: String,
    /// Agents it serves; empty means any.
    pub agents: Vec<String>,
    pub max: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub now: i64,
    pub submits: Vec<Submit>,
    pub ops: Vec<Op>,
    /// Expire overdue leases and schedule-to-start deadlines.
    pub sweep: bool,
    pub claims: Vec<Claim>,
    /// Look for claimable tasks in the database, not only among this batch's.
    pub claim_from_db: bool,
    pub logs: Vec<LogRow>,
    /// Runs of tasks the engine already knows (task id → run id), so that
    /// loading them needs no lookup.
    pub known_runs: HashMap<String, String>,
    /// Payloads for other schedulers, sent when the batch commits (with the
    /// batch's cancellations); see [`notice`].
    pub notices: Vec<String>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.submits.is_empty()
            && self.ops.is_empty()
            && !self.sweep
            && self.claims.is_empty()
            && self.logs.is_empty()
            && self.notices.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct Applied {
    /// Per submit, in order: the run id, and whether it was created (false:
    /// the idempotency key matched an existing run, whose id is given).
    pub submitted: Vec<(String, bool)>,
    /// Per op, in order.
    pub results: Vec<OpResult>,
    /// New leases, `worker_id` set.
    pub leased: Vec<TaskRow>,
    pub cancels: Vec<CancelNotice>,
    pub events: Vec<EventRow>,
    /// Runs that became terminal, with all their tasks.
    pub finished: Vec<(RunRow, Vec<TaskRow>)>,
    /// Tasks became claimable and were not all leased.
    pub ready_left: bool,
    /// The claim query found fewer tasks than asked for.
    pub db_drained: bool,
    /// When the next timer is due (lease expiry, retry, deadline), if known.
    pub next_due: Option<i64>,
    /// The batch swept: `next_due` covers every timer in the database.
    pub swept: bool,
    /// Attempts that failed in this batch, for the metrics.
    pub failed: Vec<FailedAttempt>,
}

/// A failed attempt: retried or dead, and whether its lease ran out.
#[derive(Debug, Clone)]
pub struct FailedAttempt {
    pub agent: String,
    pub dead: bool,
    pub lease_expired: bool,
}

/// The statements [`apply_batch`] needs, inside one transaction.
#[allow(async_fn_in_trait)] // used generically, never as `dyn`
pub trait TxOps {
    /// Inserts runs; for each, `Some(existing id)` when its idempotency key
    /// was taken (nothing inserted), else `None`.
    async fn insert_runs(&mut self, runs: &[RunRow]) -> Result<Vec<Option<String>>>;
    /// Locks and reads runs and all their tasks. With `skip_locked`, runs
    /// another transaction holds are left out.
    async fn load_runs(
        &mut self,
        run_ids: &[String],
        skip_locked: bool,
    ) -> Result<Vec<(RunRow, Vec<TaskRow>)>>;
    /// Locks runs (skipping locked ones) and reads only the given tasks.
    async fn load_tasks(&mut self, task_ids: &[String]) -> Result<Vec<(RunRow, Vec<TaskRow>)>>;
    async fn run_ids_of(&mut self, task_ids: &[String]) -> Result<Vec<String>>;
    /// Claimable task ids, best first, not locked.
    async fn claimable(
        &mut self,
        now: i64,
        agents: &[String],
        exclude: &[String],
        limit: usize,
    ) -> Result<Vec<String>>;
    /// Ids of tasks whose lease or schedule-to-start deadline has passed.
    async fn overdue(&mut self, now: i64, limit: usize) -> Result<Vec<String>>;
    /// Locks the keys and counts their leased tasks.
    async fn running_per_key(&mut self, keys: &[String]) -> Result<HashMap<String, u32>>;
    /// Locks and reads the rate limits of these agents (those that have one).
    async fn rate_limits(&mut self, agents: &[String])
    -> Result<HashMap<String, (RateLimit, f64)>>;
    async fn save_rate_tats(&mut self, tats: &[(String, f64)]) -> Result<()>;
    /// Writes changed rows (compare-and-set on `rev`), events (assigning
    /// their ids), logs and agent specs.
    async fn write(
        &mut self,
        runs: &[RunRow],
        tasks: &[TaskRow],
        events: &mut [EventRow],
        logs: &[LogRow],
        agents: &[AgentSpecRow],
    ) -> Result<()>;
    async fn next_due(&mut self, now: i64) -> Result<Option<i64>>;
    /// Log lines stored for one attempt of a task.
    async fn log_lines(&mut self, task_id: &str, attempt: u32) -> Result<u32>;
    /// Ids of the tasks leased to `worker_id`.
    async fn leased_to(&mut self, worker_id: &str) -> Result<Vec<String>>;
    /// Sends payloads to other schedulers when the transaction commits (a
    /// store with one scheduler per database has no one to tell).
    async fn announce(&mut self, payloads: &[String]) -> Result<()>;
    /// Runs kept from earlier batches, for a store that is its database's
    /// only writer; see [`cache`].
    fn cache(&mut self) -> Option<&mut cache::RunCache> {
        None
    }
}

/// Reads for the API, and the outbox.
#[async_trait]
pub trait SchedulerStore: ScheduleStore + Send + Sync + 'static {
    async fn apply(&self, batch: Batch) -> Result<Applied>;

    /// Whether `apply` can lose a race to another writer (and be worth
    /// retrying). A store with a single writer never does, so the engine
    /// need not keep a copy of each batch for a retry.
    fn concurrent_writers(&self) -> bool {
        true
    }

    /// Stores a new revision of `name` as `by`. A workflow belongs to who
    /// stored its first revision: others get PERMISSION_DENIED unless
    /// `any_owner` (maintainers and admins). The owner never changes.
    async fn put_workflow(
        &self,
        name: &str,
        spec: Vec<u8>,
        now: i64,
        by: &str,
        any_owner: bool,
    ) -> Result<WorkflowRow>;
    async fn get_workflow(&self, name: &str) -> Result<Option<WorkflowRow>>;
    /// Latest revision of each workflow, by name, names above `after`.
    async fn list_workflows(&self, after: Option<&str>, limit: usize) -> Result<Vec<WorkflowRow>>;

    async fn get_run(&self, id: &str) -> Result<Option<(RunRow, Vec<TaskRow>)>>;
    /// Those of `ids` whose runs have ended.
    async fn ended_runs(&self, ids: &[String]) -> Result<Vec<String>> {
        let mut ended = Vec::new();
        for id in ids {
            if let Some((run, _)) = self.get_run(id).await?
                && run.state.is_terminal()
            {
                ended.push(id.clone());
            }
        }
        Ok(ended)
    }
    /// Whole-database gauges: (`queued`, agent, tasks), (`dead`, "",
    /// tasks), (`outbox`, "", oldest unpublished event time or 0).
    async fn queue_stats(&self) -> Result<Vec<(String, String, i64)>>;
    /// The run `created_by` submitted with idempotency key `key`.
    async fn run_by_key(&self, created_by: &str, key: &str) -> Result<Option<String>>;
    /// Newest first.
    async fn list_runs(&self, filter: &RunFilter, limit: usize) -> Result<Vec<RunRow>>;
    async fn get_task(&self, id: &str) -> Result<Option<TaskRow>>;
    /// By id.
    async fn list_tasks(&self, filter: &TaskFilter, limit: usize) -> Result<Vec<TaskRow>>;
    async fn run_events(&self, run_id: &str, after_seq: i64, limit: usize)
    -> Result<Vec<EventRow>>;
    async fn task_logs(&self, task_id: &str, limit: usize) -> Result<Vec<LogRow>>;
    async fn agent_spec(&self, agent: &str, version: &str) -> Result<Option<Vec<u8>>>;
    async fn set_rate_limit(&self, agent: &str, limit: Option<RateLimit>) -> Result<()>;

    /// Oldest unpublished events.
    async fn outbox(&self, limit: usize) -> Result<Vec<EventRow>>;
    async fn mark_published(&self, ids: &[i64]) -> Result<()>;
}

/// Why `put_workflow` stored nothing: the workflow is someone else's.
fn not_owner(name: &str) -> Error {
    Error::PermissionDenied(format!(
        "spec.name: workflow {name} belongs to another user; only its owner, maintainers and admins may replace it"
    ))
}
