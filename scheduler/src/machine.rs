//! The task state machine, free of I/O. A store loads the rows a batch
//! touches (locked), the machine applies the batch's operations to them, and
//! the store writes back what changed, in the same transaction.
//!
//! `PENDING → READY → LEASED → SUCCEEDED | FAILED → (claimable again after
//! backoff) | DEAD`, and `CANCELLED` from any non-terminal state. Every
//! operation on a leased task is checked against the (state, attempt,
//! lease id) it names: a stale caller changes nothing.

use std::collections::{BTreeMap, HashMap};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;

use crate::model::*;
use crate::template::{self, Ref};

/// Why an operation changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    NotFound(String),
    /// The lease is no longer the task's current one.
    Stale(String),
    /// The operation does not apply in the current state.
    State(String),
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::NotFound(m) | Reject::Stale(m) | Reject::State(m) => f.write_str(m),
        }
    }
}

/// Kinds of error the scheduler itself assigns.
pub mod kinds {
    pub const HEARTBEAT_TIMEOUT: &str = "heartbeat_timeout";
    pub const START_TO_CLOSE_TIMEOUT: &str = "start_to_close_timeout";
    pub const SCHEDULE_TO_START_TIMEOUT: &str = "schedule_to_start_timeout";
    pub const INPUT_TEMPLATE: &str = "input_template";
    pub const INVALID_OUTPUT: &str = "invalid_output";
    pub const CANCELLED: &str = "cancelled";
    pub const UPSTREAM_FAILED: &str = "upstream_failed";
    pub const RUN_FAILED: &str = "run_failed";
    pub const WORKER_LOST: &str = "worker_lost";
}

/// A cancellation to deliver to the worker holding a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelNotice {
    pub worker_id: String,
    pub lease: Lease,
    pub reason: String,
}

pub struct Machine {
    now: i64,
    rng: StdRng,
    runs: HashMap<String, RunRow>,
    tasks: HashMap<String, TaskRow>,
    /// Task ids of each fully loaded run, in load order.
    by_run: HashMap<String, Vec<String>>,
    /// Rows changed, with the revision they were loaded at (0: new).
    dirty_runs: BTreeMap<String, i64>,
    dirty_tasks: BTreeMap<String, i64>,
    pub events: Vec<EventRow>,
    pub cancels: Vec<CancelNotice>,
    /// Runs that reached a terminal state in this batch.
    pub finished: Vec<String>,
}

impl Machine {
    pub fn new(now: i64) -> Self {
        Self::with_rng(now, StdRng::from_rng(&mut rand::rng()))
    }

    pub fn with_rng(now: i64, rng: StdRng) -> Self {
        Self {
            now,
            rng,
            runs: HashMap::new(),
            tasks: HashMap::new(),
            by_run: HashMap::new(),
            dirty_runs: BTreeMap::new(),
            dirty_tasks: BTreeMap::new(),
            events: Vec::new(),
            cancels: Vec::new(),
            finished: Vec::new(),
        }
    }

    pub fn now(&self) -> i64 {
        self.now
    }

    /// Adds a run and every one of its tasks, as read from the store.
    pub fn load_run(&mut self, run: RunRow, tasks: Vec<TaskRow>) {
        let ids = tasks.iter().map(|t| t.id.clone()).collect();
        for t in tasks {
            self.tasks.entry(t.id.clone()).or_insert(t);
        }
        self.by_run.entry(run.id.clone()).or_insert(ids);
        self.runs.entry(run.id.clone()).or_insert(run);
    }

    pub fn has_run(&self, id: &str) -> bool {
        self.runs.contains_key(id)
    }

    pub fn task(&self, id: &str) -> Option<&TaskRow> {
        self.tasks.get(id)
    }

    pub fn run(&self, id: &str) -> Option<&RunRow> {
        self.runs.get(id)
    }

