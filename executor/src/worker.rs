//! The worker: holds a `Work` stream to the scheduler, grants credits equal
//! to its free slots, runs leased tasks, heartbeats their leases, and
//! reports results with their lease. A broken stream is reopened with
//! backoff while tasks keep running; results not yet acknowledged are sent
//! again on the new stream. Leases the scheduler reports lost are torn down.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use devcycle::proto::scheduler::v1 as pb;
use devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient;
use devcycle::time::now_ms;
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::runtime::{self, Env, Finished, LogSink, TaskRun};

const RECENT_LINES: usize = 200;
const LOG_FLUSH: Duration = Duration::from_millis(50);

/// A task this worker is running.
pub struct Running {
    pub lease: pb::LeaseRef,
    pub run_id: String,
    pub agent: String,
    pub version: String,
    pub started: SystemTime,
    pub deadline: i64,
    pub cancel: CancellationToken,
    pub pid: Arc<AtomicU32>,
    /// Live log lines for followers, and the last few for late joiners.
    pub logs: broadcast::Sender<(i64, String, String)>,
    pub recent: Mutex<VecDeque<(i64, String, String)>>,
    /// The scheduler no longer recognises this lease: drop the result.
    pub lost: AtomicBool,
}

pub struct State {
    pub worker_id: String,
    pub slots: u32,
    pub agents: Vec<String>,
    pub running: Mutex<HashMap<String, Arc<Running>>>,
    /// Results sent but not acknowledged, by task id.
    unacked: Mutex<HashMap<String, pb::TaskResult>>,
    pub draining: AtomicBool,
    pub connected: AtomicBool,
    /// The current stream's sender, if connected.
    outbound: Mutex<Option<mpsc::Sender<pb::WorkRequest>>>,
    pub idle: Notify,
}

impl State {
    pub fn new(worker_id: String, slots: u32, agents: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            worker_id,
            slots,
            agents,
            running: Mutex::new(HashMap::new()),
            unacked: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            outbound: Mutex::new(None),
            idle: Notify::new(),
        })
    }

    pub fn in_flight(&self) -> u32 {
        self.running.lock().len() as u32
    }

    fn free(&self) -> u32 {
        self.slots.saturating_sub(self.in_flight())
    }

    fn send(&self, msg: pb::work_request::Msg) {
        if let Some(tx) = self.outbound.lock().as_ref() {
            let _ = tx.try_send(pb::WorkRequest { msg: Some(msg) });
        }
    }

    fn credit(&self, n: u32) {
        if n > 0 && !self.draining.load(Ordering::Relaxed) {
            self.send(pb::work_request::Msg::Credit(pb::CreditGrant {
                credits: n,
            }));
        }
    }

    /// Stops a running task (its sandbox is killed); its result is dropped.
    pub fn abandon(&self, task_id: &str, why: &str) -> bool {
        let Some(r) = self.running.lock().get(task_id).cloned() else {
            return false;
        };
        tracing::warn!(task_id, reason = why, "stopping task");
        r.lost.store(true, Ordering::Relaxed);
        r.cancel.cancel();
        true
    }

    pub fn leases(&self) -> Vec<pb::LeaseRef> {
        self.running
            .lock()
            .values()
            .map(|r| r.lease.clone())
            .collect()
    }
}

pub struct Worker {
    pub state: Arc<State>,
    pub env: Arc<Env>,
    pub scheduler: SchedulerClient<Channel>,
}

