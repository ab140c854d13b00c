//! The engine: one task that owns the queue's hot path. It gathers every
//! submit, result, heartbeat and credit that arrives while the previous
//! batch commits, applies them as ONE transaction, then hands new leases to
//! the workers that had credit, acknowledges, and announces. Commits are
//! shared (group commit) and nothing on the path waits for another hop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use devcycle::proto::registry::v1 as reg;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::time::{now_ms, to_timestamp};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::hub::Hub;
use crate::machine::Reject;
use crate::model::*;
use crate::store::{Applied, Batch, Claim, Op, OpResult, SchedulerStore, Submit};

/// Most items gathered into one batch.
const MAX_BATCH: usize = 2048;
/// Timers are checked at least this often, for those other schedulers set.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Log lines kept per attempt; one marker line notes the rest were dropped.
pub const MAX_LOG_LINES: u32 = 1000;
pub const LOG_TRUNCATED: &str = "[devcycle: log truncated; later lines were dropped]";

pub type Outbound = mpsc::UnboundedSender<Result<pb::WorkResponse, Status>>;

/// A connected worker stream.
pub struct WorkerConn {
    pub conn: u64,
    pub worker_id: String,
    pub agents: Vec<String>,
    pub tx: Outbound,
}

pub enum Cmd {
    Submit {
        submit: Submit,
        specs: Vec<Arc<reg::AgentVersion>>,
        reply: oneshot::Sender<Result<(String, bool), Status>>,
    },
    Rpc {
        op: Op,
        reply: oneshot::Sender<Result<OpResult, Status>>,
    },
    Connect(WorkerConn),
    Disconnect {
        conn: u64,
    },
    Credit {
        conn: u64,
        n: u32,
    },
    Result {
        conn: u64,
        lease: Lease,
        outcome: Outcome,
    },
    Heartbeat {
        conn: u64,
        leases: Vec<Lease>,
    },
    Release {
        conn: u64,
        lease: Lease,
    },
    Progress {
        lease: Lease,
        percent: u32,
        message: String,
    },
    Logs {
        lease: Lease,
        lines: Vec<LogRow>,
    },
    /// Another scheduler made tasks claimable.
    RemoteReady,
}

/// The handle services use.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Cmd>,
    next_conn: Arc<AtomicU64>,
    pub hub: Arc<Hub>,
}

impl Engine {
    /// `direct`: a bus that needs no outbox (in-process) and its topic;
    /// committed events are published to it right after each batch.
    pub fn start(
        store: Arc<dyn SchedulerStore>,
        hub: Arc<Hub>,
        direct: Option<(Arc<dyn devcycle::bus::EventBus>, String)>,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let core = Core {
            store,
            hub: Arc::clone(&hub),
            rx,
            workers: HashMap::new(),
            by_worker: HashMap::new(),
            specs: HashMap::new(),
            stored_specs: HashSet::new(),
            log_counts: HashMap::new(),
            lease_runs: HashMap::new(),
            pending: Pending::default(),
            db_may_have_ready: true,
            next_due: 0,
            rotation: 0,
            direct,
            shutdown,
        };
        let task = tokio::spawn(core.run());
        (
            Self {
                tx,
                next_conn: Arc::new(AtomicU64::new(1)),
                hub,
            },
            task,
        )
    }

    pub fn send(&self, cmd: Cmd) -> Result<(), Status> {
        self.tx
            .send(cmd)
            .map_err(|_| Status::unavailable("the scheduler is shutting down"))
    }

    pub fn new_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub async fn submit(
        &self,
        submit: Submit,
        specs: Vec<Arc<reg::AgentVersion>>,
    ) -> Result<(String, bool), Status> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Submit {
            submit,
            specs,
            reply,
        })?;
        rx.await
            .map_err(|_| Status::unavailable("the scheduler is shutting down"))?
    }

    pub async fn rpc(&self, op: Op) -> Result<OpResult, Status> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Rpc { op, reply })?;
        rx.await
            .map_err(|_| Status::unavailable("the scheduler is shutting down"))?
    }
}

enum ReplyTo {
    Rpc(oneshot::Sender<Result<OpResult, Status>>),
    Result {
        conn: u64,
        lease: Lease,
    },
    Heartbeat {
        conn: u64,
        group: usize,
        lease: Lease,
    },
    Nobody,
}

/// Answers a submitter: the run id, and whether it was created.
type SubmitReply = oneshot::Sender<Result<(String, bool), Status>>;

