//! The worker: holds a `Work` stream to the scheduler, grants credits equal
//! to its free slots, runs leased tasks, heartbeats their leases, and
//! reports results with their lease. A broken stream is reopened with
//! backoff while tasks keep running; results not yet acknowledged are sent
//! again on the new stream. Leases the scheduler reports lost are torn down.
//!
//! Results are never dropped: a result is recorded as unacknowledged and
//! sent under one lock with the swap of the stream, so it is either in the
//! snapshot a new stream resends or sent on that stream. Log lines may be
//! dropped when the scheduler falls behind; they are counted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use devcycle::client::MeshChannel;
use devcycle::proto::registry::v1 as reg;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient;
use devcycle::time::now_ms;
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, Span};

use crate::runtime::{self, Env, Finished, LogSink, TaskRun};

const RECENT_LINES: usize = 200;
const LOG_FLUSH: Duration = Duration::from_millis(50);
/// Log batches queued for the scheduler at most; beyond, lines are dropped.
const MAX_QUEUED_LOGS: usize = 1024;
/// Heartbeats are sent at least this often, and for each lease at a third
/// of its heartbeat timeout.
const MIN_BEAT: Duration = Duration::from_millis(50);

/// A task this worker is running.
pub struct ActiveTask {
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
    /// Stopped by a drain: report a retryable failure, not the outcome.
    pub drained: AtomicBool,
    /// The assignment's heartbeat timeout.
    pub heartbeat: Duration,
}

/// The current stream and the results it has not acknowledged, under one
/// lock: a result is either resent when a stream opens or sent on it.
#[derive(Default)]
struct Link {
    outbound: Option<mpsc::UnboundedSender<pb::WorkRequest>>,
    /// Results sent but not acknowledged, by task id.
    unacked: HashMap<String, pb::TaskResult>,
    /// Streams opened by this process so far.
    sessions: u64,
    /// Log batches queued on the current stream, not yet taken by it.
    queued_logs: Arc<AtomicUsize>,
}

pub struct State {
    pub worker_id: String,
    pub slots: u32,
    pub agents: Vec<String>,
    pub running: Mutex<HashMap<String, Arc<ActiveTask>>>,
    link: Mutex<Link>,
    pub draining: AtomicBool,
    pub connected: AtomicBool,
    pub idle: Notify,
    /// A new lease may need a faster heartbeat.
    beat_changed: Notify,
}

