//! The mesh under test: `devcycle up` in a child process, so that its
//! memory is measured alone, and the agents the benchmark drives.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use devcycle::identity::{Kind, SpiffeId};
use devcycle::proto::registry::v1 as reg;
use devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient;
use devcycle::tls::{CertificateAuthority, MeshTls};
use tonic::transport::Channel;

use super::BenchArgs;

/// The agent the executor serves: a builtin that answers at once.
pub const NOOP: &str = "noop";
/// An agent no executor serves: its tasks stay queued.
pub const PARKED: &str = "parked";

pub struct Mesh {
    child: Child,
    _data: tempfile::TempDir,
    scheduler: String,
    registry: String,
    tls: Arc<MeshTls>,
    trust_domain: String,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

impl Mesh {
    /// The mesh process's resident memory.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// CPU time the mesh process has used, all threads, user and system,
    /// in milliseconds: `utime` and `stime` of `/proc/PID/stat`, counted in
    /// USER_HZ (100 per second on Linux).
    pub fn cpu_ms(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // The fields after the command name, which may hold spaces: `state`
        // is field 3, `utime` and `stime` fields 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let ticks: u64 = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse::<u64>().ok())
            .sum();
        ticks * 10
    }

    fn channel(&self, service: &str, addr: &str) -> anyhow::Result<Channel> {
        let id =
            SpiffeId::service(&self.trust_domain, service).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(devcycle::client::channel(&self.tls, addr, id)?)
    }

    /// A new connection to the scheduler.
    pub fn scheduler(&self) -> anyhow::Result<SchedulerClient<Channel>> {
        Ok(SchedulerClient::new(
            self.channel("scheduler", &self.scheduler)?,
        ))
    }

    /// Registers and deploys the builtin no-op under each name.
    pub async fn deploy_noops(&self, names: &[&str]) -> anyhow::Result<()> {
        let mut registry = reg::agent_registry_client::AgentRegistryClient::new(
            self.channel("registry", &self.registry)?,
        );
        for name in names {
            registry
                .create_agent(reg::CreateAgentRequest {
                    agent: Some(reg::Agent {
                        name: (*name).into(),
                        owner: "bench".into(),
                        ..Default::default()
                    }),
                })
                .await?;
            registry
                .publish_version(reg::PublishVersionRequest {
                    version: Some(reg::AgentVersion {
                        agent: (*name).into(),
                        version: "1.0.0".into(),
                        runtime: Some(reg::Runtime {
                            kind: Some(reg::runtime::Kind::Builtin(reg::BuiltinRuntime {
                                name: "noop".into(),
                            })),
                        }),
                        ..Default::default()
                    }),
                })
                .await?;
            registry
                .deploy(reg::DeployRequest {
                    agent: (*name).into(),
                    version: "1.0.0".into(),
                })
                .await?;
        }
        Ok(())
    }
}

/// Starts `devcycle up` with its own data directory; its executor serves
/// [`NOOP`] only.
pub fn start(args: &BenchArgs) -> anyhow::Result<Mesh> {
    let data = tempfile::tempdir()?;
    let trust_domain = "bench.devcycle".to_owned();
    devcycle::tls::install_default_provider();
    let pki = data.path().join("pki");
    let ca = CertificateAuthority::load_or_create(&pki, &trust_domain)?;
    let me =
        SpiffeId::new(&trust_domain, Kind::User, "bench").map_err(|e| anyhow::anyhow!("{e}"))?;
    let issued = ca.issue(&me, &[], Duration::from_secs(3600))?;
    let tls = MeshTls::from_pem(
        ca.cert_pem(),
        &issued.cert_pem,
        &issued.key_pem,
        &trust_domain,
    )?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--data-dir")
        .arg(data.path())
        .args([
            "up",
            "--registry-listen",
            "127.0.0.1:0",
            "--scheduler-listen",
            "127.0.0.1:0",
        ])
        .args(["--executor-listen", "127.0.0.1:0"])
        .args(["--gateway-listen", "127.0.0.1:0"])
        .env("DEVCYCLE_TRUST_DOMAIN", &trust_domain)
        .env("DEVCYCLE_METRICS__LISTEN", "")
        .env("DEVCYCLE_LOG__FILTER", "warn")
        .env("DEVCYCLE_EXECUTOR__SLOTS", args.slots.to_string())
        .env("DEVCYCLE_EXECUTOR__AGENTS", format!("[{NOOP}]"))
        .env(
            "DEVCYCLE_EXECUTOR__AGENT_DIR",
            data.path().join("no-agents"),
        )
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(url) = &args.postgres {
        cmd.env("DEVCYCLE_SCHEDULER__DATABASE_URL", url);
    }
    let mut child = cmd.spawn().context("starting devcycle up")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut registry, mut scheduler) = (String::new(), String::new());
    while registry.is_empty() || scheduler.is_empty() {
        let Some(line) = lines.next() else {
            bail!("devcycle up exited before it was ready")
        };
        let line = line?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("registry"), Some(a)) => registry = a.to_owned(),
            (Some("scheduler"), Some(a)) => scheduler = a.to_owned(),
            _ => {}
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(Mesh {
        child,
        _data: data,
        scheduler,
        registry,
        tls,
        trust_domain,
    })
}
