//! The engine: one task that owns the queue's hot path. It gathers every
//! submit, result, heartbeat and credit that arrives while the previous
//! batch commits, applies them as ONE transaction, then hands new leases to
//! the workers that had credit, acknowledges, and announces. Commits are
//! shared (group commit) and nothing on the path waits for another hop.
//!
//! Timers (lease expiry, retry backoff, schedule-to-start deadlines) are
//! swept when the earliest one this engine knows of is due, and at least
//! every [`MAX_SLEEP`] for timers that other schedulers set, whatever the
//! traffic: a sweep is never postponed by batches that do not sweep.

mod flush;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use devcycle::proto::registry::v1 as reg;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::time::now_ms;
use hashbrown::{HashMap, HashSet};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::hub::Hub;
use crate::machine::CancelNotice;
use crate::model::*;
use crate::store::{Op, OpResult, SchedulerStore, Submit};

/// Most items gathered into one batch.
const MAX_BATCH: usize = 2048;
/// Timers are swept at least this often, for those other schedulers set.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Log lines kept per attempt; one marker line notes the rest were dropped.
pub const MAX_LOG_LINES: u32 = 1000;
pub const LOG_TRUNCATED: &str = "[devcycle: log truncated; later lines were dropped]";

/// What a worker stream is sent; an error ends the stream.
pub type Outbound = mpsc::UnboundedSender<Result<pb::WorkResponse>>;

/// A connected worker stream.
pub struct WorkerConn {
    pub conn: u64,
    pub worker_id: String,
    pub agents: Vec<String>,
    /// Every lease the worker holds (see `WorkerHello.held`).
    pub held: Vec<Lease>,
    /// The worker process's stream number, from 1.
    pub session: u64,
    pub tx: Outbound,
}

pub enum Cmd {
    Submit {
        submit: Submit,
        specs: Vec<Arc<reg::AgentVersion>>,
        reply: oneshot::Sender<Result<(String, bool)>>,
    },
    Rpc {
        op: Op,
        reply: oneshot::Sender<Result<OpResult>>,
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
        conn: u64,
        lease: Lease,
        percent: u32,
        message: String,
    },
    Logs {
        conn: u64,
        lease: Lease,
        lines: Vec<LogRow>,
    },
    /// Another scheduler made tasks claimable.
    RemoteReady,
    /// Another scheduler committed cancellations; deliver those whose
    /// worker is connected here.
    RemoteCancel(Vec<CancelNotice>),
    /// A worker opened stream `session` on another scheduler: an older
    /// stream of it here is gone.
    RemoteConnect {
        worker_id: String,
        session: u64,
    },
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

    pub fn send(&self, cmd: Cmd) -> Result<()> {
        self.tx.send(cmd).map_err(|_| Error::ShuttingDown)
    }

    pub fn new_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub async fn submit(
        &self,
        submit: Submit,
        specs: Vec<Arc<reg::AgentVersion>>,
    ) -> Result<(String, bool)> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Submit {
            submit,
            specs,
            reply,
        })?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    pub async fn rpc(&self, op: Op) -> Result<OpResult> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Rpc { op, reply })?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }
}

enum ReplyTo {
    Rpc(oneshot::Sender<Result<OpResult>>),
    Result {
        conn: u64,
        lease: Lease,
    },
    Heartbeat {
        conn: u64,
        group: usize,
        lease: Lease,
    },
    /// The leases a reconnected worker still validly holds.
    Reconcile {
        conn: u64,
    },
    Nobody,
}

/// Answers a submitter: the run id, and whether it was created.
type SubmitReply = oneshot::Sender<Result<(String, bool)>>;

#[derive(Default)]
struct Pending {
    submits: Vec<(Submit, SubmitReply)>,
    ops: Vec<(Op, ReplyTo)>,
    logs: Vec<LogRow>,
    /// Cancellations and connections other schedulers must hear of.
    notices: Vec<String>,
    heartbeat_groups: usize,
    /// Something may have become claimable.
    claimable: bool,
}

impl Pending {
    fn len(&self) -> usize {
        self.submits.len() + self.ops.len() + self.logs.len() + self.notices.len()
    }
}

