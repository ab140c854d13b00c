//! How tasks and runs move between states: readiness, failure, death,
//! cancellation, and a run settling once its tasks are done.

use std::collections::BTreeMap;

use hashbrown::HashMap;
use serde_json::Value;

use super::{CancelNotice, Machine, backoff, deadline, kinds};
use crate::model::*;
use crate::template::{self, Ref};

impl Machine {
    /// After a retry: tasks that a failure had cancelled run again, but only
    /// those that can still finish — every upstream task succeeded, is alive
    /// or is revived itself — and, in a fail-fast run, only when no task of
    /// the run is still dead (the run fails anyway once the retried task
    /// ends). Reviving a task whose upstream stays dead would leave it
    /// pending forever and the run RUNNING with it.
    pub(super) fn revive(&mut self, run_id: &str) {
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

    pub(super) fn task_by_key(&self, run_id: &str, key: &str) -> Option<&TaskRow> {
        self.by_run[run_id]
            .iter()
            .map(|id| &self.tasks[id])
            .find(|t| t.key == key)
    }

    pub(super) fn requeue(&mut self, id: &str) {
        let now = self.now;
        let t = self.tasks.get_mut(id).expect("loaded");
        t.state = TaskState::Ready;
        t.attempt = 0;
        t.error = None;
        t.lease_id.clear();
        t.end_time = 0;
        t.ready_at = now;
        t.schedule_deadline = deadline(now, t.timeouts.schedule_to_start_ms);
        // An approval asked again says so: it waits for a decision.
        let kind = match ready_or_waiting(t) {
            EventKind::TaskWaiting => EventKind::TaskWaiting,
            _ => EventKind::TaskRequeued,
        };
        let run_id = t.run_id.clone();
        self.touch_task(id);
        self.emit(&run_id, kind, Some(id), String::new());
    }

    pub(super) fn fail_attempt(&mut self, id: &str, e: TaskError) {
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
    pub(super) fn kill(&mut self, id: &str, e: TaskError) {
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

    pub(super) fn on_dead(&mut self, id: &str, run_id: &str) {
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

    pub(super) fn cancel_task(&mut self, id: &str, kind: &str, reason: &str) {
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
    pub(super) fn make_ready(&mut self, id: &str) {
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
                        Ref::Message(_) => None,
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
                let kind = ready_or_waiting(t);
                self.touch_task(id);
                self.emit(&run_id, kind, Some(id), String::new());
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
    pub(super) fn settle(&mut self, run_id: &str) {
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

/// A task that became READY: an approval task waits for a decision
/// instead, where no worker claims it. The event that says which.
pub(super) fn ready_or_waiting(t: &mut TaskRow) -> EventKind {
    if t.agent == APPROVAL_AGENT {
        t.state = TaskState::Waiting;
        EventKind::TaskWaiting
    } else {
        EventKind::TaskReady
    }
}