#[derive(Default)]
struct Pending {
    submits: Vec<(Submit, SubmitReply)>,
    ops: Vec<(Op, ReplyTo)>,
    logs: Vec<LogRow>,
    heartbeat_groups: usize,
    /// Something may have become claimable.
    claimable: bool,
}

impl Pending {
    fn len(&self) -> usize {
        self.submits.len() + self.ops.len() + self.logs.len()
    }
}

struct Conn {
    worker_id: String,
    agents: Vec<String>,
    credits: u32,
    tx: Outbound,
}

struct Core {
    store: Arc<dyn SchedulerStore>,
    hub: Arc<Hub>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    workers: HashMap<u64, Conn>,
    by_worker: HashMap<String, u64>,
    specs: HashMap<(String, String), Arc<reg::AgentVersion>>,
    /// Agent versions known to be stored: later submits need not write them.
    stored_specs: HashSet<(String, String)>,
    log_counts: HashMap<(String, u32), u32>,
    /// Runs of the tasks this engine leased, until their results arrive.
    lease_runs: HashMap<String, String>,
    pending: Pending,
    /// Claimable tasks may be waiting in the database.
    db_may_have_ready: bool,
    /// When a timer (lease expiry, retry, deadline) is next due.
    next_due: i64,
    rotation: usize,
    direct: Option<(Arc<dyn devcycle::bus::EventBus>, String)>,
    shutdown: CancellationToken,
}

