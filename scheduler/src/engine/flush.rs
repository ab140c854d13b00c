//! One turn of the engine: gather what is pending into a batch, apply it in
//! one transaction, then deliver what it decided — leases to workers,
//! answers to callers, cancellations, notifications.

use std::sync::Arc;
use std::time::Duration;

use devcycle::proto::registry::v1 as reg;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::time::{now_ms, to_timestamp};
use hashbrown::HashMap;

use super::{Core, Held, MAX_SLEEP, ReplyTo, SubmitReply, lease_ref};
use crate::error::{Error, Result};
use crate::model::*;
use crate::store::{Applied, Batch, Claim, Op, OpResult, Submit};

impl Core {
    pub(super) async fn flush(&mut self) {
        let now = now_ms();
        let sweep = now >= self.next_due;
        let want_claims = self.pending.claimable || sweep || self.db_may_have_ready;
        let claims = if want_claims {
            self.claims()
        } else {
            Vec::new()
        };
        let pending = std::mem::take(&mut self.pending);
        let (mut submits, submit_replies): (Vec<Submit>, Vec<_>) =
            pending.submits.into_iter().unzip();
        let mut new_specs = Vec::new();
        for s in &mut submits {
            s.agents.retain(|a| {
                !self
                    .stored_specs
                    .contains(&(a.agent.clone(), a.version.clone()))
            });
            new_specs.extend(
                s.agents
                    .iter()
                    .map(|a| (a.agent.clone(), a.version.clone())),
            );
        }
        let known_runs = self.known_runs(&pending.ops);
        let (ops, op_replies): (Vec<Op>, Vec<ReplyTo>) = pending.ops.into_iter().unzip();
        let batch = Batch {
            now,
            submits,
            ops,
            sweep,
            claims,
            claim_from_db: self.db_may_have_ready || sweep,
            logs: pending.logs,
            known_runs,
            notices: pending.notices,
        };
        if batch.is_empty() {
            return;
        }
        if sweep {
            // Until the sweep reports the real next timer.
            self.next_due = now + MAX_SLEEP.as_millis() as i64;
        }
        let items = batch.submits.len() + batch.ops.len() + batch.logs.len();
        let started = std::time::Instant::now();
        let result = self.apply(batch).await;
        metrics::histogram!("scheduler_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("scheduler_batch_items").record(items as f64);
        match result {
            Ok(applied) => {
                self.stored_specs.extend(new_specs);
                self.dispatch(applied, submit_replies, op_replies).await
            }
            Err(e) => self.failed(e, submit_replies, op_replies),
        }
    }

    /// Every stream with credit, in a rotating order so that no worker is
    /// always served first.
    fn claims(&mut self) -> Vec<Claim> {
        let mut conns: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.credits > 0)
            .map(|(c, _)| *c)
            .collect();
        conns.sort_unstable();
        if !conns.is_empty() {
            let r = self.rotation % conns.len();
            conns.rotate_left(r);
            self.rotation = self.rotation.wrapping_add(1);
        }
        conns
            .into_iter()
            .map(|c| {
                let w = &self.workers[&c];
                Claim {
                    worker_id: w.worker_id.clone(),
                    agents: w.agents.clone(),
                    max: w.credits,
                }
            })
            .collect()
    }

    /// Runs of the tasks whose leases the sending streams hold, so that
    /// loading them needs no lookup.
    fn known_runs(&self, ops: &[(Op, ReplyTo)]) -> HashMap<String, String> {
        let mut known = HashMap::with_capacity(ops.len());
        known.extend(ops.iter().filter_map(|(op, to)| {
            let conn = match to {
                ReplyTo::Result { conn, .. } | ReplyTo::Heartbeat { conn, .. } => *conn,
                _ => return None,
            };
            let lease = op.lease()?;
            let held = self.workers.get(&conn)?.holds(lease)?;
            Some((lease.task_id.clone(), held.run_id.clone()))
        }));
        known
    }

    fn failed(&mut self, e: Error, submit_replies: Vec<SubmitReply>, op_replies: Vec<ReplyTo>) {
        tracing::error!(error = %e, "scheduler batch failed; callers are told to retry");
        let told = e.clone().retry_later();
        for reply in submit_replies {
            let _ = reply.send(Err(told.clone()));
        }
        for to in op_replies {
            match to {
                ReplyTo::Rpc(reply) => {
                    let _ = reply.send(Err(told.clone()));
                }
                // The worker re-sends what was not acknowledged, and its
                // leases are reconciled again, when it reconnects.
                ReplyTo::Result { conn, .. }
                | ReplyTo::Heartbeat { conn, .. }
                | ReplyTo::Reconcile { conn } => self.close(conn, e.clone()),
                ReplyTo::Nobody => {}
            }
        }
    }

