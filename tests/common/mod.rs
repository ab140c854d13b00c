//! End-to-end tests across the mesh: a registry (and usually a scheduler)
//! in this process, executors (and sometimes the scheduler) as real
//! `devcycle` processes that the tests can kill, stop and restart.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devcycle::config::Config;
use devcycle::identity::{Kind, SpiffeId};
use devcycle::proto::registry::v1::agent_registry_client::AgentRegistryClient;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient;
use devcycle::tls::{CertificateAuthority, MeshTls};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_devcycle");

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process the test owns; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Cluster {
    pub data: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: Config,
    pub registry: String,
    pub scheduler: String,
    stop: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Cluster {
    /// A registry in this process; a scheduler in this process unless
    /// `scheduler_db` is given, in which case the caller starts it as a
    /// process with [`Cluster::spawn_scheduler`].
    pub async fn start(scheduler_in_process: bool) -> Self {
        devcycle::tls::install_default_provider();
        let data = tempfile::tempdir().unwrap();
        let scheduler_port = free_port();
        let text = format!(
            r#"data_dir = "{data}"
[tls]
dev_ca = true
[metrics]
listen = ""
[log]
filter = "info,devcycle_executor=debug"
[scheduler]
heartbeat_interval_ms = 300
database_url = "sqlite://{data}/scheduler.db"
[executor]
agent_dir = "{repo}/examples/agents"
read_only = ["{repo}/examples"]
drain_ms = 2000
secrets = ["REVIEW_API_URL", "REVIEW_MODEL", "REVIEW_API_KEY"]
"#,
            data = data.path().display(),
            repo = repo().display()
        );
        let config_path = data.path().join("devcycle.toml");
        std::fs::write(&config_path, text).unwrap();
        let config = Config::load(Some(&config_path)).unwrap();
        // One CA for everyone, made before any process starts, and the
        // CLI's identity.
        let ca =
            CertificateAuthority::load_or_create(&config.tls_dir(), &config.trust_domain).unwrap();
        let admin = config.client_identity().unwrap();
        ca.ensure_identity(&config.tls_dir(), &admin, &[], Duration::from_secs(3600))
            .unwrap();
        let stop = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let opts = devcycle_registry::Options::from_config(&config, listener, &stop)
            .await
            .unwrap();
        let registry = devcycle_registry::start(opts, stop.clone()).await.unwrap();
        let mut cluster = Self {
            data,
            config_path,
            config,
            registry: registry.addr.to_string(),
            scheduler: format!("127.0.0.1:{scheduler_port}"),
            stop,
        };
        if scheduler_in_process {
            let listener = TcpListener::bind(&cluster.scheduler).await.unwrap();
            let bus = Arc::new(devcycle::bus::InProcessBus::default());
            let mut opts = devcycle_scheduler::Options::from_config(
                &cluster.config,
                listener,
                bus,
                &cluster.stop,
            )
            .await
            .unwrap();
            opts.registry = cluster.registry.clone();
            devcycle_scheduler::start(opts, cluster.stop.clone())
                .await
                .unwrap();
        }
        cluster.config.client.registry = cluster.registry.clone();
        cluster.config.client.scheduler = cluster.scheduler.clone();
        cluster
    }

    pub fn command(&self, log: &str) -> (Command, PathBuf) {
        let log = self.data.path().join(log);
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&self.config_path)
            .env("DEVCYCLE_CLIENT__REGISTRY", &self.registry)
            .env("DEVCYCLE_CLIENT__SCHEDULER", &self.scheduler)
            // These tests speak to the services directly over mTLS; the
            // gateway's tests log in.
            .env("DEVCYCLE_CLIENT__DIRECT", "true")
            .env_remove("RUST_LOG")
            .current_dir(repo())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        (cmd, log)
    }

    /// `devcycle scheduler` on the cluster's scheduler address.
    pub fn spawn_scheduler(&self) -> Proc {
        self.spawn_scheduler_with(&[])
    }

    /// `devcycle scheduler` with extra `DEVCYCLE_*` settings.
    pub fn spawn_scheduler_with(&self, env: &[(&str, &str)]) -> Proc {
        let mut cmd = self.scheduler_command(&self.scheduler);
        cmd.0.envs(env.iter().copied());
        let p = Proc {
            child: cmd.0.spawn().unwrap(),
            log: cmd.1,
        };
        wait_for_port(&self.scheduler);
        p
    }

    /// The command of a scheduler listening on `listen`, and its log.
    pub fn scheduler_command(&self, listen: &str) -> (Command, PathBuf) {
        let (mut cmd, log) =
            self.command(&format!("scheduler-{}.log", uuid::Uuid::new_v4().simple()));
        cmd.args([
            "scheduler",
            "--listen",
            listen,
            "--registry",
            &self.registry,
        ]);
        (cmd, log)
    }

    /// `devcycle executor` as worker `id`.
    pub fn spawn_executor(&self, id: &str, slots: u32) -> Proc {
        let (mut cmd, log) = self.command(&format!(
            "executor-{id}-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let listen = format!("127.0.0.1:{}", free_port());
        cmd.args([
            "executor",
            "--worker-id",
            id,
            "--listen",
            &listen,
            "--scheduler",
            &self.scheduler,
        ])
        .args(["--registry", &self.registry, "--slots", &slots.to_string()]);
        let p = Proc {
            child: cmd.spawn().unwrap(),
            log,
        };
        wait_for_port(&listen);
        p
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        let (mut cmd, _) = self.command(&format!("cli-{}.log", uuid::Uuid::new_v4().simple()));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.args(args).output().unwrap()
    }

    pub fn user(&self) -> Arc<MeshTls> {
        let ca =
            CertificateAuthority::load_or_create(&self.config.tls_dir(), &self.config.trust_domain)
                .unwrap();
        let id = SpiffeId::new(&self.config.trust_domain, Kind::User, "tester").unwrap();
        let issued = ca.issue(&id, &[], Duration::from_secs(3600)).unwrap();
        MeshTls::from_pem(
            ca.cert_pem(),
            &issued.cert_pem,
            &issued.key_pem,
            &self.config.trust_domain,
        )
        .unwrap()
    }

    pub fn scheduler_client(&self) -> SchedulerClient<Channel> {
        let id = self.config.service_id("scheduler");
        SchedulerClient::new(devcycle::client::channel(&self.user(), &self.scheduler, id).unwrap())
    }

    pub fn registry_client(&self) -> AgentRegistryClient<Channel> {
        let id = self.config.service_id("registry");
        AgentRegistryClient::new(
            devcycle::client::channel(&self.user(), &self.registry, id).unwrap(),
        )
    }

    /// `devcycle agent apply --deploy` of a manifest (a path or YAML text).
    pub fn apply(&self, manifest: &str) {
        let path = if manifest.contains('\n') {
            let p = self
                .data
                .path()
                .join(format!("agent-{}.yaml", uuid::Uuid::new_v4().simple()));
            std::fs::write(&p, manifest).unwrap();
            p
        } else {
            repo().join(manifest)
        };
        let out = self.cli(&["agent", "apply", path.to_str().unwrap(), "--deploy"]);
        assert!(
            out.status.success(),
            "apply {manifest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Polls a run until it is terminal.
    pub async fn wait_run(&self, run_id: &str, within: Duration) -> pb::Run {
        let deadline = Instant::now() + within;
        let mut c = self.scheduler_client();
        loop {
            if let Ok(r) = c
                .get_run(pb::GetRunRequest {
                    run_id: run_id.into(),
                })
                .await
            {
                let run = r.into_inner().run.unwrap();
                if run.state != pb::RunState::Running as i32 {
                    return run;
                }
                assert!(
                    Instant::now() < deadline,
                    "run did not end in time: {run:?}"
                );
            }
            assert!(Instant::now() < deadline, "run did not end in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the run's task `key` is leased; returns the task.
    pub async fn wait_leased(&self, run_id: &str, key: &str, within: Duration) -> pb::Task {
        let deadline = Instant::now() + within;
        let mut c = self.scheduler_client();
        loop {
            let run = c
                .get_run(pb::GetRunRequest {
                    run_id: run_id.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .run
                .unwrap();
            let t = run.tasks.iter().find(|t| t.key == key).unwrap().clone();
            if t.state == pb::TaskState::Leased as i32 {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {key} was not leased in time: {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn wait_for_port(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| {
            String::from_utf8_lossy(c)
                .replace('\0', " ")
                .contains(marker)
        })
        .count()
}

/// A one-task run of `agent`.
pub fn task(agent: &str, input: &str, heartbeat_ms: u64, attempts: u32) -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest {
        task: Some(pb::TaskSpec {
            id: "t".into(),
            target: Some(pb::task_spec::Target::Agent(pb::AgentRef {
                name: agent.into(),
                version: String::new(),
            })),
            input: input.into(),
            retry: Some(pb::RetryPolicy {
                max_attempts: attempts,
                initial_backoff_ms: 100,
                ..Default::default()
            }),
            timeouts: Some(pb::Timeouts {
                heartbeat_ms,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Reads lines of a log file as they are written, until one matches.
pub fn wait_log(path: &Path, needle: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(f) = std::fs::File::open(path)
            && BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .any(|l| l.contains(needle))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// An agent that sleeps on its first attempt (long enough to be caught
/// mid-task) and answers at once after that.
pub fn sleeper(name: &str, first_attempt_sleep: &str) -> String {
    format!(
        r#"name: {name}
owner: test
version: 1.0.0
runtime:
  process:
    command: /bin/sh
    args: ["-c", "if [ \"$DEVCYCLE_ATTEMPT\" = 1 ]; then {first_attempt_sleep}; fi; echo \"{{\\\"attempt\\\": $DEVCYCLE_ATTEMPT}}\""]
capabilities: [test.sleep]
"#
    )
}
