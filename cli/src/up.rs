//! `devcycle up`: every service of the mesh in one process, with embedded
//! storage in the data directory, a development CA, and the shipped agents
//! registered. `--demo` then runs the lifecycle workflow on a sample.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use devcycle::config::Config;
use devcycle::mesh::DEV_CERT_LIFETIME;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::tls::CertificateAuthority;
use devcycle_registry::manifest::Manifest;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::connect::Clients;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// host:port of the registry.
    #[arg(long)]
    registry_listen: Option<String>,
    /// host:port of the scheduler.
    #[arg(long)]
    scheduler_listen: Option<String>,
    /// host:port of the executor's control plane.
    #[arg(long)]
    executor_listen: Option<String>,
    /// host:port of the gateway (gRPC and grpc-web).
    #[arg(long)]
    gateway_listen: Option<String>,
    /// Run examples/workflows/ci.yaml on examples/samples/calc and show it.
    #[arg(long)]
    demo: bool,
}

impl UpArgs {
    pub fn flags(&self) -> Vec<(&'static str, serde_json::Value)> {
        let mut flags = Vec::new();
        for (key, v) in [
            ("registry.listen", &self.registry_listen),
            ("scheduler.listen", &self.scheduler_listen),
            ("executor.listen", &self.executor_listen),
            ("gateway.listen", &self.gateway_listen),
        ] {
            if let Some(l) = v {
                flags.push((key, serde_json::Value::from(l.as_str())));
            }
        }
        flags
    }
}

async fn bind(what: &str, addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what}.listen: cannot listen on {addr}"))
}

/// Variables the shipped agents read from the executor's environment.
const SHIPPED_SECRETS: &[&str] = &[
    "REVIEW_API_URL",
    "REVIEW_MODEL",
    "REVIEW_API_KEY",
    "REVIEWER_API_KEY",
];

pub async fn run(mut config: Config, args: &UpArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    devcycle::server::cancel_on_signals(shutdown.clone());
    devcycle::tls::install_default_provider();

    // The CLI's own identity, so client commands work right away.
    let dir = config.tls_dir();
    let ca = CertificateAuthority::load_or_create(&dir, &config.trust_domain)?;
    ca.ensure_identity(&dir, &config.client_identity()?, &[], DEV_CERT_LIFETIME)?;
    anyhow::ensure!(
        config.tls.cert_file.is_empty(),
        "tls.cert_file: not with up, which serves several identities from tls.dir"
    );
    if !config.health.listen.is_empty() {
        devcycle::health::serve(config.health.listen.parse()?)?;
    }
    if !config.metrics.listen.is_empty() {
        devcycle::telemetry::serve_metrics(config.metrics.listen.parse()?)?;
    }
    // Local repositories are where the user works: agents may read them.
    let cwd = std::env::current_dir()?;
    if config.executor.read_only.is_empty() {
        config
            .executor
            .read_only
            .push(cwd.to_string_lossy().into_owned());
    }
    // `up` runs on the developer's own machine: the shipped review agents
    // get their settings from its environment, and may call a model server
    // on it (plain HTTP, loopback). A shared executor grants none of this
    // unless configured (docs/security.md).
    let e = &mut config.executor;
    if e.secrets.is_empty() {
        e.secrets = SHIPPED_SECRETS.iter().map(|s| (*s).to_owned()).collect();
    }
    e.http_allow_plaintext = true;
    e.http_allow_private = true;

    let listener = bind("registry", config.registry.listen).await?;
    let opts = devcycle_registry::Options::from_config(&config, listener, &shutdown).await?;
    let registry = devcycle_registry::start(opts, shutdown.clone()).await?;

    let listener = bind("scheduler", config.scheduler.listen).await?;
    let bus = devcycle_scheduler::bus_from_config(&config)?;
    let mut opts =
        devcycle_scheduler::Options::from_config(&config, listener, bus, &shutdown).await?;
    opts.registry = registry.addr.to_string();
    let scheduler = devcycle_scheduler::start(opts, shutdown.clone()).await?;

    let listener = bind("executor", config.executor.listen).await?;
    let mut opts = devcycle_executor::Options::from_config(&config, listener, &shutdown).await?;
    opts.registry = registry.addr.to_string();
    opts.scheduler = scheduler.addr.to_string();
    let isolation = match (&opts.caps.bwrap, &opts.caps.cgroups) {
        (Some(_), Some(_)) => "bubblewrap namespaces, cgroups, rlimits",
        (Some(_), None) => "bubblewrap namespaces, rlimits (no writable cgroups)",
        (None, Some(_)) => "cgroups, rlimits (no bubblewrap: install it for namespaces)",
        (None, None) => "rlimits only (install bubblewrap for namespaces)",
    };
    let executor = devcycle_executor::start(opts, shutdown.clone()).await?;

    config.gateway.registry = registry.addr.to_string();
    config.gateway.scheduler = scheduler.addr.to_string();
    let listener = bind("gateway", config.gateway.listen).await?;
    // The gateway shares the scheduler's in-process bus only in spirit: its
    // audit events stay in this process too.
    let bus = devcycle_scheduler::bus_from_config(&config)?;
    let opts = devcycle_gateway::Options::from_config(&config, listener, bus, &shutdown).await?;
    let gateway = devcycle_gateway::start(opts, shutdown.clone()).await?;

    // Clients in this process reach the services where they really listen,
    // directly over mTLS.
    config.client.registry = registry.addr.to_string();
    config.client.scheduler = scheduler.addr.to_string();
    config.client.executor = executor.addr.to_string();
    let clients = Clients::direct(config.clone())?;
    let agents = register_agents(&clients, Path::new(&config.executor.agent_dir)).await;

    println!("devcycle is up (data in {})", config.data_dir.display());
    println!(
        "  registry   {}  as {}",
        registry.addr,
        config.service_id("registry")
    );
    println!(
        "  scheduler  {}  as {}",
        scheduler.addr,
        config.service_id("scheduler")
    );
    println!(
        "  executor   {}  as spiffe://{}/worker/{}  ({isolation})",
        executor.addr, config.trust_domain, config.executor.worker_id
    );
    println!(
        "  gateway    {}  gRPC and grpc-web over TLS (CA {})",
        gateway.addr,
        dir.join("ca.pem").display()
    );
    if !config.metrics.listen.is_empty() {
        println!("  metrics    http://{}/metrics", config.metrics.listen);
    }
    match &gateway.extra {
        Some(token) => println!(
            "  first admin: devcycle login --username admin --bootstrap {token}\n             (this token works once; it makes the first admin with the password you choose)"
        ),
        None => println!("  log in     devcycle login --username <you>"),
    }
    match agents {
        Ok(n) if n > 0 => println!("  agents     {n} shipped agents registered and live"),
        Ok(_) => {}
        Err(e) => println!("  agents     not registered: {e:#}"),
    }
    println!();
    println!(
        "next: (after logging in) devcycle workflow submit examples/workflows/ci.yaml --input repo=$PWD/examples/samples/calc --follow"
    );
    println!("stop with Ctrl-C");

    if args.demo {
        let demo = demo(&clients, &cwd).await;
        if let Err(e) = demo {
            eprintln!("demo failed: {e:#}");
        }
    }

    let (r, s, x, g) = tokio::join!(registry.task, scheduler.task, executor.task, gateway.task);
    r??;
    s??;
    x??;
    g??;
    Ok(())
}