impl State {
    pub fn new(worker_id: String, slots: u32, agents: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            worker_id,
            slots,
            agents,
            running: Mutex::new(HashMap::new()),
            link: Mutex::new(Link::default()),
            draining: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            idle: Notify::new(),
            beat_changed: Notify::new(),
        })
    }

    fn unacked_is_empty(&self) -> bool {
        self.link.lock().unacked.is_empty()
    }

    /// How often to heartbeat: the scheduler's interval, or faster when a
    /// running lease times out sooner.
    fn beat(&self, interval: Duration) -> Duration {
        self.running
            .lock()
            .values()
            .map(|r| r.heartbeat / 3)
            .fold(interval, Duration::min)
            .max(MIN_BEAT)
    }

    pub fn in_flight(&self) -> u32 {
        self.running.lock().len() as u32
    }

    fn free(&self) -> u32 {
        self.slots.saturating_sub(self.in_flight())
    }

    fn send(&self, msg: pb::work_request::Msg) {
        if let Some(tx) = self.link.lock().outbound.as_ref() {
            let _ = tx.send(pb::WorkRequest { msg: Some(msg) });
        }
    }

    /// Queues log lines unless too many are queued already.
    fn send_logs(&self, logs: pb::TaskLogs) {
        let lines = logs.lines.len() as u64;
        let link = self.link.lock();
        let Some(tx) = link.outbound.as_ref() else {
            metrics::counter!("executor_log_lines_dropped_total").increment(lines);
            return;
        };
        if link.queued_logs.load(Ordering::Relaxed) >= MAX_QUEUED_LOGS {
            metrics::counter!("executor_log_lines_dropped_total").increment(lines);
            return;
        }
        link.queued_logs.fetch_add(1, Ordering::Relaxed);
        if tx
            .send(pb::WorkRequest {
                msg: Some(pb::work_request::Msg::Logs(logs)),
            })
            .is_err()
        {
            link.queued_logs.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Records a result as unacknowledged and sends it, atomically with
    /// respect to a stream being swapped.
    fn send_result(&self, result: pb::TaskResult) {
        let Some(lease) = result.lease.as_ref() else {
            return;
        };
        let mut link = self.link.lock();
        link.unacked.insert(lease.task_id.clone(), result.clone());
        if let Some(tx) = link.outbound.as_ref() {
            let _ = tx.send(pb::WorkRequest {
                msg: Some(pb::work_request::Msg::Result(result)),
            });
        }
    }

    /// Every lease this worker holds: running, or with a result not yet
    /// acknowledged.
    fn held(&self, link: &Link) -> Vec<pb::LeaseRef> {
        let mut held = self.leases();
        held.extend(link.unacked.values().filter_map(|r| r.lease.clone()));
        held
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
    /// Scheduler replicas; a broken stream moves to the next.
    pub schedulers: Vec<SchedulerClient<MeshChannel>>,
}

impl Worker {
    /// Runs until `stop` and every task is done or handed back.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut next = 0;
        loop {
            if stop.is_cancelled() && self.state.in_flight() == 0 && self.state.unacked_is_empty() {
                break;
            }
            let opened = Instant::now();
            let scheduler = &self.schedulers[next % self.schedulers.len()];
            match self.session(scheduler, &stop).await {
                Ok(()) => break,
                Err(e) => {
                    self.state.connected.store(false, Ordering::Relaxed);
                    self.state.link.lock().outbound = None;
                    if opened.elapsed() > Duration::from_secs(10) {
                        backoff = Duration::from_millis(100);
                    }
                    next += 1;
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
    async fn session(
        &self,
        scheduler: &SchedulerClient<MeshChannel>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let st = &self.state;
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = {
            // The hello, the resend and the swap are one step: a result
            // reported meanwhile waits for the lock and then goes on `tx`.
            let mut link = st.link.lock();
            link.sessions += 1;
            let hello = pb::WorkerHello {
                worker_id: st.worker_id.clone(),
                agents: st.agents.clone(),
                held: st.held(&link),
                session: link.sessions,
            };
            let _ = tx.send(msg(pb::work_request::Msg::Hello(hello)));
            for r in link.unacked.values() {
                let _ = tx.send(msg(pb::work_request::Msg::Result(r.clone())));
            }
            if !st.draining.load(Ordering::Relaxed) && st.free() > 0 {
                let _ = tx.send(msg(pb::work_request::Msg::Credit(pb::CreditGrant {
                    credits: st.free(),
                })));
            }
            link.outbound = Some(tx);
            link.queued_logs = Arc::new(AtomicUsize::new(0));
            Arc::clone(&link.queued_logs)
        };
        let outgoing = UnboundedReceiverStream::new(rx).map(move |m| {
            if matches!(m.msg, Some(pb::work_request::Msg::Logs(_))) {
                queued.fetch_sub(1, Ordering::Relaxed);
            }
            m
        });
        let mut inbound = scheduler.clone().work(outgoing).await?.into_inner();
        st.connected.store(true, Ordering::Relaxed);
        tracing::info!(worker_id = %st.worker_id, "connected to the scheduler");
        let mut interval = Duration::from_secs(5);
        loop {
            // Every beat carries the running leases; an empty one still
            // tells the scheduler the stream is alive.
            let beat = tokio::time::sleep(st.beat(interval));
            tokio::select! {
                m = inbound.message() => {
                    let Some(m) = m? else { anyhow::bail!("the scheduler closed the stream") };
                    if let Some(i) = self.handle(m) {
                        interval = i;
                    }
                }
                _ = beat => {
                    st.send(pb::work_request::Msg::Heartbeat(pb::LeaseHeartbeat { leases: st.leases() }));
                }
                _ = st.beat_changed.notified() => {}
                _ = stop.cancelled(), if st.in_flight() == 0 && st.unacked_is_empty() => return Ok(()),
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
                    st.link.lock().unacked.remove(&l.task_id);
                    if !ack.accepted {
                        tracing::warn!(task_id = %l.task_id, attempt = l.attempt, reason = %ack.reason, "result rejected: the lease was no longer valid");
                    }
                }
                if st.in_flight() == 0 && st.unacked_is_empty() {
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
        let running = Arc::new(ActiveTask {
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
            drained: AtomicBool::new(false),
            heartbeat: Duration::from_millis(
                a.timeouts
                    .as_ref()
                    .map(|t| t.heartbeat_ms)
                    .filter(|ms| *ms > 0)
                    .unwrap_or(u64::MAX / 4),
            ),
        });
        st.running
            .lock()
            .insert(lease.task_id.clone(), Arc::clone(&running));
        st.beat_changed.notify_one();
        let (task_span, agent_span, traceparent) = spans(&a.traceparent, &lease, &agent);
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
            traceparent,
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
                        st.send_logs(pb::TaskLogs {
                            lease: Some(lease.clone()),
                            lines: std::mem::take(&mut batch),
                        });
                    }
                    if closed {
                        return;
                    }
                }
            })
        };
        let (st, env, this_lease) = (Arc::clone(st), Arc::clone(&self.env), lease);
        let attempt = async move {
            let started = Instant::now();
            let done = runtime::run(&task, &env).instrument(agent_span).await;
            drop(task);
            let _ = forward.await;
            let mut done = done;
            let running = st.running.lock().remove(&this_lease.task_id);
            let lost = running
                .as_ref()
                .is_some_and(|r| r.lost.load(Ordering::Relaxed));
            if running.is_some_and(|r| r.drained.load(Ordering::Relaxed)) {
                done.outcome = Err(runtime::Failure {
                    kind: devcycle::kinds::WORKER_DRAINED.into(),
                    message: "the executor was draining and stopped the task at its deadline"
                        .into(),
                    retryable: true,
                });
            }
            if !lost {
                report_to(&st, this_lease, done, started.elapsed());
            }
            st.credit(1);
            if st.in_flight() == 0 {
                st.idle.notify_waiters();
            }
        };
        tokio::spawn(attempt.instrument(task_span));
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
    st.send_result(pb::TaskResult {
        lease: Some(lease),
        outcome: Some(outcome),
        enforcement: Some(done.enforcement),
        duration_us: took.as_micros() as u64,
    });
}

fn msg(m: pb::work_request::Msg) -> pb::WorkRequest {
    pb::WorkRequest { msg: Some(m) }
}

/// Stops taking work and waits for running tasks up to `deadline`; what is
/// still running then is stopped and reported as a retryable failure
/// ([`devcycle::kinds::WORKER_DRAINED`]): it had started, so it is not handed back as unstarted.
/// Returns how many tasks were running when the drain began.
pub async fn drain(state: &Arc<State>, deadline: Duration) -> u32 {
    state.draining.store(true, Ordering::Relaxed);
    let running = state.in_flight();
    let until = Instant::now() + deadline;
    while state.in_flight() > 0 && Instant::now() < until {
        let _ = tokio::time::timeout(Duration::from_millis(100), state.idle.notified()).await;
    }
    let left: Vec<Arc<ActiveTask>> = state.running.lock().values().cloned().collect();
    for r in &left {
        tracing::warn!(task_id = %r.lease.task_id, "drain deadline passed; stopping the task");
        r.drained.store(true, Ordering::Relaxed);
        r.cancel.cancel();
    }
    // The stopped tasks report; give them and the acknowledgements of the
    // last results a moment.
    let until = Instant::now() + Duration::from_secs(2);
    while state.in_flight() > 0 && Instant::now() < until {
        let _ = tokio::time::timeout(Duration::from_millis(50), state.idle.notified()).await;
    }
    while !state.unacked_is_empty()
        && state.connected.load(Ordering::Relaxed)
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running
}

/// The executor's spans of one attempt, children of the submit's trace
/// context: `executor.task` around the attempt and, inside it, the agent's
/// run, whose context the agent receives. With traces off here, the
/// submit's context passes through to the agent untouched.
fn spans(
    traceparent: &str,
    lease: &pb::LeaseRef,
    agent: &reg::AgentVersion,
) -> (Span, Span, String) {
    if !devcycle::otel::enabled() || traceparent.is_empty() {
        return (Span::none(), Span::none(), traceparent.to_owned());
    }
    let task = tracing::info_span!(
        "executor.task",
        otel.kind = "consumer",
        devcycle.component = "executor",
        devcycle.task_id = %lease.task_id,
        devcycle.attempt = lease.attempt,
    );
    devcycle::otel::set_parent(&task, traceparent);
    let run = tracing::info_span!(
        parent: &task,
        "agent",
        otel.name = %format!("agent {}", agent.agent),
        otel.kind = "client",
        devcycle.component = "agent",
        devcycle.agent = %agent.agent,
        devcycle.agent_version = %agent.version,
    );
    let traceparent = devcycle::otel::traceparent(&run);
    (task, run, traceparent)
}

#[cfg(test)]
mod tests;
