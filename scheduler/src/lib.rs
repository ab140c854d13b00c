//! The Scheduler: workflows as DAGs of tasks, a durable priority queue with
//! leases and fencing, retries with backoff, dead letters, and events
//! through a transactional outbox.

pub mod cron;
pub mod engine;
mod error;
pub mod hub;
pub mod machine;
pub mod messages;
pub mod model;
mod outbox;
mod resolver;
pub(crate) mod service;
pub mod spec;
pub mod spec_file;
mod stats;
pub mod store;
mod submit;
pub mod template;
mod watch;
mod wire;
mod work;

use std::sync::Arc;
use std::time::Duration;

use devcycle::authz::Policy;
use devcycle::bus::{EventBus, InProcessBus, KafkaBus};
use devcycle::config::Config;
use devcycle::db::Database;
use devcycle::identity::SpiffeId;
use devcycle::proto::messages::v1::messages_server::{
    MessagesServer, SERVICE_NAME as MESSAGES_SERVICE,
};
use devcycle::proto::registry::v1::agent_registry_client::AgentRegistryClient;
use devcycle::proto::scheduler::v1::scheduler_server::{SERVICE_NAME, SchedulerServer};
use devcycle::server::Endpoint;
pub use devcycle::server::Running;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use engine::{LOG_TRUNCATED, MAX_LOG_LINES};
pub use error::Error;
pub use outbox::topic as run_events_topic;

const M: &str = "/devcycle.scheduler.v1.Scheduler/";
/// Largest request decoded; workflow specs and task inputs are far smaller.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Who may call what: people (directly or through the gateway) start and
/// steer runs, every mesh identity may read, only workers take work.
pub fn policy() -> Policy {
    const READ: &[&str] = &["*"];
    const WRITE: &[&str] = &["user/*", "svc/gateway"];
    const WORKER: &[&str] = &["worker/*"];
    Policy::for_service(
        M,
        &[
            ("PutWorkflow", WRITE),
            ("GetWorkflow", READ),
            ("ListWorkflows", READ),
            ("SubmitRun", WRITE),
            ("SubmitTask", WRITE),
            ("GetRun", READ),
            ("ListRuns", READ),
            ("CancelRun", WRITE),
            ("WatchRun", READ),
            ("GetTask", READ),
            ("ListTasks", READ),
            ("RetryTask", WRITE),
            ("GetTaskLogs", READ),
            ("ListDeadLetters", READ),
            ("RequeueDeadLetter", WRITE),
            ("SetAgentRateLimit", WRITE),
            ("Work", WORKER),
            ("CreateSchedule", WRITE),
            ("GetSchedule", READ),
            ("ListSchedules", READ),
            ("PauseSchedule", WRITE),
            ("ResumeSchedule", WRITE),
            ("DeleteSchedule", WRITE),
            ("DecideApproval", WRITE),
        ],
    )
}

/// Everything the scheduler needs to run.
pub struct Options {
    pub endpoint: Endpoint,
    pub db: Database,
    /// host:port of the registry.
    pub registry: String,
    pub bus: Arc<dyn EventBus>,
    pub topic_prefix: String,
    /// Where messages live when the database is PostgreSQL; empty: nowhere
    /// (the `Messages` calls say so).
    pub kafka_brokers: String,
    pub heartbeat_interval: Duration,
}

impl Options {
    pub async fn from_config(
        config: &Config,
        listener: TcpListener,
        bus: Arc<dyn EventBus>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_config(config, "scheduler", listener, shutdown)?;
        let db = Database::open(&config.database_url_for(&config.scheduler.database_url)).await?;
        Ok(Self {
            endpoint,
            db,
            registry: config.scheduler.registry.clone(),
            bus,
            topic_prefix: config.kafka.topic_prefix.clone(),
            kafka_brokers: config.kafka.brokers.clone(),
            heartbeat_interval: config.scheduler.heartbeat_interval,
        })
    }
}

/// The bus the configuration asks for.
pub fn bus_from_config(config: &Config) -> anyhow::Result<Arc<dyn EventBus>> {
    if config.kafka.brokers.is_empty() {
        Ok(Arc::new(InProcessBus::default()))
    } else {
        Ok(Arc::new(KafkaBus::new(&config.kafka.brokers, &[])?))
    }
}