impl Core {
    async fn run(mut self) {
        loop {
            let wait = Duration::from_millis(
                (self.next_due - now_ms()).clamp(0, MAX_SLEEP.as_millis() as i64) as u64,
            );
            let mut timer = false;
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                cmd = self.rx.recv() => match cmd {
                    Some(c) => self.take(c),
                    None => break,
                },
                _ = tokio::time::sleep(wait) => timer = true,
            }
            while self.pending.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(c) => self.take(c),
                    Err(_) => break,
                }
            }
            if timer {
                self.db_may_have_ready = true;
            }
            self.flush().await;
        }
        // Callers still waiting learn that nothing was recorded.
        for (_, reply) in self.pending.submits.drain(..) {
            let _ = reply.send(Err(Status::unavailable("the scheduler is shutting down")));
        }
        for (_, to) in self.pending.ops.drain(..) {
            if let ReplyTo::Rpc(reply) = to {
                let _ = reply.send(Err(Status::unavailable("the scheduler is shutting down")));
            }
        }
    }

    fn take(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Submit {
                submit,
                specs,
                reply,
            } => {
                for s in specs {
                    self.specs.insert((s.agent.clone(), s.version.clone()), s);
                }
                self.pending.claimable = true;
                self.pending.submits.push((submit, reply));
            }
            Cmd::Rpc { op, reply } => {
                self.pending.claimable |= matches!(op, Op::Retry { .. });
                self.pending.ops.push((op, ReplyTo::Rpc(reply)));
            }
            Cmd::Connect(w) => {
                if let Some(old) = self.by_worker.insert(w.worker_id.clone(), w.conn)
                    && let Some(prev) = self.workers.remove(&old)
                {
                    tracing::info!(worker_id = %prev.worker_id, "worker reconnected; closing its previous stream");
                    let _ = prev.tx.send(Err(Status::aborted(
                        "replaced by a newer stream of the same worker",
                    )));
                }
                self.workers.insert(
                    w.conn,
                    Conn {
                        worker_id: w.worker_id,
                        agents: w.agents,
                        credits: 0,
                        tx: w.tx,
                    },
                );
            }
            Cmd::Disconnect { conn } => {
                if let Some(w) = self.workers.remove(&conn)
                    && self.by_worker.get(&w.worker_id) == Some(&conn)
                {
                    self.by_worker.remove(&w.worker_id);
                }
            }
            Cmd::Credit { conn, n } => {
                if let Some(w) = self.workers.get_mut(&conn) {
                    w.credits = w.credits.saturating_add(n).min(100_000);
                    self.pending.claimable |= self.db_may_have_ready;
                }
            }
            Cmd::Result {
                conn,
                lease,
                outcome,
            } => {
                self.log_counts
                    .remove(&(lease.task_id.clone(), lease.attempt));
                self.pending.claimable = true;
                let op = Op::Complete {
                    lease: lease.clone(),
                    outcome,
                };
                self.pending.ops.push((op, ReplyTo::Result { conn, lease }));
            }
            Cmd::Heartbeat { conn, leases } => {
                let group = self.pending.heartbeat_groups;
                self.pending.heartbeat_groups += 1;
                for lease in leases {
                    let op = Op::Heartbeat {
                        lease: lease.clone(),
                    };
                    self.pending
                        .ops
                        .push((op, ReplyTo::Heartbeat { conn, group, lease }));
                }
            }
            Cmd::Release { conn, lease } => {
                self.pending.claimable = true;
                let op = Op::Release {
                    lease: lease.clone(),
                };
                self.pending.ops.push((op, ReplyTo::Result { conn, lease }));
            }
            Cmd::Progress {
                lease,
                percent,
                message,
            } => {
                self.pending.ops.push((
                    Op::Progress {
                        lease,
                        percent,
                        message,
                    },
                    ReplyTo::Nobody,
                ));
            }
            Cmd::Logs { lease, lines } => self.take_logs(lease, lines),
            Cmd::RemoteReady => {
                self.db_may_have_ready = true;
                self.pending.claimable = true;
            }
        }
    }

    fn take_logs(&mut self, lease: Lease, lines: Vec<LogRow>) {
        if self.log_counts.len() > 100_000 {
            self.log_counts.clear();
        }
        let n = self
            .log_counts
            .entry((lease.task_id.clone(), lease.attempt))
            .or_insert(0);
        for mut line in lines {
            if *n > MAX_LOG_LINES {
                break;
            }
            *n += 1;
            if *n > MAX_LOG_LINES {
                line.stream = "executor".into();
                line.line = LOG_TRUNCATED.into();
            }
            line.task_id = lease.task_id.clone();
            line.attempt = lease.attempt;
            self.pending.logs.push(line);
        }
    }

    async fn flush(&mut self) {
        let now = now_ms();
        let sweep = now >= self.next_due;
        let want_claims = self.pending.claimable || sweep || self.db_may_have_ready;
        let mut claims = Vec::new();
        if want_claims && !self.workers.is_empty() {
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
            for c in conns {
                let w = &self.workers[&c];
                claims.push(Claim {
                    worker_id: w.worker_id.clone(),
                    agents: w.agents.clone(),
                    max: w.credits,
                });
            }
        }
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
        let (ops, op_replies): (Vec<Op>, Vec<ReplyTo>) = pending.ops.into_iter().unzip();
        let known_runs = ops
            .iter()
            .filter_map(|op| match op {
                Op::Complete { lease, .. }
                | Op::Heartbeat { lease }
                | Op::Release { lease }
                | Op::Progress { lease, .. } => {
                    let run = self.lease_runs.get(&lease.task_id)?;
                    Some((lease.task_id.clone(), run.clone()))
                }
                _ => None,
            })
            .collect();
        let batch = Batch {
            now,
            submits,
            ops,
            sweep,
            claims,
            claim_from_db: self.db_may_have_ready || sweep,
            logs: pending.logs,
            known_runs,
        };
        if batch.is_empty() {
            self.next_due = self.next_due.max(now + MAX_SLEEP.as_millis() as i64);
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
            Err(e) => {
                tracing::error!(error = %e, "scheduler batch failed; callers are told to retry");
                let status = Status::from(e);
                for reply in submit_replies {
                    let _ = reply.send(Err(status.clone()));
                }
                for to in op_replies {
                    match to {
                        ReplyTo::Rpc(reply) => {
                            let _ = reply.send(Err(status.clone()));
                        }
                        // The worker re-sends what was not acknowledged
                        // when it reconnects.
                        ReplyTo::Result { conn, .. } | ReplyTo::Heartbeat { conn, .. } => {
                            if let Some(w) = self.workers.remove(&conn) {
                                self.by_worker.remove(&w.worker_id);
                                let _ = w.tx.send(Err(status.clone()));
                            }
                        }
                        ReplyTo::Nobody => {}
                    }
                }
            }
        }
    }

    /// Applies a batch, retrying lost races and deadlocks a few times.
    async fn apply(&self, batch: Batch) -> crate::error::Result<Applied> {
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
        a: Applied,
        submit_replies: Vec<SubmitReply>,
        op_replies: Vec<ReplyTo>,
    ) {
        // New leases first: the workers are waiting.
        let mut granted: HashMap<String, u32> = HashMap::new();
        if self.lease_runs.len() > 100_000 {
            // Leases that expired without a result: forget them.
            self.lease_runs.clear();
        }
        for task in &a.leased {
            self.lease_runs.insert(task.id.clone(), task.run_id.clone());
            *granted.entry(task.worker_id.clone()).or_default() += 1;
            let Some(conn) = self.by_worker.get(&task.worker_id).copied() else {
                continue;
            };
            let Some(spec) = self.spec(&task.agent, &task.agent_version).await else {
                tracing::error!(task_id = %task.id, agent = %task.agent, "no stored spec for the task's agent version");
                continue;
            };
            if let Some(w) = self.workers.get(&conn) {
                let _ = w.tx.send(Ok(assignment(task, spec)));
            }
        }
        for (worker, n) in granted {
            if let Some(w) = self
                .by_worker
                .get(&worker)
                .and_then(|c| self.workers.get_mut(c))
            {
                w.credits = w.credits.saturating_sub(n);
            }
        }
        for (reply, submitted) in submit_replies.into_iter().zip(a.submitted) {
            let _ = reply.send(Ok(submitted));
        }
        let mut heartbeats: HashMap<usize, (u64, pb::HeartbeatAck)> = HashMap::new();
        for (to, result) in op_replies.into_iter().zip(a.results) {
            match to {
                ReplyTo::Rpc(reply) => {
                    let _ = reply.send(Ok(result));
                }
                ReplyTo::Result { conn, lease } => {
                    self.lease_runs.remove(&lease.task_id);
                    let (accepted, reason) = match &result {
                        OpResult::Rejected(r) => (false, r.to_string()),
                        _ => (true, String::new()),
                    };
                    if let Some(w) = self.workers.get(&conn) {
                        let ack = pb::ResultAck {
                            lease: Some(lease_ref(&lease)),
                            accepted,
                            reason,
                        };
                        let _ = w.tx.send(Ok(pb::WorkResponse {
                            msg: Some(pb::work_response::Msg::ResultAck(ack)),
                        }));
                    }
                }
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
                        _ => ack.lost.push(lease_ref(&lease)),
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
        for c in &a.cancels {
            if let Some(w) = self
                .by_worker
                .get(&c.worker_id)
                .and_then(|conn| self.workers.get(conn))
            {
                let _ = w.tx.send(Ok(pb::WorkResponse {
                    msg: Some(pb::work_response::Msg::Cancel(pb::CancelTask {
                        lease: Some(lease_ref(&c.lease)),
                        reason: c.reason.clone(),
                    })),
                }));
            }
        }
        let mut last: HashMap<&str, i64> = HashMap::new();
        for e in &a.events {
            let s = last.entry(e.run_id.as_str()).or_default();
            *s = (*s).max(e.seq);
        }
        for (run, seq) in last {
            self.hub.events(run, seq);
        }
        if !a.events.is_empty() {
            match &self.direct {
                Some((bus, topic)) => {
                    let messages: Vec<_> = a
                        .events
                        .iter()
                        .map(|e| crate::outbox::message(topic, e))
                        .collect();
                    let _ = bus.publish(&messages).await;
                }
                None => self.hub.outbox.notify_one(),
            }
        }
        for f in a.finished {
            self.hub.finished(Arc::new(f));
        }
        if a.ready_left {
            self.db_may_have_ready = true;
        } else if a.db_drained {
            self.db_may_have_ready = false;
        }
        if let Some(due) = a.next_due {
            self.next_due = if a.swept { due } else { self.next_due.min(due) };
        } else if a.swept {
            self.next_due = now_ms() + MAX_SLEEP.as_millis() as i64;
        }
    }

    async fn spec(&mut self, agent: &str, version: &str) -> Option<Arc<reg::AgentVersion>> {
        let key = (agent.to_owned(), version.to_owned());
        if let Some(s) = self.specs.get(&key) {
            return Some(Arc::clone(s));
        }
        let bytes = self.store.agent_spec(agent, version).await.ok()??;
        let spec = Arc::new(reg::AgentVersion::decode(bytes.as_slice()).ok()?);
        self.specs.insert(key, Arc::clone(&spec));
        Some(spec)
    }
}

pub fn lease_ref(l: &Lease) -> pb::LeaseRef {
    pb::LeaseRef {
        task_id: l.task_id.clone(),
        attempt: l.attempt,
        lease_id: l.lease_id.clone(),
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
            timeouts: Some(pb::Timeouts {
                schedule_to_start_ms: t.timeouts.schedule_to_start_ms,
                start_to_close_ms: t.timeouts.start_to_close_ms,
                heartbeat_ms: t.timeouts.heartbeat_ms,
            }),
        })),
    }
}

/// Rejections as the statuses callers see.
pub fn reject_status(r: Reject) -> Status {
    match r {
        Reject::NotFound(m) => Status::not_found(m),
        Reject::Stale(m) | Reject::State(m) => Status::failed_precondition(m),
    }
}
