//! The operations a batch applies: leasing, results, heartbeats, timers,
//! cancellation and retries. Each checks the state (and the lease) it is
//! given; one that does not apply changes nothing and says why.

use rand::Rng;
use serde_json::Value;

use super::{CancelNotice, Machine, Reject, deadline, kinds, truncate};
use crate::model::*;

impl Machine {
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
                self.succeed(id, output, String::new());
            }
            Outcome::Failure(e) => self.fail_attempt(id, e),
        }
        Ok(())
    }

    /// A task succeeded with `output`: its dependents may become ready.
    fn succeed(&mut self, id: &str, output: String, message: String) {
        let now = self.now;
        let t = self.tasks.get_mut(id).expect("checked");
        t.state = TaskState::Succeeded;
        t.output = Some(output);
        t.error = None;
        t.end_time = now;
        t.lease_id.clear();
        let (run_id, dependents) = (t.run_id.clone(), t.dependents.clone());
        self.touch_task(id);
        self.emit(&run_id, EventKind::TaskSucceeded, Some(id), message);
        for d in dependents {
            let Some(dt) = self.tasks.get_mut(&d) else {
                continue;
            };
            dt.deps_pending = dt.deps_pending.saturating_sub(1);
            self.touch_task(&d);
            if self.tasks[&d].deps_pending == 0 && self.tasks[&d].state == TaskState::Pending {
                self.make_ready(&d);
            }
        }
        self.settle(&run_id);
    }

    /// A person's decision on a waiting approval task: approved, it
    /// succeeds with the decision as its output; rejected, it is dead.
    pub fn decide(&mut self, task_id: &str, d: &Decision) -> Result<(), Reject> {
        let t = self
            .tasks
            .get(task_id)
            .ok_or_else(|| Reject::NotFound(format!("task {task_id} does not exist")))?;
        if t.state != TaskState::Waiting {
            return Err(Reject::State(format!(
                "task {task_id} is not waiting for approval (it is {})",
                t.state.as_str()
            )));
        }
        let said = if d.comment.is_empty() {
            String::new()
        } else {
            format!(": {}", d.comment)
        };
        if d.approve {
            let output = serde_json::json!({
                "approved": true, "by": d.by, "comment": d.comment,
            });
            let message = format!("approved by {}{said}", d.by);
            self.succeed(task_id, output.to_string(), message);
        } else {
            let e = TaskError {
                kind: kinds::APPROVAL_REJECTED.into(),
                message: format!("rejected by {}{said}", d.by),
                retryable: false,
            };
            self.kill(task_id, e);
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
        let waiting = t.state == TaskState::Waiting;
        if !(t.state.is_claimable() || waiting)
            || t.schedule_deadline == 0
            || t.schedule_deadline > now
        {
            return Err(Reject::State(format!(
                "task {task_id} is not past its deadline"
            )));
        }
        let ms = t.timeouts.schedule_to_start_ms;
        let (kind, message) = if waiting {
            (
                kinds::APPROVAL_TIMEOUT,
                format!("no decision within {ms} ms"),
            )
        } else {
            (
                kinds::SCHEDULE_TO_START_TIMEOUT,
                format!("not started within {ms} ms"),
            )
        };
        self.kill(
            task_id,
            TaskError {
                kind: kind.into(),
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
}