/// Applies and deploys every manifest in `dir`, dependencies first.
async fn register_agents(clients: &Clients, dir: &Path) -> anyhow::Result<usize> {
    if !dir.is_dir() {
        return Ok(0);
    }
    let mut manifests: Vec<Manifest> = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    for p in paths {
        manifests.push(Manifest::load(&p)?);
    }
    let mut c = clients.registry()?;
    let mut done: Vec<String> = Vec::new();
    // Each pass applies what has its dependencies live; a cycle stops it.
    while done.len() < manifests.len() {
        let before = done.len();
        for m in &manifests {
            if done.contains(&m.name) || !m.dependencies.iter().all(|d| done.contains(&d.agent)) {
                continue;
            }
            crate::agent::apply(&mut c, m, true)
                .await
                .with_context(|| format!("agent {}", m.name))?;
            done.push(m.name.clone());
        }
        if done.len() == before {
            anyhow::bail!("the shipped agents' dependencies do not resolve");
        }
    }
    Ok(done.len())
}

async fn demo(clients: &Clients, cwd: &Path) -> anyhow::Result<()> {
    let file = cwd.join("examples/workflows/ci.yaml");
    let sample = cwd.join("examples/samples/calc");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{} (run from the repository root)", file.display()))?;
    let spec = devcycle_scheduler::spec_file::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut c = clients.scheduler()?;
    let run = c
        .submit_run(pb::SubmitRunRequest {
            workflow: Some(pb::submit_run_request::Workflow::Spec(spec)),
            inputs: [(
                "repo".to_owned(),
                serde_json::Value::from(sample.to_string_lossy()).to_string(),
            )]
            .into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .run
        .unwrap_or_default();
    println!("\ndemo: ci.yaml on {}\n", sample.display());
    let run = crate::cmd::follow::follow(clients, &run.id, 0, false, true).await?;
    if let Some(report) = run.tasks.iter().find(|t| t.key == "report")
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&report.output)
        && let Some(md) = v.get("markdown").and_then(|m| m.as_str())
    {
        println!("\n{md}");
    }
    Ok(())
}