/// A lease a stream holds: log lines are accepted only for these (fenced
/// like results), and counted per attempt.
struct Held {
    attempt: u32,
    lease_id: String,
    run_id: String,
    log_lines: u32,
}

struct Conn {
    worker_id: String,
    agents: Vec<String>,
    credits: u32,
    session: u64,
    tx: Outbound,
    /// By task id.
    leases: HashMap<String, Held>,
}

impl Conn {
    fn holds(&self, l: &Lease) -> Option<&Held> {
        self.leases
            .get(&l.task_id)
            .filter(|h| h.attempt == l.attempt && h.lease_id == l.lease_id)
    }
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
    pending: Pending,
    /// Claimable tasks may be waiting in the database.
    db_may_have_ready: bool,
    /// When timers are next swept: the earliest known timer, and never
    /// later than [`MAX_SLEEP`] after the last sweep.
    next_due: i64,
    rotation: usize,
    direct: Option<(Arc<dyn devcycle::bus::EventBus>, String)>,
    shutdown: CancellationToken,
}

impl Core {
    async fn run(mut self) {
        loop {
            // Work left over (leases that could not be delivered) is applied
            // at once; otherwise wait for a command or the next timer.
            let mut timer = false;
            if self.pending.len() == 0 {
                let wait = Duration::from_millis(
                    (self.next_due - now_ms()).clamp(0, MAX_SLEEP.as_millis() as i64) as u64,
                );
                tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => break,
                    cmd = self.rx.recv() => match cmd {
                        Some(c) => self.take(c),
                        None => break,
                    },
                    _ = tokio::time::sleep(wait) => timer = true,
                }
            } else if self.shutdown.is_cancelled() {
                break;
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
            let _ = reply.send(Err(Error::ShuttingDown));
        }
        for (_, to) in self.pending.ops.drain(..) {
            if let ReplyTo::Rpc(reply) = to {
                let _ = reply.send(Err(Error::ShuttingDown));
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
                // Both can make tasks ready.
                self.pending.claimable |= matches!(op, Op::Retry { .. } | Op::Decide { .. });
                self.pending.ops.push((op, ReplyTo::Rpc(reply)));
            }
            Cmd::Connect(w) => self.connect(w),
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
                let op = Op::Complete {
                    lease: lease.clone(),
                    outcome,
                };
                if let Some(op) = self.sent_by(conn, op) {
                    self.pending.claimable = true;
                    self.pending.ops.push((op, ReplyTo::Result { conn, lease }));
                }
            }
            Cmd::Heartbeat { conn, leases } => {
                let group = self.pending.heartbeat_groups;
                self.pending.heartbeat_groups += 1;
                for lease in leases {
                    let op = Op::Heartbeat {
                        lease: lease.clone(),
                    };
                    if let Some(op) = self.sent_by(conn, op) {
                        self.pending
                            .ops
                            .push((op, ReplyTo::Heartbeat { conn, group, lease }));
                    }
                }
            }
            Cmd::Release { conn, lease } => {
                let op = Op::Release {
                    lease: lease.clone(),
                    undelivered: false,
                };
                if let Some(op) = self.sent_by(conn, op) {
                    self.pending.claimable = true;
                    self.pending.ops.push((op, ReplyTo::Result { conn, lease }));
                }
            }
            Cmd::Progress {
                conn,
                lease,
                percent,
                message,
            } => {
                if !self.fenced(conn, &lease, "progress") {
                    return;
                }
                self.pending.ops.push((
                    Op::Progress {
                        lease,
                        percent,
                        message,
                    },
                    ReplyTo::Nobody,
                ));
            }
            Cmd::Logs { conn, lease, lines } => self.take_logs(conn, lease, lines),
            Cmd::RemoteReady => {
                self.db_may_have_ready = true;
                self.pending.claimable = true;
            }
            Cmd::RemoteCancel(notices) => {
                for c in notices {
                    self.deliver_cancel(&c);
                }
            }
            Cmd::RemoteConnect { worker_id, session } => {
                let Some(&conn) = self.by_worker.get(&worker_id) else {
                    return;
                };
                if self.workers[&conn].session < session {
                    tracing::info!(%worker_id, "worker moved to another scheduler; closing its stream here");
                    self.close(
                        conn,
                        Error::Superseded("the worker has a newer stream elsewhere".into()),
                    );
                }
            }
        }
    }

    /// A new stream. An older stream of the same worker is closed, and the
    /// leases the worker says it holds are checked against the database.
    fn connect(&mut self, w: WorkerConn) {
        if let Some(&old) = self.by_worker.get(&w.worker_id) {
            tracing::info!(worker_id = %w.worker_id, "worker reconnected; closing its previous stream");
            self.close(
                old,
                Error::Superseded("replaced by a newer stream of the same worker".into()),
            );
        }
        self.by_worker.insert(w.worker_id.clone(), w.conn);
        self.pending
            .notices
            .push(crate::store::notice::worker(&w.worker_id, w.session));
        self.pending.claimable = true;
        self.pending.ops.push((
            Op::Reconcile {
                worker_id: w.worker_id.clone(),
                held: w.held,
                resumed: w.session > 1,
            },
            ReplyTo::Reconcile { conn: w.conn },
        ));
        self.workers.insert(
            w.conn,
            Conn {
                worker_id: w.worker_id,
                agents: w.agents,
                credits: 0,
                session: w.session,
                tx: w.tx,
                leases: HashMap::new(),
            },
        );
    }

    /// `op` as sent by the worker of stream `conn`; nothing if the stream
    /// was closed here (the worker sends it again on its next stream).
    fn sent_by(&self, conn: u64, op: Op) -> Option<Op> {
        let w = self.workers.get(&conn)?;
        Some(Op::Worker {
            worker_id: w.worker_id.clone(),
            op: Box::new(op),
        })
    }

    fn close(&mut self, conn: u64, why: Error) {
        if let Some(prev) = self.workers.remove(&conn) {
            if self.by_worker.get(&prev.worker_id) == Some(&conn) {
                self.by_worker.remove(&prev.worker_id);
            }
            let _ = prev.tx.send(Err(why));
        }
    }

    /// Whether `conn` holds `lease`; what it sends for other leases is
    /// dropped and counted.
    fn fenced(&self, conn: u64, lease: &Lease, what: &'static str) -> bool {
        let ok = self
            .workers
            .get(&conn)
            .is_some_and(|w| w.holds(lease).is_some());
        if !ok {
            metrics::counter!("scheduler_unfenced_messages_total", "kind" => what).increment(1);
            tracing::debug!(task_id = %lease.task_id, attempt = lease.attempt, kind = what, "dropped: the stream does not hold this lease");
        }
        ok
    }

    fn take_logs(&mut self, conn: u64, lease: Lease, lines: Vec<LogRow>) {
        if !self.fenced(conn, &lease, "logs") {
            return;
        }
        let held = self
            .workers
            .get_mut(&conn)
            .and_then(|w| w.leases.get_mut(&lease.task_id))
            .expect("fenced");
        for mut line in lines {
            if held.log_lines > MAX_LOG_LINES {
                metrics::counter!("scheduler_log_lines_dropped_total").increment(1);
                continue;
            }
            held.log_lines += 1;
            if held.log_lines > MAX_LOG_LINES {
                line.stream = "executor".into();
                line.line = LOG_TRUNCATED.into();
            }
            line.task_id = lease.task_id.clone();
            line.attempt = lease.attempt;
            self.pending.logs.push(line);
        }
    }

    /// Tells the worker holding a lease to stop, if it is connected here.
    fn deliver_cancel(&mut self, c: &CancelNotice) {
        let Some(w) = self
            .by_worker
            .get(&c.worker_id)
            .and_then(|conn| self.workers.get_mut(conn))
        else {
            return;
        };
        if w.holds(&c.lease).is_some() {
            w.leases.remove(&c.lease.task_id);
        }
        let _ = w.tx.send(Ok(pb::WorkResponse {
            msg: Some(pb::work_response::Msg::Cancel(pb::CancelTask {
                lease: Some(lease_ref(&c.lease)),
                reason: c.reason.clone(),
            })),
        }));
    }

    async fn spec(&mut self, agent: &str, version: &str) -> Option<Arc<reg::AgentVersion>> {
        use prost::Message;
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