    /// Applies a batch, retrying lost races and deadlocks a few times.
    async fn apply(&self, batch: Batch) -> Result<Applied> {
        let mut tries = 0;
        loop {
            tries += 1;
            let attempt = if tries < 4 && self.store.concurrent_writers() {
                batch.clone()
            } else {
                return self.store.apply(batch).await;
            };
            match self.store.apply(attempt).await {
                Err(e) if e.is_retryable() => {
                    tracing::debug!(error = %e, tries, "batch lost a race; retrying");
                    tokio::time::sleep(Duration::from_millis(tries * 2)).await;
                }
                other => return other,
            }
        }
    }

    async fn dispatch(
        &mut self,
        mut a: Applied,
        submit_replies: Vec<SubmitReply>,
        op_replies: Vec<ReplyTo>,
    ) {
        // New leases first: the workers are waiting.
        self.deliver_leases(&a.leased).await;
        record_metrics(&a);
        for (reply, submitted) in submit_replies.into_iter().zip(a.submitted) {
            let _ = reply.send(Ok(submitted));
        }
        let mut heartbeats: HashMap<usize, (u64, pb::HeartbeatAck)> = HashMap::new();
        for (to, result) in op_replies.into_iter().zip(a.results) {
            match to {
                ReplyTo::Rpc(reply) => {
                    let _ = reply.send(Ok(result));
                }
                ReplyTo::Result { conn, lease } => self.ack_result(conn, &lease, &result),
                ReplyTo::Heartbeat { conn, group, lease } => {
                    let (_, ack) = heartbeats
                        .entry(group)
                        .or_insert_with(|| (conn, pb::HeartbeatAck::default()));
                    match result {
                        OpResult::Extended(until) => {
                            ack.extended.push(lease_ref(&lease));
                            let t = to_timestamp(until);
                            if ack
                                .lease_deadline
                                .as_ref()
                                .is_none_or(|d| d.seconds > t.seconds)
                            {
                                ack.lease_deadline = Some(t);
                            }
                        }
                        _ => {
                            self.forget_lease(conn, &lease);
                            ack.lost.push(lease_ref(&lease));
                        }
                    }
                }
                ReplyTo::Reconcile { conn } => {
                    if let (OpResult::Held(kept), Some(w)) = (result, self.workers.get_mut(&conn)) {
                        for k in kept {
                            let mut h = held(&k.lease, k.run_id);
                            h.log_lines = k.log_lines;
                            w.leases.insert(k.lease.task_id.clone(), h);
                        }
                    }
                }
                ReplyTo::Nobody => {}
            }
        }
        for (_, (conn, ack)) in heartbeats {
            if let Some(w) = self.workers.get(&conn) {
                let _ = w.tx.send(Ok(pb::WorkResponse {
                    msg: Some(pb::work_response::Msg::HeartbeatAck(ack)),
                }));
            }
        }
        // Workers connected elsewhere hear of these through the notices
        // the batch committed.
        for c in &a.cancels {
            self.deliver_cancel(c);
        }
        let finished = std::mem::take(&mut a.finished);
        self.announce(&a.events, finished).await;
        if a.ready_left {
            self.db_may_have_ready = true;
        } else if a.db_drained {
            self.db_may_have_ready = false;
        }
        if a.swept {
            let cap = now_ms() + MAX_SLEEP.as_millis() as i64;
            self.next_due = a.next_due.map_or(cap, |d| d.min(cap));
        } else if let Some(due) = a.next_due {
            self.next_due = self.next_due.min(due);
        }
    }

    /// Sends new leases to their streams. A lease whose stream is gone goes
    /// back to the queue at once, without using an attempt.
    async fn deliver_leases(&mut self, leased: &[TaskRow]) {
        let mut granted: HashMap<u64, u32> = HashMap::new();
        for task in leased {
            let lease = Lease {
                task_id: task.id.clone(),
                attempt: task.attempt,
                lease_id: task.lease_id.clone(),
            };
            let conn = self.by_worker.get(&task.worker_id).copied();
            let spec = self.spec(&task.agent, &task.agent_version).await;
            let delivered = match (conn, spec) {
                (Some(conn), Some(spec)) => {
                    *granted.entry(conn).or_default() += 1;
                    let w = self.workers.get_mut(&conn).expect("indexed");
                    if w.tx.send(Ok(assignment(task, spec))).is_ok() {
                        w.leases
                            .insert(task.id.clone(), held(&lease, task.run_id.clone()));
                        true
                    } else {
                        self.close(conn, Error::Unavailable("stream closed".into()));
                        false
                    }
                }
                (None, _) => false,
                (Some(_), None) => {
                    // The lease expires and the attempt fails: nothing here
                    // can run a task whose agent version is not stored.
                    tracing::error!(task_id = %task.id, agent = %task.agent, "no stored spec for the task's agent version");
                    continue;
                }
            };
            if !delivered {
                metrics::counter!("scheduler_leases_undelivered_total").increment(1);
                tracing::info!(task_id = %task.id, worker_id = %task.worker_id, "lease not delivered: the stream is gone; returning it");
                self.pending.claimable = true;
                self.pending.ops.push((
                    Op::Release {
                        lease,
                        undelivered: true,
                    },
                    ReplyTo::Nobody,
                ));
            }
        }
        for (conn, n) in granted {
            if let Some(w) = self.workers.get_mut(&conn) {
                w.credits = w.credits.saturating_sub(n);
            }
        }
    }

