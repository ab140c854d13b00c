//! The executor: a worker that runs tasks in a sandbox.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration, invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// The control plane's address.
    pub listen: SocketAddr,
    /// This worker's id: its certificate is `worker/<id>`.
    pub worker_id: String,
    /// host:port of the scheduler, or of several replicas separated by
    /// commas (the worker moves to the next when its stream breaks); and of
    /// the registry.
    pub scheduler: String,
    pub registry: String,
    /// A scheduler served by this same process (`devcycle up`) is called
    /// in memory, through its same authorization, instead of over mTLS
    /// loopback.
    pub in_process_calls: bool,
    /// Tasks run at once.
    pub slots: u32,
    /// Agents served; empty means any.
    pub agents: Vec<String>,
    /// Where relative agent commands are found (e.g. `bin/lint.py`).
    pub agent_dir: String,
    /// Host directories agents may read (bound read-only in the sandbox),
    /// e.g. where local repositories live.
    pub read_only: Vec<String>,
    /// Task workspaces; empty means `<data_dir>/work`.
    pub work_dir: String,
    /// The bubblewrap binary; empty disables namespaces.
    pub bwrap: String,
    /// Use a cgroup per task when the hierarchy is writable.
    pub cgroups: bool,
    /// Running tasks may finish this long after SIGTERM.
    #[serde(with = "duration::whole_millis")]
    pub drain: Duration,
    /// Defaults for agents that set no limits.
    pub limits: LimitsConfig,
    /// Executor environment variables agents may receive, by name: `${env:NAME}`
    /// in a process agent's environment, `token_env` of an http agent.
    /// Anything else is refused when the task runs.
    pub secrets: Vec<String>,
    /// Files an http agent may send as its bearer token (`token_file`).
    pub secret_files: Vec<String>,
    /// The http runtime may use plain `http://` URLs.
    pub http_allow_plaintext: bool,
    /// The http runtime may reach loopback, private, link-local (cloud
    /// metadata) and other non-public addresses.
    pub http_allow_private: bool,
    /// Run process agents without bubblewrap when it does not work here;
    /// they can then read whatever the executor's user can.
    pub allow_unsandboxed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    #[serde(with = "duration::whole_millis")]
    pub wall_time: Duration,
    pub memory_bytes: u64,
    #[serde(with = "duration::whole_millis")]
    pub cpu_time: Duration,
    pub max_processes: u32,
    pub max_open_files: u32,
    pub max_output_bytes: u64,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7403)),
            worker_id: "local".into(),
            scheduler: "127.0.0.1:7402".into(),
            registry: "127.0.0.1:7401".into(),
            in_process_calls: true,
            slots: 4,
            agents: Vec::new(),
            agent_dir: "examples/agents".into(),
            read_only: Vec::new(),
            work_dir: String::new(),
            bwrap: "bwrap".into(),
            cgroups: true,
            drain: Duration::from_secs(30),
            limits: LimitsConfig::default(),
            secrets: Vec::new(),
            secret_files: Vec::new(),
            http_allow_plaintext: false,
            http_allow_private: false,
            allow_unsandboxed: false,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            wall_time: Duration::from_secs(600),
            memory_bytes: 1 << 30,
            cpu_time: Duration::from_secs(600),
            max_processes: 256,
            max_open_files: 1024,
            max_output_bytes: 1 << 20,
        }
    }
}

impl ExecutorConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if crate::validate::dns_label("executor.worker_id", &self.worker_id).is_err() {
            return Err(invalid("executor.worker_id", "must be a DNS label"));
        }
        if !(1..=10_000).contains(&self.slots) {
            return Err(invalid("executor.slots", "must be between 1 and 10000"));
        }
        let l = &self.limits;
        if l.wall_time.is_zero()
            || l.memory_bytes < (1 << 20)
            || l.cpu_time < Duration::from_secs(1)
            || l.max_processes == 0
            || l.max_open_files < 16
            || l.max_output_bytes == 0
        {
            return Err(invalid(
                "executor.limits",
                "wall_time, cpu_time (>= 1s), memory_bytes (>= 1 MiB), max_processes, max_open_files (>= 16) and max_output_bytes must be set",
            ));
        }
        Ok(())
    }
}
