//! `devcycle up`: every service of the mesh in one process, with embedded
//! storage in the data directory and a development CA.

use anyhow::Context;
use clap::Args;
use devcycle::config::Config;
use devcycle::mesh::DEV_CERT_LIFETIME;
use devcycle::tls::CertificateAuthority;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// host:port of the registry.
    #[arg(long)]
    registry_listen: Option<String>,
    /// host:port of the scheduler.
    #[arg(long)]
    scheduler_listen: Option<String>,
}

impl UpArgs {
    pub fn flags(&self) -> Vec<(&'static str, serde_json::Value)> {
        let mut flags = Vec::new();
        if let Some(l) = &self.registry_listen {
            flags.push(("registry.listen", serde_json::Value::from(l.as_str())));
        }
        if let Some(l) = &self.scheduler_listen {
            flags.push(("scheduler.listen", serde_json::Value::from(l.as_str())));
        }
        flags
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    devcycle::server::cancel_on_signals(shutdown.clone());
    devcycle::tls::install_default_provider();

    // The CLI's own identity, so client commands work right away.
    let dir = config.tls_dir();
    let ca = CertificateAuthority::load_or_create(&dir, &config.trust_domain)?;
    ca.ensure_identity(&dir, &config.client_identity()?, &[], DEV_CERT_LIFETIME)?;

    if !config.metrics.listen.is_empty() {
        devcycle::telemetry::serve_metrics(config.metrics.listen.parse()?)?;
    }
    let listener = TcpListener::bind(config.registry.listen)
        .await
        .with_context(|| {
            format!(
                "registry.listen: cannot listen on {}",
                config.registry.listen
            )
        })?;
    let opts = devcycle_registry::Options::from_config(&config, listener, &shutdown).await?;
    let registry = devcycle_registry::start(opts, shutdown.clone()).await?;

    let listener = TcpListener::bind(config.scheduler.listen)
        .await
        .with_context(|| {
            format!(
                "scheduler.listen: cannot listen on {}",
                config.scheduler.listen
            )
        })?;
    let bus = devcycle_scheduler::bus_from_config(&config)?;
    let mut opts =
        devcycle_scheduler::Options::from_config(&config, listener, bus, &shutdown).await?;
    opts.registry = registry.addr.to_string();
    let scheduler = devcycle_scheduler::start(opts, shutdown.clone()).await?;

    println!("devcycle is up (data in {})", config.data_dir.display());
    println!(
        "  registry  {}  mTLS as {}",
        registry.addr,
        config.service_id("registry")
    );
    println!(
        "  scheduler {}  mTLS as {}",
        scheduler.addr,
        config.service_id("scheduler")
    );
    if !config.metrics.listen.is_empty() {
        println!("  metrics   http://{}/metrics", config.metrics.listen);
    }
    println!(
        "  you are   {} (certificates in {})",
        config.client_identity()?,
        dir.display()
    );
    println!();
    println!(
        "next: devcycle agent apply examples/agents/reviewer.yaml --deploy && devcycle agent list"
    );
    println!("stop with Ctrl-C");

    let (r, s) = tokio::join!(registry.task, scheduler.task);
    r??;
    s??;
    Ok(())
}