    /// A loaded run with its tasks as they are now.
    pub fn run_snapshot(&self, id: &str) -> Option<(RunRow, Vec<TaskRow>)> {
        let run = self.runs.get(id)?.clone();
        let tasks = self
            .by_run
            .get(id)?
            .iter()
            .map(|t| self.tasks[t].clone())
            .collect();
        Some((run, tasks))
    }

    /// A new run: its tasks with no upstream are READY with their inputs
    /// rendered, the others PENDING.
    pub fn start_run(&mut self, run: RunRow, tasks: Vec<TaskRow>) {
        let run_id = run.id.clone();
        self.load_run(run, tasks);
        self.dirty_runs.insert(run_id.clone(), 0);
        for id in self.by_run[&run_id].clone() {
            self.dirty_tasks.insert(id, 0);
        }
        self.emit(&run_id, EventKind::RunStarted, None, String::new());
    }

    /// Every changed run, with its revision bumped.
    pub fn changed_runs(&self) -> Vec<RunRow> {
        self.dirty_runs
            .iter()
            .map(|(id, rev)| RunRow {
                rev: rev + 1,
                ..self.runs[id].clone()
            })
            .collect()
    }

    /// Every changed task, with its revision bumped.
    pub fn changed_tasks(&self) -> Vec<TaskRow> {
        self.dirty_tasks
            .iter()
            .map(|(id, rev)| TaskRow {
                rev: rev + 1,
                ..self.tasks[id].clone()
            })
            .collect()
    }

    /// Whether a task changed in this batch is claimable now.
    pub fn any_claimable_in_memory(&self) -> bool {
        self.dirty_tasks
            .keys()
            .map(|id| &self.tasks[id])
            .any(|t| t.state.is_claimable() && t.ready_at <= self.now)
    }

