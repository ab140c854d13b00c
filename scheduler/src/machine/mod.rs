//! The task state machine, free of I/O. A store loads the rows a batch
//! touches (locked), the machine applies the batch's operations to them, and
//! the store writes back what changed, in the same transaction.
//!
//! `PENDING → READY → LEASED → SUCCEEDED | FAILED → (claimable again after
//! backoff) | DEAD`, and `CANCELLED` from any non-terminal state. Every
//! operation on a leased task is checked against the (state, attempt,
//! lease id) it names: a stale caller changes nothing.

use std::collections::BTreeMap;

use hashbrown::{HashMap, HashSet};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::model::*;

mod ops;
mod transitions;

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

/// Failure kinds: one vocabulary for the executor and the scheduler.
pub use devcycle::kinds;

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
    /// Task ids of each loaded run, in load order.
    by_run: HashMap<String, Vec<String>>,
    /// Runs loaded with only some of their tasks.
    partial: HashSet<String>,
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
            partial: HashSet::new(),
            dirty_runs: BTreeMap::new(),
            dirty_tasks: BTreeMap::new(),
            events: Vec::new(),
            cancels: Vec::new(),
            finished: Vec::new(),
        }
    }

    /// Room for `runs` runs and `tasks` tasks without growing the maps.
    pub fn reserve(&mut self, runs: usize, tasks: usize) {
        self.runs.reserve(runs);
        self.by_run.reserve(runs);
        self.tasks.reserve(tasks);
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

    /// Adds a run with only some of its tasks: enough to lease them.
    pub fn load_part(&mut self, run: RunRow, tasks: Vec<TaskRow>) {
        if !self.runs.contains_key(&run.id) {
            self.partial.insert(run.id.clone());
        }
        self.load_run(run, tasks);
    }

    /// Every run loaded whole, with all its tasks, as this batch left them
    /// (revisions bumped where changed, as written).
    pub fn into_whole_runs(mut self) -> Vec<(RunRow, Vec<TaskRow>)> {
        let mut out = Vec::with_capacity(self.runs.len());
        for (id, mut run) in self.runs.drain() {
            if self.partial.contains(&id) {
                continue;
            }
            if let Some(rev) = self.dirty_runs.get(&id) {
                run.rev = rev + 1;
            }
            let ids = self.by_run.remove(&id).unwrap_or_default();
            let tasks = ids
                .into_iter()
                .filter_map(|t| {
                    let mut t = self.tasks.remove(&t)?;
                    if let Some(rev) = self.dirty_tasks.get(&t.id) {
                        t.rev = rev + 1;
                    }
                    Some(t)
                })
                .collect();
            out.push((run, tasks));
        }
        out
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
        self.emit(&run_id, EventKind::RunStarted, None, String::new());
        for id in self.by_run[&run_id].clone() {
            if self.tasks[&id].state == TaskState::Waiting {
                self.emit(&run_id, EventKind::TaskWaiting, Some(&id), String::new());
            }
            self.dirty_tasks.insert(id, 0);
        }
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
        let (task_id, task_key, attempt, worker_id, traceparent) =
            match task.and_then(|id| self.tasks.get(id)) {
                Some(t) => (
                    t.id.clone(),
                    t.key.clone(),
                    t.attempt,
                    t.worker_id.clone(),
                    t.traceparent.clone(),
                ),
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
            traceparent,
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
