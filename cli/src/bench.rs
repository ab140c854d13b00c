//! `devcycle bench`: no-op tasks through the real mesh — client → scheduler
//! → executor → scheduler → client, mTLS on every hop, every state change
//! committed. The mesh runs as a separate `devcycle up` process so that its
//! memory is measured alone.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use devcycle::identity::{Kind, SpiffeId};
use devcycle::proto::registry::v1 as reg;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient;
use devcycle::tls::{CertificateAuthority, MeshTls};
use serde_json::json;
use tonic::transport::Channel;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Tasks in the throughput burst.
    #[arg(long, default_value_t = 20_000)]
    burst: usize,
    /// Tasks submitted one at a time for latency.
    #[arg(long, default_value_t = 2_000)]
    sequential: usize,
    /// Submits in flight during the burst.
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Client connections used by the burst.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Executor slots.
    #[arg(long, default_value_t = 256)]
    slots: u32,
    /// Run the scheduler on PostgreSQL instead of SQLite (a URL whose
    /// database the benchmark may create tables in).
    #[arg(long)]
    postgres: Option<String>,
}

struct Mesh {
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
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn channel(&self, service: &str, addr: &str) -> anyhow::Result<Channel> {
        let id =
            SpiffeId::service(&self.trust_domain, service).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(devcycle::client::channel(&self.tls, addr, id)?)
    }
}

fn start_mesh(args: &BenchArgs) -> anyhow::Result<Mesh> {
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

fn noop() -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest {
        task: Some(pb::TaskSpec {
            id: "t".into(),
            target: Some(pb::task_spec::Target::Agent(pb::AgentRef {
                name: "noop".into(),
                version: String::new(),
            })),
            ..Default::default()
        }),
        wait: true,
        ..Default::default()
    }
}

async fn one(c: &mut SchedulerClient<Channel>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let run = c
        .submit_task(noop())
        .await?
        .into_inner()
        .run
        .context("no run")?;
    if run.state != pb::RunState::Succeeded as i32 {
        bail!("a no-op task did not succeed: {run:?}");
    }
    Ok(started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

pub async fn run(args: BenchArgs, as_json: bool) -> anyhow::Result<()> {
    let mesh = start_mesh(&args)?;
    let mut registry = reg::agent_registry_client::AgentRegistryClient::new(
        mesh.channel("registry", &mesh.registry)?,
    );
    registry
        .create_agent(reg::CreateAgentRequest {
            agent: Some(reg::Agent {
                name: "noop".into(),
                owner: "bench".into(),
                ..Default::default()
            }),
        })
        .await?;
    registry
        .publish_version(reg::PublishVersionRequest {
            version: Some(reg::AgentVersion {
                agent: "noop".into(),
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
            agent: "noop".into(),
            version: "1.0.0".into(),
        })
        .await?;
    let mut c = SchedulerClient::new(mesh.channel("scheduler", &mesh.scheduler)?);

    // Warm up: connections, caches, the executor's stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while one(&mut c).await.is_err() {
        if Instant::now() > deadline {
            bail!("the mesh did not run a no-op task within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..200 {
        one(&mut c).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = mesh.rss_kib();

    // Latency: one at a time.
    let mut lat = Vec::with_capacity(args.sequential);
    for _ in 0..args.sequential {
        lat.push(one(&mut c).await?);
    }
    lat.sort();

    // Throughput: a burst, `concurrency` in flight over a few connections.
    let clients: Vec<SchedulerClient<Channel>> = (0..args.connections.max(1))
        .map(|_| {
            Ok(SchedulerClient::new(
                mesh.channel("scheduler", &mesh.scheduler)?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency.max(1) {
        let mut c = clients[w % clients.len()].clone();
        let (next, total) = (Arc::clone(&next), args.burst);
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                one(&mut c).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let burst_time = started.elapsed();
    let throughput = args.burst as f64 / burst_time.as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_rss = mesh.rss_kib();

    let engine = if args.postgres.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let report = json!({
        "engine": engine,
        "burst_tasks": args.burst,
        "burst_seconds": burst_time.as_secs_f64(),
        "tasks_per_second": throughput.round(),
        "sequential_tasks": args.sequential,
        "p50_ms": percentile(&lat, 0.50),
        "p90_ms": percentile(&lat, 0.90),
        "p99_ms": percentile(&lat, 0.99),
        "idle_rss_mib": idle_rss as f64 / 1024.0,
        "after_burst_rss_mib": after_rss as f64 / 1024.0,
        "concurrency": args.concurrency,
        "connections": args.connections,
        "executor_slots": args.slots,
    });
    if as_json {
        crate::output::json(&report);
    } else {
        println!("devcycle bench ({engine}): no-op tasks through the mesh, mTLS on every hop");
        println!(
            "  throughput  {:>9.0} tasks/s  ({} tasks in {:.2} s, {} in flight)",
            throughput,
            args.burst,
            burst_time.as_secs_f64(),
            args.concurrency
        );
        println!(
            "  latency     p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  ({} tasks one at a time)",
            percentile(&lat, 0.5),
            percentile(&lat, 0.9),
            percentile(&lat, 0.99),
            args.sequential
        );
        println!(
            "  mesh RSS    {:.1} MiB idle, {:.1} MiB after the burst",
            idle_rss as f64 / 1024.0,
            after_rss as f64 / 1024.0
        );
    }
    Ok(())
}