    /// Tasks changed in this batch that are claimable now, best first:
    /// candidates for handing straight to a waiting worker.
    pub fn claimable_in_memory(&self) -> Vec<String> {
        let mut ids: Vec<&TaskRow> = self
            .dirty_tasks
            .keys()
            .map(|id| &self.tasks[id])
            .filter(|t| t.state.is_claimable() && t.ready_at <= self.now)
            .collect();
        ids.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.ready_at.cmp(&b.ready_at))
                .then(a.id.cmp(&b.id))
        });
        ids.into_iter().map(|t| t.id.clone()).collect()
    }

    fn touch_task(&mut self, id: &str) {
        let rev = self.tasks[id].rev;
        self.dirty_tasks.entry(id.to_owned()).or_insert(rev);
    }

    fn touch_run(&mut self, id: &str) {
        let rev = self.runs[id].rev;
        self.dirty_runs.entry(id.to_owned()).or_insert(rev);
    }

    fn emit(&mut self, run_id: &str, kind: EventKind, task: Option<&str>, message: String) {
        self.touch_run(run_id);
        let (task_id, task_key, attempt, worker_id) = match task.and_then(|id| self.tasks.get(id)) {
            Some(t) => (t.id.clone(), t.key.clone(), t.attempt, t.worker_id.clone()),
            None => Default::default(),
        };
        let run = self
            .runs
            .get_mut(run_id)
            .expect("events belong to loaded runs");
        run.last_seq += 1;
        self.events.push(EventRow {
            id: 0,
            // Unique because (run, sequence) is: consumers dedupe by it.
            event_id: format!("{run_id}/{}", run.last_seq),
            run_id: run_id.to_owned(),
            seq: run.last_seq,
            kind,
            task_id,
            task_key,
            attempt,
            worker_id,
            message,
            time: self.now,
        });
    }

    fn check_lease(&self, lease: &Lease) -> Result<(), Reject> {
        let t = self
            .tasks
            .get(&lease.task_id)
            .ok_or_else(|| Reject::NotFound(format!("task {} does not exist", lease.task_id)))?;
        if t.state != TaskState::Leased
            || t.attempt != lease.attempt
            || t.lease_id != lease.lease_id
        {
            return Err(Reject::Stale(format!(
                "lease {} (attempt {}) is no longer valid: task is {} at attempt {}",
                lease.lease_id,
                lease.attempt,
                t.state.as_str(),
                t.attempt
            )));
        }
        Ok(())
    }

    /// Leases a claimable task to a worker.
    pub fn lease(&mut self, task_id: &str, worker_id: &str) -> Result<TaskRow, Reject> {
        let now = self.now;
        let t = self
            .tasks
            .get_mut(task_id)
            .ok_or_else(|| Reject::NotFound(format!("task {task_id} does not exist")))?;
        if !t.state.is_claimable() || t.ready_at > now {
            return Err(Reject::State(format!("task {task_id} is not claimable")));
        }
        t.state = TaskState::Leased;
        t.attempt += 1;
        t.lease_id = format!("{:032x}", self.rng.random::<u128>());
        t.worker_id = worker_id.to_owned();
        if t.start_time == 0 {
            t.start_time = now;
        }
        // Schedule-to-start is per attempt: this one has started.
        t.schedule_deadline = 0;
        t.attempt_deadline = now.saturating_add(t.timeouts.start_to_close_ms as i64);
        t.lease_expires = now
            .saturating_add(t.timeouts.heartbeat_ms as i64)
            .min(t.attempt_deadline);
        let (run_id, leased) = (t.run_id.clone(), t.clone());
        self.touch_task(task_id);
        self.emit(&run_id, EventKind::TaskLeased, Some(task_id), String::new());
        Ok(leased)
    }

    /// Records an attempt's outcome.
    pub fn complete(&mut self, lease: &Lease, outcome: Outcome) -> Result<(), Reject> {
        self.check_lease(lease)?;
        let id = lease.task_id.as_str();
        match outcome {
            Outcome::Success { output } => {
                if serde_json::from_str::<Value>(&output).is_err() {
                    let e = TaskError {
                        kind: kinds::INVALID_OUTPUT.into(),
                        message: "the agent's output is not JSON".into(),
                        retryable: false,
                    };
                    return {
                        self.fail_attempt(id, e);
                        Ok(())
                    };
                }
                let now = self.now;
                let t = self.tasks.get_mut(id).expect("checked");
                t.state = TaskState::Succeeded;
                t.output = Some(output);
                t.error = None;
                t.end_time = now;
                t.lease_id.clear();
                let (run_id, dependents) = (t.run_id.clone(), t.dependents.clone());
                self.touch_task(id);
                self.emit(&run_id, EventKind::TaskSucceeded, Some(id), String::new());
                for d in dependents {
                    let Some(dt) = self.tasks.get_mut(&d) else {
                        continue;
                    };
                    dt.deps_pending = dt.deps_pending.saturating_sub(1);
                    self.touch_task(&d);
                    if self.tasks[&d].deps_pending == 0
                        && self.tasks[&d].state == TaskState::Pending
                    {
                        self.make_ready(&d);
                    }
                }
                self.settle(&run_id);
            }
            Outcome::Failure(e) => self.fail_attempt(id, e),
        }
        Ok(())
    }

    /// Extends a lease; returns its new expiry.
    pub fn heartbeat(&mut self, lease: &Lease) -> Result<i64, Reject> {
        self.check_lease(lease)?;
        let now = self.now;
        let t = self.tasks.get_mut(&lease.task_id).expect("checked");
        t.lease_expires = now
            .saturating_add(t.timeouts.heartbeat_ms as i64)
            .min(t.attempt_deadline);
        let expires = t.lease_expires;
        self.touch_task(&lease.task_id);
        Ok(expires)
    }

    /// A lease given back unstarted (by its worker, or never delivered):
    /// the attempt does not count.
    pub fn release(&mut self, lease: &Lease, why: &str) -> Result<(), Reject> {
        self.check_lease(lease)?;
        let now = self.now;
        let t = self.tasks.get_mut(&lease.task_id).expect("checked");
        t.state = TaskState::Ready;
        t.attempt -= 1;
        t.lease_id.clear();
        t.ready_at = now;
        t.schedule_deadline = deadline(now, t.timeouts.schedule_to_start_ms);
        let run_id = t.run_id.clone();
        self.touch_task(&lease.task_id);
        self.emit(
            &run_id,
            EventKind::TaskReady,
            Some(&lease.task_id),
            why.into(),
        );
        Ok(())
    }

    /// A worker connected holding `held`. Of the tasks `ids` the database
    /// says are leased to it, those it holds stay leased (returned, with
    /// their runs); the others never reached it (`resumed`: the same
    /// process lists everything it has) and go back without using an
    /// attempt, or were lost with its previous process: failed attempts.
    pub fn reconcile(
        &mut self,
        worker_id: &str,
        ids: &[String],
        held: &[Lease],
        resumed: bool,
    ) -> Vec<(Lease, String)> {
        let mut kept = Vec::new();
        for id in ids {
            let Some(t) = self.tasks.get(id) else {
                continue;
            };
            if t.state != TaskState::Leased || t.worker_id != worker_id {
                continue;
            }
            let lease = Lease {
                task_id: t.id.clone(),
                attempt: t.attempt,
                lease_id: t.lease_id.clone(),
            };
            if held.contains(&lease) {
                kept.push((lease, t.run_id.clone()));
            } else if resumed {
                let _ = self.release(
                    &lease,
                    "lease never reached the worker; returned without using an attempt",
                );
            } else {
                self.fail_attempt(
                    id,
                    TaskError {
                        kind: kinds::WORKER_LOST.into(),
                        message: format!("worker {worker_id} restarted while holding the lease"),
                        retryable: true,
                    },
                );
            }
        }
        kept
    }

    pub fn progress(&mut self, lease: &Lease, percent: u32, message: &str) -> Result<(), Reject> {
        self.check_lease(lease)?;
        let run_id = self.tasks[&lease.task_id].run_id.clone();
        let message = format!("{}% {}", percent.min(100), truncate(message, 512));
        self.emit(
            &run_id,
            EventKind::TaskProgress,
            Some(&lease.task_id),
            message.trim_end().to_owned(),
        );
        Ok(())
    }

    /// A lease that was not renewed in time: a failed attempt.
    pub fn expire(&mut self, task_id: &str) -> Result<(), Reject> {
        let now = self.now;
        let t = self
            .tasks
            .get(task_id)
            .ok_or_else(|| Reject::NotFound(format!("task {task_id} does not exist")))?;
        if t.state != TaskState::Leased || t.lease_expires > now {
            return Err(Reject::State(format!(
                "task {task_id} holds no expired lease"
            )));
        }
        let (kind, message) = if now >= t.attempt_deadline {
            (
                kinds::START_TO_CLOSE_TIMEOUT,
                format!("attempt exceeded {} ms", t.timeouts.start_to_close_ms),
            )
        } else {
            (
                kinds::HEARTBEAT_TIMEOUT,
                format!("no heartbeat for {} ms", t.timeouts.heartbeat_ms),
            )
        };
        self.cancels.push(CancelNotice {
            worker_id: t.worker_id.clone(),
            lease: Lease {
                task_id: t.id.clone(),
                attempt: t.attempt,
                lease_id: t.lease_id.clone(),
            },
            reason: message.clone(),
        });
        self.fail_attempt(
            task_id,
            TaskError {
                kind: kind.into(),
                message,
                retryable: true,
            },
        );
        Ok(())
    }

    /// A claimable task that waited past its schedule-to-start deadline.
    pub fn schedule_timeout(&mut self, task_id: &str) -> Result<(), Reject> {
        let now = self.now;
        let t = self
            .tasks
            .get(task_id)
            .ok_or_else(|| Reject::NotFound(format!("task {task_id} does not exist")))?;
        if !t.state.is_claimable() || t.schedule_deadline == 0 || t.schedule_deadline > now {
            return Err(Reject::State(format!(
                "task {task_id} is not past its deadline"
            )));
        }
        let message = format!("not started within {} ms", t.timeouts.schedule_to_start_ms);
        self.kill(
            task_id,
            TaskError {
                kind: kinds::SCHEDULE_TO_START_TIMEOUT.into(),
                message,
                retryable: false,
            },
        );
        Ok(())
    }

    pub fn cancel_run(&mut self, run_id: &str, reason: &str) -> Result<(), Reject> {
        let run = self
            .runs
            .get(run_id)
            .ok_or_else(|| Reject::NotFound(format!("run {run_id} does not exist")))?;
        if run.state.is_terminal() {
            return Err(Reject::State(format!(
                "run {run_id} is already {}",
                run.state.as_str()
            )));
        }
        let reason = if reason.is_empty() {
            "cancelled"
        } else {
            reason
        };
        for id in self.by_run[run_id].clone() {
            self.cancel_task(&id, kinds::CANCELLED, reason);
        }
        let now = self.now;
        let run = self.runs.get_mut(run_id).expect("checked");
        run.state = RunState::Cancelled;
        run.end_time = now;
        self.emit(run_id, EventKind::RunCancelled, None, reason.to_owned());
        self.finished.push(run_id.to_owned());
        Ok(())
    }

    /// Puts a FAILED, DEAD or CANCELLED task back in the queue with a fresh
    /// attempt budget, and revives what its failure had cancelled.
    pub fn retry(&mut self, task_id: &str) -> Result<(), Reject> {
        let t = self
            .tasks
            .get(task_id)
            .ok_or_else(|| Reject::NotFound(format!("task {task_id} does not exist")))?;
        if !matches!(
            t.state,
            TaskState::Failed | TaskState::Dead | TaskState::Cancelled
        ) {
            return Err(Reject::State(format!(
                "task {task_id} is {}; only failed, dead or cancelled tasks can be retried",
                t.state.as_str()
            )));
        }
        if t.deps_pending > 0 {
            return Err(Reject::State(format!(
                "task {task_id} still waits for {} upstream task(s)",
                t.deps_pending
            )));
        }
        let run_id = t.run_id.clone();
        self.requeue(task_id);
        self.revive(&run_id);
        let run = self.runs.get_mut(&run_id).expect("loaded");
        if run.state.is_terminal() {
            run.state = RunState::Running;
            run.end_time = 0;
            self.touch_run(&run_id);
        }
        Ok(())
    }

    /// After a retry: tasks that a failure had cancelled run again, but only
    /// those that can still finish — every upstream task succeeded, is alive
    /// or is revived itself — and, in a fail-fast run, only when no task of
    /// the run is still dead (the run fails anyway once the retried task
    /// ends). Reviving a task whose upstream stays dead would leave it
    /// pending forever and the run RUNNING with it.
    fn revive(&mut self, run_id: &str) {
        let ids = self.by_run[run_id].clone();
        let failed_by_failure = |t: &TaskRow| {
            t.state == TaskState::Cancelled
                && t.error.as_ref().is_some_and(|e| {
                    e.kind == kinds::UPSTREAM_FAILED || e.kind == kinds::RUN_FAILED
                })
        };
        let dead = ids.iter().any(|id| self.tasks[id].state == TaskState::Dead);
        if dead && self.runs[run_id].failure_policy == FailurePolicy::FailFast {
            return;
        }
        let mut candidates: Vec<String> = ids
            .iter()
            .filter(|id| failed_by_failure(&self.tasks[*id]))
            .cloned()
            .collect();
        // Upstream first: a task may depend on another candidate. Repeat
        // until nothing more can be revived (the DAG has no cycles).
        loop {
            let before = candidates.len();
            candidates.retain(|id| {
                let t = &self.tasks[id];
                let deps: Vec<TaskState> = t
                    .depends_on
                    .iter()
                    .filter_map(|key| self.task_by_key(run_id, key))
                    .map(|d| d.state)
                    .collect();
                if deps
                    .iter()
                    .any(|s| s.is_terminal() && *s != TaskState::Succeeded)
                {
                    return true; // not (yet) revivable
                }
                let pending = deps.iter().filter(|s| **s != TaskState::Succeeded).count() as u32;
                let t = self.tasks.get_mut(id).expect("listed");
                t.deps_pending = pending;
                t.error = None;
                t.end_time = 0;
                if pending == 0 {
                    self.requeue(id);
                } else {
                    t.state = TaskState::Pending;
                    self.touch_task(id);
                }
                false
            });
            if candidates.len() == before {
                break;
            }
        }
    }

    fn task_by_key(&self, run_id: &str, key: &str) -> Option<&TaskRow> {
        self.by_run[run_id]
            .iter()
            .map(|id| &self.tasks[id])
            .find(|t| t.key == key)
    }

    fn requeue(&mut self, id: &str) {
        let now = self.now;
        let t = self.tasks.get_mut(id).expect("loaded");
        t.state = TaskState::Ready;
        t.attempt = 0;
        t.error = None;
        t.lease_id.clear();
        t.end_time = 0;
        t.ready_at = now;
        t.schedule_deadline = deadline(now, t.timeouts.schedule_to_start_ms);
        let run_id = t.run_id.clone();
        self.touch_task(id);
        self.emit(&run_id, EventKind::TaskRequeued, Some(id), String::new());
    }

    fn fail_attempt(&mut self, id: &str, e: TaskError) {
        let t = &self.tasks[id];
        let retry = e.retryable
            && !t.retry.non_retryable.contains(&e.kind)
            && t.attempt < t.retry.max_attempts;
        if !retry {
            self.kill(id, e);
            return;
        }
        let delay = backoff(&t.retry, t.attempt, &mut self.rng);
        let now = self.now;
        let t = self.tasks.get_mut(id).expect("loaded");
        t.state = TaskState::Failed;
        t.lease_id.clear();
        t.ready_at = now + delay;
        t.schedule_deadline = deadline(t.ready_at, t.timeouts.schedule_to_start_ms);
        let message = format!(
            "{}: {}; attempt {}/{}, retry in {delay} ms",
            e.kind, e.message, t.attempt, t.retry.max_attempts
        );
        t.error = Some(e);
        let run_id = t.run_id.clone();
        self.touch_task(id);
        self.emit(&run_id, EventKind::TaskFailed, Some(id), message);
    }

    /// Gives up on a task: DEAD, with what that means for the rest of the run.
    fn kill(&mut self, id: &str, e: TaskError) {
        let now = self.now;
        let t = self.tasks.get_mut(id).expect("loaded");
        t.state = TaskState::Dead;
        t.lease_id.clear();
        t.end_time = now;
        let message = format!("{}: {}", e.kind, e.message);
        t.error = Some(e);
        let run_id = t.run_id.clone();
        self.touch_task(id);
        self.emit(&run_id, EventKind::TaskDead, Some(id), message);
        self.on_dead(id, &run_id);
        self.settle(&run_id);
    }

    fn on_dead(&mut self, id: &str, run_id: &str) {
        let key = self.tasks[id].key.clone();
        let mut stack = self.tasks[id].dependents.clone();
        while let Some(d) = stack.pop() {
            if self
                .tasks
                .get(&d)
                .is_some_and(|t| t.state == TaskState::Pending)
            {
                stack.extend(self.tasks[&d].dependents.clone());
                self.cancel_task(
                    &d,
                    kinds::UPSTREAM_FAILED,
                    &format!("upstream task {key} failed"),
                );
            }
        }
        if self.runs[run_id].failure_policy == FailurePolicy::FailFast {
            for other in self.by_run[run_id].clone() {
                self.cancel_task(
                    &other,
                    kinds::RUN_FAILED,
                    &format!("task {key} failed and the run fails fast"),
                );
            }
        }
    }

    fn cancel_task(&mut self, id: &str, kind: &str, reason: &str) {
        let now = self.now;
        let t = self.tasks.get_mut(id).expect("loaded");
        if t.state.is_terminal() {
            return;
        }
        if t.state == TaskState::Leased {
            self.cancels.push(CancelNotice {
                worker_id: t.worker_id.clone(),
                lease: Lease {
                    task_id: t.id.clone(),
                    attempt: t.attempt,
                    lease_id: t.lease_id.clone(),
                },
                reason: reason.to_owned(),
            });
        }
        t.state = TaskState::Cancelled;
        t.lease_id.clear();
        t.end_time = now;
        t.error = Some(TaskError {
            kind: kind.to_owned(),
            message: reason.to_owned(),
            retryable: false,
        });
        let run_id = t.run_id.clone();
        self.touch_task(id);
        self.emit(
            &run_id,
            EventKind::TaskCancelled,
            Some(id),
            reason.to_owned(),
        );
    }

    /// All upstream tasks succeeded: render the input and queue the task.
    fn make_ready(&mut self, id: &str) {
        let run_id = self.tasks[id].run_id.clone();
        let outputs: HashMap<String, Value> = self.by_run[&run_id]
            .iter()
            .map(|tid| &self.tasks[tid])
            .filter(|t| t.state == TaskState::Succeeded)
            .filter_map(|t| {
                Some((
                    t.key.clone(),
                    serde_json::from_str(t.output.as_deref()?).ok()?,
                ))
            })
            .collect();
        let inputs: BTreeMap<String, Value> =
            serde_json::from_str(&self.runs[&run_id].inputs).unwrap_or_default();
        let rendered = serde_json::from_str::<Value>(&self.tasks[id].input)
            .map_err(|e| format!("stored input is not JSON: {e}"))
            .and_then(|v| {
                template::render(
                    &v,
                    &|r| match r {
                        Ref::Input(n) => inputs.get(n),
                        Ref::Output { task, path } => {
                            outputs.get(task).and_then(|o| template::select(o, path))
                        }
                    },
                    template::MAX_RENDERED_BYTES,
                )
            });
        match rendered {
            Ok(v) => {
                let now = self.now;
                let t = self.tasks.get_mut(id).expect("loaded");
                t.input = v.to_string();
                t.state = TaskState::Ready;
                t.ready_at = now;
                t.schedule_deadline = deadline(now, t.timeouts.schedule_to_start_ms);
                self.touch_task(id);
                self.emit(&run_id, EventKind::TaskReady, Some(id), String::new());
            }
            Err(message) => self.kill(
                id,
                TaskError {
                    kind: kinds::INPUT_TEMPLATE.into(),
                    message,
                    retryable: false,
                },
            ),
        }
    }

    /// Ends a running run whose tasks are all terminal.
    fn settle(&mut self, run_id: &str) {
        let run = &self.runs[run_id];
        if run.state != RunState::Running {
            return;
        }
        let tasks = &self.by_run[run_id];
        if !tasks.iter().all(|id| self.tasks[id].state.is_terminal()) {
            return;
        }
        let ok = tasks
            .iter()
            .all(|id| self.tasks[id].state == TaskState::Succeeded);
        let (state, kind) = if ok {
            (RunState::Succeeded, EventKind::RunSucceeded)
        } else {
            (RunState::Failed, EventKind::RunFailed)
        };
        let now = self.now;
        let run = self.runs.get_mut(run_id).expect("loaded");
        run.state = state;
        run.end_time = now;
        self.emit(run_id, kind, None, String::new());
        self.finished.push(run_id.to_owned());
    }
}

fn deadline(now: i64, after_ms: u64) -> i64 {
    if after_ms == 0 {
        0
    } else {
        now.saturating_add(after_ms as i64)
    }
}

/// The delay before the attempt after `attempt`: exponential, capped,
/// jittered by ±`jitter`.
pub fn backoff(p: &RetryPolicy, attempt: u32, rng: &mut impl Rng) -> i64 {
    let exp = p.multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
    let base = (f64::from(p.initial_backoff_ms) * exp).min(f64::from(p.max_backoff_ms));
    let jitter = if p.jitter > 0.0 {
        rng.random_range(-p.jitter..=p.jitter)
    } else {
        0.0
    };
    (base * (1.0 + jitter)).max(0.0).round() as i64
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