    fn ack_result(&mut self, conn: u64, lease: &Lease, result: &OpResult) {
        self.forget_lease(conn, lease);
        let (accepted, reason) = match result {
            OpResult::Rejected(r) => (false, r.to_string()),
            _ => (true, String::new()),
        };
        if let Some(w) = self.workers.get(&conn) {
            let ack = pb::ResultAck {
                lease: Some(lease_ref(lease)),
                accepted,
                reason,
            };
            let _ = w.tx.send(Ok(pb::WorkResponse {
                msg: Some(pb::work_response::Msg::ResultAck(ack)),
            }));
        }
    }

    fn forget_lease(&mut self, conn: u64, lease: &Lease) {
        if let Some(w) = self.workers.get_mut(&conn)
            && w.holds(lease).is_some()
        {
            w.leases.remove(&lease.task_id);
        }
    }

    /// Wakes watchers, waiters and the outbox, or publishes to an
    /// in-process bus directly.
    async fn announce(&mut self, events: &[EventRow], finished: Vec<(RunRow, Vec<TaskRow>)>) {
        let mut last: HashMap<&str, i64> = HashMap::new();
        for e in events {
            let s = last.entry(e.run_id.as_str()).or_default();
            *s = (*s).max(e.seq);
        }
        for (run, seq) in last {
            self.hub.events(run, seq);
        }
        if !events.is_empty() {
            match &self.direct {
                Some((bus, topic)) => {
                    let messages: Vec<_> = events
                        .iter()
                        .map(|e| crate::outbox::message(topic, e))
                        .collect();
                    let _ = bus.publish(&messages).await;
                }
                None => self.hub.outbox.notify_one(),
            }
        }
        for f in finished {
            self.hub.finished(Arc::new(f));
        }
    }
}

/// What a committed batch adds to the metrics: how long each new lease
/// waited since its task became ready, and the attempts that failed.
fn record_metrics(a: &Applied) {
    if !a.leased.is_empty() {
        let now = devcycle::time::now_ms();
        let waited = metrics::histogram!("scheduler_dispatch_seconds");
        for t in &a.leased {
            waited.record((now - t.ready_at).max(0) as f64 / 1000.0);
        }
    }
    for f in &a.failed {
        let agent = [("agent", f.agent.clone())];
        if f.dead {
            metrics::counter!("scheduler_dead_lettered_total", &agent).increment(1);
        } else {
            metrics::counter!("scheduler_retries_total", &agent).increment(1);
        }
        if f.lease_expired {
            metrics::counter!("scheduler_lease_expiries_total").increment(1);
        }
    }
}

fn held(lease: &Lease, run_id: String) -> Held {
    Held {
        attempt: lease.attempt,
        lease_id: lease.lease_id.clone(),
        run_id,
        log_lines: 0,
    }
}

fn assignment(t: &TaskRow, spec: Arc<reg::AgentVersion>) -> pb::WorkResponse {
    pb::WorkResponse {
        msg: Some(pb::work_response::Msg::Assignment(pb::Assignment {
            lease: Some(pb::LeaseRef {
                task_id: t.id.clone(),
                attempt: t.attempt,
                lease_id: t.lease_id.clone(),
            }),
            run_id: t.run_id.clone(),
            task_key: t.key.clone(),
            agent: Some((*spec).clone()),
            input: t.input.clone(),
            lease_deadline: Some(to_timestamp(t.lease_expires)),
            traceparent: t.traceparent.clone(),
            timeouts: Some(pb::Timeouts {
                schedule_to_start_ms: t.timeouts.schedule_to_start_ms,
                start_to_close_ms: t.timeouts.start_to_close_ms,
                heartbeat_ms: t.timeouts.heartbeat_ms,
            }),
        })),
    }
}