pub async fn start(opts: Options, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let hub = hub::Hub::new();
    let instance = uuid::Uuid::new_v4().simple().to_string();
    // An outbox and its relay only for a bus that leaves the process.
    let relayed = opts.bus.external();
    let topic = outbox::topic(&opts.topic_prefix);
    let mut opener: Option<messages::service::Opener> = None;
    let mut open_now = false;
    let (store, pg): (Arc<dyn store::SchedulerStore>, _) = match &opts.db {
        Database::Postgres(pool) => {
            if !opts.kafka_brokers.is_empty() {
                let (pool, brokers, prefix) = (
                    pool.clone(),
                    opts.kafka_brokers.clone(),
                    opts.topic_prefix.clone(),
                );
                // Triggers may be stored: open now to run them.
                open_now = true;
                opener = Some(Box::new(move |wakes| {
                    Ok(Arc::new(messages::kafka::KafkaLog::new(
                        pool.clone(),
                        &brokers,
                        &prefix,
                        wakes,
                    )?) as Arc<dyn messages::MessageLog>)
                }));
            }
            (
                Arc::new(store::pg::PgStore::new(
                    pool.clone(),
                    instance.clone(),
                    relayed,
                )),
                Some(pool.clone()),
            )
        }
        Database::Sqlite(pool) => {
            let path = pool.connect_options().get_filename().to_owned();
            // The message log sits next to the scheduler's database.
            let file = path.with_file_name("messages.db");
            open_now = file.exists();
            opener = Some(Box::new(move |_| {
                Ok(Arc::new(messages::sqlite::SqliteLog::open(&file)?)
                    as Arc<dyn messages::MessageLog>)
            }));
            (
                Arc::new(store::sqlite::SqliteStore::open(path, relayed)?),
                None,
            )
        }
    };
    let engine_stop = CancellationToken::new();
    let direct = (!relayed).then(|| (Arc::clone(&opts.bus), topic.clone()));
    let (engine, engine_task) = engine::Engine::start(
        Arc::clone(&store),
        Arc::clone(&hub),
        direct,
        engine_stop.clone(),
    );
    if let Some(pool) = &pg {
        hub::wake_remote_waiters(Arc::clone(&hub), Arc::clone(&store), shutdown.clone());
        store::pg::listen(
            pool.clone(),
            instance,
            Arc::clone(&hub),
            engine.clone(),
            shutdown.clone(),
        );
    }
    let registry = devcycle::client::channel(
        &opts.endpoint.tls,
        &opts.registry,
        opts.tls_service_id("registry"),
    )?;
    let relay_stop = CancellationToken::new();
    let relay = relayed.then(|| {
        tokio::spawn(
            outbox::Relay {
                store: Arc::clone(&store),
                bus: Arc::clone(&opts.bus),
                hub: Arc::clone(&hub),
                topic,
                pg,
            }
            .run(relay_stop.clone()),
        )
    });
    tokio::spawn(stats::run(Arc::clone(&store), relay_stop.clone()));
    let svc = Arc::new(service::SchedulerService {
        store,
        engine,
        resolver: Arc::new(resolver::Resolver::new(AgentRegistryClient::new(registry))),
        schemas: Default::default(),
        heartbeat_interval: opts.heartbeat_interval,
        shutdown: shutdown.clone(),
        schedules_changed: Default::default(),
        approval: Arc::new(devcycle::proto::registry::v1::AgentVersion {
            agent: model::APPROVAL_AGENT.into(),
            ..Default::default()
        }),
    });
    tokio::spawn(service::run_ticker(Arc::clone(&svc), shutdown.clone()));
    let messages =
        messages::service::MessagesService::new(opener, Arc::clone(&svc), shutdown.clone());
    // A log that exists may hold triggers: open it now to run them.
    if open_now {
        messages.open().await?;
    }
    messages.run(shutdown.clone());
    let routes = tonic::service::Routes::new(
        SchedulerServer::from_arc(svc).max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(MessagesServer::new(messages).max_decoding_message_size(MAX_MESSAGE_BYTES));
    let db = opts.db;
    let mut server = opts.endpoint.server(
        "scheduler",
        policy().merge(messages::service::policy()),
        SERVICE_NAME,
    );
    server.health_names.push(MESSAGES_SERVICE);
    server
        .follow_denylist(&db, &shutdown)
        .await?
        // In-flight calls are done: stop the engine, then publish what it
        // committed, then close the database.
        .start(routes, shutdown, async move {
            engine_stop.cancel();
            let _ = engine_task.await;
            relay_stop.cancel();
            if let Some(relay) = relay {
                let _ = relay.await;
            }
            db.close().await;
        })
}

impl Options {
    fn tls_service_id(&self, name: &str) -> SpiffeId {
        SpiffeId::service(self.endpoint.tls.trust_domain(), name).expect("service names are valid")
    }
}

pub async fn serve(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.scheduler.listen).await?;
    let bus = bus_from_config(config)?;
    let opts = Options::from_config(config, listener, bus, &shutdown).await?;
    start(opts, shutdown).await?.wait().await
}