impl Worker {
    /// Runs until `stop` and every task is done or handed back.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if stop.is_cancelled()
                && self.state.in_flight() == 0
                && self.state.unacked.lock().is_empty()
            {
                break;
            }
            let opened = Instant::now();
            match self.session(&stop).await {
                Ok(()) => break,
                Err(e) => {
                    self.state.connected.store(false, Ordering::Relaxed);
                    *self.state.outbound.lock() = None;
                    if opened.elapsed() > Duration::from_secs(10) {
                        backoff = Duration::from_millis(100);
                    }
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "work stream lost; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled(), if self.state.in_flight() == 0 => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One stream; `Ok` when stopping cleanly, `Err` when the stream broke.
    async fn session(&self, stop: &CancellationToken) -> anyhow::Result<()> {
        let st = &self.state;
        let (tx, rx) = mpsc::channel(4096);
        let hello = pb::WorkerHello {
            worker_id: st.worker_id.clone(),
            agents: st.agents.clone(),
            held: st.leases(),
        };
        tx.send(msg(pb::work_request::Msg::Hello(hello))).await?;
        let resend: Vec<pb::TaskResult> = st.unacked.lock().values().cloned().collect();
        for r in resend {
            tx.send(msg(pb::work_request::Msg::Result(r))).await?;
        }
        if !st.draining.load(Ordering::Relaxed) && st.free() > 0 {
            tx.send(msg(pb::work_request::Msg::Credit(pb::CreditGrant {
                credits: st.free(),
            })))
            .await?;
        }
        *st.outbound.lock() = Some(tx.clone());
        let mut inbound = self
            .scheduler
            .clone()
            .work(ReceiverStream::new(rx))
            .await?
            .into_inner();
        st.connected.store(true, Ordering::Relaxed);
        tracing::info!(worker_id = %st.worker_id, "connected to the scheduler");
        let mut beat = tokio::time::interval(Duration::from_secs(5));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = inbound.message() => {
                    let Some(m) = m? else { anyhow::bail!("the scheduler closed the stream") };
                    if let Some(interval) = self.handle(m) {
                        beat = tokio::time::interval(interval);
                        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                }
                _ = beat.tick() => {
                    let leases = st.leases();
                    if !leases.is_empty() {
                        st.send(pb::work_request::Msg::Heartbeat(pb::LeaseHeartbeat { leases }));
                    }
                }
                _ = stop.cancelled(), if st.in_flight() == 0 && st.unacked.lock().is_empty() => return Ok(()),
            }
        }
    }

    /// Handles one message; returns a new heartbeat interval if told one.
    fn handle(&self, m: pb::WorkResponse) -> Option<Duration> {
        use pb::work_response::Msg;
        let st = &self.state;
        match m.msg? {
            Msg::Welcome(w) => {
                return Some(Duration::from_millis(u64::from(
                    w.heartbeat_interval_ms.max(100),
                )));
            }
            Msg::Assignment(a) => self.assign(a),
            Msg::Cancel(c) => {
                if let Some(l) = c.lease
                    && st.abandon(
                        &l.task_id,
                        &format!("cancelled by the scheduler: {}", c.reason),
                    )
                {
                    tracing::info!(task_id = %l.task_id, "task cancelled");
                }
            }
            Msg::ResultAck(ack) => {
                if let Some(l) = ack.lease {
                    st.unacked.lock().remove(&l.task_id);
                    if !ack.accepted {
                        tracing::warn!(task_id = %l.task_id, attempt = l.attempt, reason = %ack.reason, "result rejected: the lease was no longer valid");
                    }
                }
                if st.in_flight() == 0 && st.unacked.lock().is_empty() {
                    st.idle.notify_waiters();
                }
            }
            Msg::HeartbeatAck(ack) => {
                for l in ack.lost {
                    st.abandon(&l.task_id, "the scheduler no longer holds our lease");
                }
            }
        }
        None
    }

    fn assign(&self, a: pb::Assignment) {
        let st = &self.state;
        let Some(lease) = a.lease.clone() else { return };
        if st.draining.load(Ordering::Relaxed) || st.free() == 0 {
            st.send(pb::work_request::Msg::Release(lease));
            return;
        }
        let agent = Arc::new(a.agent.clone().unwrap_or_default());
        // Builtins answer at once: no task, no hop.
        if let Some(devcycle::proto::registry::v1::runtime::Kind::Builtin(b)) =
            agent.runtime.as_ref().and_then(|r| r.kind.as_ref())
        {
            let started = Instant::now();
            let done = runtime::builtin(&b.name, &a.input);
            self.report(lease, done, started.elapsed());
            st.credit(1);
            return;
        }
        let (sink, mut lines) = LogSink::new();
        let cancel = CancellationToken::new();
        let (logs_tx, _) = broadcast::channel(1024);
        let running = Arc::new(Running {
            lease: lease.clone(),
            run_id: a.run_id.clone(),
            agent: agent.agent.clone(),
            version: agent.version.clone(),
            started: SystemTime::now(),
            deadline: a
                .lease_deadline
                .as_ref()
                .map(|t| t.seconds * 1000)
                .unwrap_or_default(),
            cancel: cancel.clone(),
            pid: Arc::new(AtomicU32::new(0)),
            logs: logs_tx,
            recent: Mutex::new(VecDeque::new()),
            lost: AtomicBool::new(false),
        });
        st.running
            .lock()
            .insert(lease.task_id.clone(), Arc::clone(&running));
        let task = TaskRun {
            task_id: lease.task_id.clone(),
            attempt: lease.attempt,
            run_id: a.run_id,
            agent,
            input: a.input,
            start_to_close: Duration::from_millis(
                a.timeouts.map(|t| t.start_to_close_ms).unwrap_or(0),
            ),
            cancel,
            logs: sink,
            pid: Arc::clone(&running.pid),
        };
        // Log lines: to followers now, to the scheduler in small batches.
        let forward = {
            let (st, running, lease) = (Arc::clone(st), Arc::clone(&running), lease.clone());
            tokio::spawn(async move {
                let mut batch = Vec::new();
                loop {
                    let line = tokio::time::timeout(LOG_FLUSH, lines.recv()).await;
                    let closed = matches!(line, Ok(None));
                    let idle = line.is_err();
                    if let Ok(Some((stream, text))) = line {
                        let at = now_ms();
                        let _ = running.logs.send((at, stream.clone(), text.clone()));
                        let mut recent = running.recent.lock();
                        if recent.len() == RECENT_LINES {
                            recent.pop_front();
                        }
                        recent.push_back((at, stream.clone(), text.clone()));
                        drop(recent);
                        batch.push(pb::LogLine {
                            time: Some(devcycle::time::to_timestamp(at)),
                            stream,
                            line: text,
                            attempt: lease.attempt,
                        });
                    }
                    if !batch.is_empty() && (idle || closed || batch.len() >= 100) {
                        st.send(pb::work_request::Msg::Logs(pb::TaskLogs {
                            lease: Some(lease.clone()),
                            lines: std::mem::take(&mut batch),
                        }));
                    }
                    if closed {
                        return;
                    }
                }
            })
        };
        let (st, env, this_lease) = (Arc::clone(st), Arc::clone(&self.env), lease);
        tokio::spawn(async move {
            let started = Instant::now();
            let done = runtime::run(&task, &env).await;
            drop(task);
            let _ = forward.await;
            let running = st.running.lock().remove(&this_lease.task_id);
            let lost = running.is_some_and(|r| r.lost.load(Ordering::Relaxed));
            if !lost {
                report_to(&st, this_lease, done, started.elapsed());
            }
            st.credit(1);
            if st.in_flight() == 0 {
                st.idle.notify_waiters();
            }
        });
    }

    fn report(&self, lease: pb::LeaseRef, done: Finished, took: Duration) {
        report_to(&self.state, lease, done, took);
    }
}

fn report_to(st: &State, lease: pb::LeaseRef, done: Finished, took: Duration) {
    use pb::task_result::Outcome;
    let outcome = match done.outcome {
        Ok(output) => Outcome::Output(output),
        Err(f) => Outcome::Error(pb::TaskError {
            kind: f.kind,
            message: f.message,
            retryable: f.retryable,
        }),
    };
    let result = pb::TaskResult {
        lease: Some(lease.clone()),
        outcome: Some(outcome),
        enforcement: Some(done.enforcement),
        duration_us: took.as_micros() as u64,
    };
    st.unacked
        .lock()
        .insert(lease.task_id.clone(), result.clone());
    st.send(pb::work_request::Msg::Result(result));
}

fn msg(m: pb::work_request::Msg) -> pb::WorkRequest {
    pb::WorkRequest { msg: Some(m) }
}

/// Stops taking work and waits for running tasks up to `deadline`; what is
/// still running then is stopped and handed back. Returns how many tasks
/// were running when the drain began.
pub async fn drain(state: &Arc<State>, deadline: Duration) -> u32 {
    state.draining.store(true, Ordering::Relaxed);
    let running = state.in_flight();
    let until = Instant::now() + deadline;
    while state.in_flight() > 0 && Instant::now() < until {
        let _ = tokio::time::timeout(Duration::from_millis(100), state.idle.notified()).await;
    }
    let left: Vec<Arc<Running>> = state.running.lock().values().cloned().collect();
    for r in left {
        tracing::warn!(task_id = %r.lease.task_id, "drain deadline passed; handing the task back");
        r.lost.store(true, Ordering::Relaxed);
        r.cancel.cancel();
        state.send(pb::work_request::Msg::Release(r.lease.clone()));
    }
    // Give acknowledgements of the last results a moment to arrive.
    let until = Instant::now() + Duration::from_secs(2);
    while !state.unacked.lock().is_empty()
        && state.connected.load(Ordering::Relaxed)
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running
}
