//! Runtimes: how an agent version runs. `process` in a sandbox, `http` for
//! remote agents and model endpoints, `builtin` for smoke tests and
//! benchmarks.

pub mod cgroup;
pub mod http;
pub mod process;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use devcycle::proto::registry::v1 as reg;
use devcycle::proto::scheduler::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Failure kinds: one vocabulary for the executor and the scheduler.
pub use devcycle::kinds;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: String,
    pub message: String,
    pub retryable: bool,
}

impl Failure {
    pub fn retry(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            retryable: true,
        }
    }
    pub fn permanent(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            retryable: false,
        }
    }
}

/// The end of one attempt.
#[derive(Debug, Clone)]
pub struct Finished {
    pub outcome: Result<String, Failure>,
    pub enforcement: pb::Enforcement,
}

impl Finished {
    pub fn ok(output: String, enforcement: pb::Enforcement) -> Self {
        Self {
            outcome: Ok(output),
            enforcement,
        }
    }
    pub fn failed(f: Failure, enforcement: pb::Enforcement) -> Self {
        Self {
            outcome: Err(f),
            enforcement,
        }
    }
}

/// Where an agent's log lines go: the scheduler and local followers.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::UnboundedSender<(String, String)>,
}

impl LogSink {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<(String, String)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }
    pub fn line(&self, stream: &str, line: String) {
        let _ = self.tx.send((stream.to_owned(), line));
    }
}

/// One attempt of one task, as a runtime sees it.
pub struct TaskRun {
    pub task_id: String,
    pub attempt: u32,
    pub run_id: String,
    pub agent: Arc<reg::AgentVersion>,
    pub input: String,
    pub start_to_close: Duration,
    pub cancel: CancellationToken,
    pub logs: LogSink,
    pub pid: Arc<AtomicU32>,
    /// W3C trace context the agent's own spans should continue (the
    /// executor's agent span when traces are on); empty: none.
    pub traceparent: String,
}

impl TaskRun {
    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
    }
}

/// What the operator lets agents have beyond their sandbox (see
/// docs/security.md). Everything defaults to no.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Executor environment variables agents may receive.
    pub secrets: Vec<String>,
    /// Files an http agent may send as its token.
    pub secret_files: Vec<PathBuf>,
    /// The http runtime may use plain HTTP.
    pub http_plaintext: bool,
    /// The http runtime may reach non-public addresses.
    pub http_private: bool,
    /// Process agents may run without bubblewrap.
    pub unsandboxed: bool,
    /// Paths never visible to an agent (data, keys, secret files).
    pub hidden: Vec<PathBuf>,
}

impl Grants {
    /// The executor's variable `name`, if agents may have it.
    pub fn secret(&self, name: &str, field: &str) -> Result<String, Failure> {
        if !self.secrets.iter().any(|s| s == name) {
            return Err(Failure::permanent(
                kinds::NOT_GRANTED,
                format!(
                    "{field}: the executor does not share {name} with agents (executor.secrets)"
                ),
            ));
        }
        Ok(std::env::var(name).unwrap_or_default())
    }
}

/// What every run needs from the executor.
pub struct Env {
    pub caps: process::Capabilities,
    pub defaults: process::Limits,
    pub agent_dir: PathBuf,
    /// Host directories bound read-only into every sandbox.
    pub read_only: Vec<PathBuf>,
    pub work_dir: PathBuf,
    /// Built with [`http::client`], which enforces `grants` on addresses.
    pub http: reqwest::Client,
    pub grants: Grants,
}

/// Runs one attempt to its end.
pub async fn run(task: &TaskRun, env: &Env) -> Finished {
    use reg::runtime::Kind;
    let none = pb::Enforcement::default();
    match task.agent.runtime.as_ref().and_then(|r| r.kind.as_ref()) {
        Some(Kind::Builtin(b)) => builtin(&b.name, &task.input),
        Some(Kind::Process(p)) => {
            let limits = task.agent.limits.unwrap_or_default();
            let spec = process::ProcessSpec {
                runtime: p,
                limits: process::Limits::resolve(&limits, &env.defaults, task.start_to_close),
                agent_dir: &env.agent_dir,
                read_only: &env.read_only,
                work_dir: &env.work_dir,
                grants: &env.grants,
            };
            process::run(task, spec, &env.caps).await
        }
        Some(Kind::Http(h)) => http::run(task, h, &env.http, &env.grants).await,
        None => Finished::failed(
            Failure::permanent(kinds::UNSUPPORTED, "the agent version has no runtime"),
            none,
        ),
    }
}

/// `noop` returns `{}`; `echo` returns its input.
pub fn builtin(name: &str, input: &str) -> Finished {
    let e = pb::Enforcement::default();
    match name {
        "noop" => Finished::ok("{}".into(), e),
        "echo" => Finished::ok(input.to_owned(), e),
        other => Finished::failed(
            Failure::permanent(kinds::UNSUPPORTED, format!("no builtin agent {other:?}")),
            e,
        ),
    }
}
