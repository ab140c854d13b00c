//! The `devcycle` command: run the mesh (`up`) or one service, and talk to it.

mod agent;
mod bench;
mod cmd;
mod connect;
mod credentials;
mod login;
mod output;
mod page;
mod pki;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use devcycle::config::Config;
use figment::providers::Serialized;

#[derive(Debug, Parser)]
#[command(
    name = "devcycle",
    version,
    about = "A service mesh of AI agent workers for the software lifecycle"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "DEVCYCLE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (database, development CA and certificates).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole mesh in this process with embedded storage.
    Up(up::UpArgs),
    /// Serve the Agent Registry.
    Registry {
        /// host:port to listen on.
        #[arg(long)]
        listen: Option<String>,
        /// sqlite:... or postgres://...
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Serve the Scheduler.
    Scheduler {
        /// host:port to listen on.
        #[arg(long)]
        listen: Option<String>,
        /// sqlite:... or postgres://...
        #[arg(long)]
        database_url: Option<String>,
        /// host:port of the registry.
        #[arg(long)]
        registry: Option<String>,
        /// Kafka brokers (host:port,...); none means the in-process bus.
        #[arg(long)]
        kafka_brokers: Option<String>,
    },
    /// Run an executor: a worker that runs agents in sandboxes.
    Executor {
        /// host:port of its control plane.
        #[arg(long)]
        listen: Option<String>,
        /// Its id; its certificate is worker/<id>.
        #[arg(long)]
        worker_id: Option<String>,
        #[arg(long)]
        scheduler: Option<String>,
        #[arg(long)]
        registry: Option<String>,
        /// Tasks run at once.
        #[arg(long)]
        slots: Option<u32>,
    },
    /// Serve the gateway: gRPC and grpc-web, logins, RBAC, rate limits, audit.
    Gateway {
        /// host:port to listen on.
        #[arg(long)]
        listen: Option<String>,
        /// sqlite:... or postgres://... (users and the audit log).
        #[arg(long)]
        database_url: Option<String>,
        /// redis://host:port for sessions and rate limits; none: in-process.
        #[arg(long)]
        redis_url: Option<String>,
        /// host:port of the registry.
        #[arg(long)]
        registry: Option<String>,
        /// host:port of the scheduler.
        #[arg(long)]
        scheduler: Option<String>,
    },
    /// Apply the database migrations and exit (e.g. a Kubernetes Job before
    /// a rollout; services also migrate at start, under a lock).
    Migrate {
        /// sqlite:... or postgres://...; default: the shared database_url.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Log in through the gateway; client commands then use its tokens.
    Login(login::LoginArgs),
    /// End this session and forget its tokens.
    Logout,
    /// Who the gateway says you are.
    Whoami,
    /// Your sessions: list, revoke one, revoke all others.
    #[command(subcommand)]
    Sessions(cmd::sessions::SessionsCmd),
    /// Users (admins).
    #[command(subcommand)]
    User(cmd::users::UserCmd),
    /// The audit log of mutating calls.
    Audit(cmd::audit::AuditArgs),
    /// Workflows: submit, store, list.
    #[command(subcommand)]
    Workflow(cmd::workflows::WorkflowCmd),
    /// Runs: list, get, cancel, watch.
    #[command(subcommand)]
    Run(cmd::runs::RunCmd),
    /// Tasks: submit one, list, retry, logs.
    #[command(subcommand)]
    Task(cmd::tasks::TaskCmd),
    /// The dead-letter queue.
    #[command(subcommand)]
    Dlq(cmd::dlq::DlqCmd),
    /// Cron schedules that start workflow runs.
    #[command(subcommand)]
    Schedule(cmd::schedules::ScheduleCmd),
    /// Topics for messages between agents: create, list, dead letters.
    #[command(subcommand)]
    Topic(cmd::messages::TopicCmd),
    /// Publish a message to a topic.
    Publish(cmd::messages::PublishArgs),
    /// Read a topic as a member of a consumer group, acking what is printed.
    Subscribe(cmd::messages::SubscribeArgs),
    /// Triggers that start a workflow run for each message on a topic.
    #[command(subcommand)]
    Trigger(cmd::messages::TriggerCmd),
    /// Approve or reject an approval task; without one, list those waiting.
    Approve(cmd::approvals::ApproveArgs),
    /// Agents: create, publish, deploy, roll back, find, check.
    #[command(subcommand)]
    Agent(agent::AgentCmd),
    /// Executors known to the registry.
    #[command(subcommand)]
    Worker(cmd::workers::WorkerCmd),
    /// Measure the mesh: no-op tasks through client, scheduler and executor.
    Bench(bench::BenchArgs),
    /// Certificates of the mesh.
    #[command(subcommand)]
    Pki(pki::PkiCmd),
}

/// Where configuration comes from: the file and data directory flags.
struct Sources {
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
}

/// The flags a user gave, as configuration keys.
fn string_flags<const N: usize>(
    flags: [(&'static str, Option<String>); N],
) -> Vec<(&'static str, serde_json::Value)> {
    flags
        .into_iter()
        .filter_map(|(key, v)| v.map(|v| (key, serde_json::Value::from(v))))
        .collect()
}

/// What every long-running service command does before serving: load its
/// configuration, start logging, stop on SIGINT/SIGTERM, serve metrics.
fn start_service(
    src: &Sources,
    service: &str,
    flags: Vec<(&str, serde_json::Value)>,
) -> anyhow::Result<(Config, tokio_util::sync::CancellationToken)> {
    let config = load_config(src, Config::default(), flags)?;
    devcycle::telemetry::init_logging(config.log.format, &config.log.filter, service);
    let shutdown = tokio_util::sync::CancellationToken::new();
    devcycle::server::cancel_on_signals(shutdown.clone());
    if !config.metrics.listen.is_empty() {
        devcycle::telemetry::serve_metrics(config.metrics.listen.parse()?)?;
    }
    if !config.health.listen.is_empty() {
        devcycle::health::serve(config.health.listen.parse()?)?;
    }
    Ok((config, shutdown))
}

async fn clients(src: &Sources) -> anyhow::Result<connect::Clients> {
    connect::Clients::new(load_config(src, Config::default(), vec![])?).await
}

fn load_config(
    src: &Sources,
    defaults: Config,
    flags: Vec<(&str, serde_json::Value)>,
) -> anyhow::Result<Config> {
    let mut f = Config::figment_over(defaults, src.config.as_deref());
    if let Some(d) = &src.data_dir {
        f = f.merge(Serialized::default("data_dir", d));
    }
    for (key, value) in flags {
        f = f.merge(Serialized::default(key, value));
    }
    Ok(Config::from_figment(f)?)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    devcycle::otel::shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("error: {}: {}", code_name(s.code()), s.message()),
                None => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let src = Sources {
        config: cli.config,
        data_dir: cli.data_dir,
    };
    let json = cli.json;
    match cli.command {
        Command::Up(args) => {
            let mut defaults = Config::default();
            defaults.tls.dev_ca = true;
            let config = load_config(&src, defaults, args.flags())?;
            devcycle::telemetry::init_logging(config.log.format, &config.log.filter, "devcycle");
            up::run(config, &args).await
        }
        Command::Registry {
            listen,
            database_url,
        } => {
            let flags = string_flags([
                ("registry.listen", listen),
                ("registry.database_url", database_url),
            ]);
            let (config, shutdown) = start_service(&src, "devcycle-registry", flags)?;
            devcycle_registry::serve(&config, shutdown).await
        }
        Command::Scheduler {
            listen,
            database_url,
            registry,
            kafka_brokers,
        } => {
            let flags = string_flags([
                ("scheduler.listen", listen),
                ("scheduler.database_url", database_url),
                ("scheduler.registry", registry),
                ("kafka.brokers", kafka_brokers),
            ]);
            let (config, shutdown) = start_service(&src, "devcycle-scheduler", flags)?;
            devcycle_scheduler::serve(&config, shutdown).await
        }
        Command::Executor {
            listen,
            worker_id,
            scheduler,
            registry,
            slots,
        } => {
            let mut flags = string_flags([
                ("executor.listen", listen),
                ("executor.worker_id", worker_id),
                ("executor.scheduler", scheduler),
                ("executor.registry", registry),
            ]);
            if let Some(n) = slots {
                flags.push(("executor.slots", serde_json::Value::from(n)));
            }
            let (config, shutdown) = start_service(&src, "devcycle-executor", flags)?;
            devcycle_executor::serve(&config, shutdown).await
        }
        Command::Gateway {
            listen,
            database_url,
            redis_url,
            registry,
            scheduler,
        } => {
            let flags = string_flags([
                ("gateway.listen", listen),
                ("gateway.database_url", database_url),
                ("gateway.redis_url", redis_url),
                ("gateway.registry", registry),
                ("gateway.scheduler", scheduler),
            ]);
            let (config, shutdown) = start_service(&src, "devcycle-gateway", flags)?;
            devcycle_gateway::serve(&config, shutdown).await
        }
        Command::Migrate { database_url } => {
            let flags = string_flags([("database_url", database_url)]);
            let config = load_config(&src, Config::default(), flags)?;
            let url = config.database_url_for("");
            let db = devcycle::db::Database::open(&url).await?;
            println!("{} database migrated", db.engine());
            db.close().await;
            Ok(())
        }
        Command::Login(args) => {
            let config = load_config(&src, Config::default(), vec![])?;
            login::login(&config, args).await
        }
        Command::Logout => login::logout(load_config(&src, Config::default(), vec![])?).await,
        Command::Whoami => {
            let clients = clients(&src).await?;
            login::whoami(&clients, json).await
        }
        Command::Sessions(cmd) => {
            let clients = clients(&src).await?;
            cmd::sessions::run(cmd, &clients, json).await
        }
        Command::User(cmd) => {
            let clients = clients(&src).await?;
            cmd::users::run(cmd, &clients, json).await
        }
        Command::Audit(args) => {
            let clients = clients(&src).await?;
            cmd::audit::run(args, &clients, json).await
        }
        Command::Workflow(cmd) => {
            let clients = clients(&src).await?;
            cmd::workflows::run(cmd, &clients, json).await
        }
        Command::Run(cmd) => {
            let clients = clients(&src).await?;
            cmd::runs::run(cmd, &clients, json).await
        }
        Command::Task(cmd) => {
            let clients = clients(&src).await?;
            cmd::tasks::run(cmd, &clients, json).await
        }
        Command::Dlq(cmd) => {
            let clients = clients(&src).await?;
            cmd::dlq::run(cmd, &clients, json).await
        }
        Command::Schedule(cmd) => {
            let clients = clients(&src).await?;
            cmd::schedules::run(cmd, &clients, json).await
        }
        Command::Topic(cmd) => {
            let clients = clients(&src).await?;
            cmd::messages::topic(cmd, &clients, json).await
        }
        Command::Publish(args) => {
            let clients = clients(&src).await?;
            cmd::messages::publish(args, &clients, json).await
        }
        Command::Subscribe(args) => {
            let clients = clients(&src).await?;
            cmd::messages::subscribe(args, &clients, json).await
        }
        Command::Trigger(cmd) => {
            let clients = clients(&src).await?;
            cmd::messages::trigger(cmd, &clients, json).await
        }
        Command::Approve(args) => {
            let clients = clients(&src).await?;
            cmd::approvals::run(args, &clients, json).await
        }
        Command::Agent(cmd) => {
            let clients = clients(&src).await?;
            agent::run(cmd, &clients, json).await
        }
        Command::Worker(cmd) => {
            let clients = clients(&src).await?;
            cmd::workers::run(cmd, &clients, json).await
        }
        Command::Bench(args) => bench::run(args, json).await,
        Command::Pki(cmd) => {
            let config = load_config(&src, Config::default(), vec![])?;
            pki::run(&cmd, &config)
        }
    }
}
