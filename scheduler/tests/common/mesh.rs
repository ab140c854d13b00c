//! A registry and a scheduler over mTLS, and a scripted worker speaking the
//! Work protocol, for tests of the scheduler's service.

use std::sync::Arc;
use std::time::Duration;

use devcycle::db::Database;
use devcycle::identity::Kind;
use devcycle::proto::messages::v1::messages_client::MessagesClient;
use devcycle::proto::registry::v1 as reg;
use devcycle::proto::registry::v1::agent_registry_client::AgentRegistryClient;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient;
use devcycle::testkit::TestPki;
use devcycle::tls::MeshTls;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub struct Mesh {
    pub pki: TestPki,
    pub registry: String,
    pub scheduler: String,
    /// The scheduler's database, for more schedulers on it.
    pub db_url: String,
    /// Brokers and topic prefix of the message log (`Db::Kafka`).
    pub kafka: (String, String),
    pub stop: CancellationToken,
    pub scheduler_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Adds the principal the gateway forwards to each request.
pub type AddPrincipal =
    Box<dyn Fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync>;

/// A channel to a scheduler as the gateway calls it for someone.
pub type AsUser = tonic::service::interceptor::InterceptedService<Channel, AddPrincipal>;

pub enum Db {
    Sqlite,
    Postgres,
    /// PostgreSQL, with messages in Kafka (tansu in tests) under a prefix
    /// of the mesh's own.
    Kafka,
}

impl Mesh {
    pub async fn start(db: Db) -> Self {
        Self::start_with(db, Arc::new(devcycle::bus::InProcessBus::default())).await
    }

    pub async fn start_with(db: Db, bus: Arc<dyn devcycle::bus::EventBus>) -> Self {
        Self::start_full(db, bus, None).await
    }

    /// PostgreSQL with messages in Kafka at `brokers`.
    pub async fn start_on_kafka(brokers: &str) -> Self {
        let bus = Arc::new(devcycle::bus::InProcessBus::default());
        Self::start_full(Db::Kafka, bus, Some(brokers.to_owned())).await
    }

    async fn start_full(
        db: Db,
        bus: Arc<dyn devcycle::bus::EventBus>,
        brokers: Option<String>,
    ) -> Self {
        let pki = TestPki::new();
        let stop = CancellationToken::new();
        let mut dirs = Vec::new();
        let (rdir, rurl) = devcycle::testkit::fresh_sqlite();
        dirs.push(rdir);
        let registry = devcycle_registry::start(
            devcycle_registry::Options {
                endpoint: devcycle::server::Endpoint {
                    listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
                    tls: pki.identity(Kind::Service, "registry"),
                    gateway: TestPki::id(Kind::Service, "gateway"),
                    health_grace: Duration::ZERO,
                    drain: Duration::from_millis(200),
                },
                db: Database::open(&rurl).await.unwrap(),
                heartbeat_interval: Duration::from_secs(5),
                missed_heartbeats: 3,
            },
            stop.clone(),
        )
        .await
        .unwrap();
        let url = match db {
            Db::Sqlite => {
                let (d, url) = devcycle::testkit::fresh_sqlite();
                dirs.push(d);
                url
            }
            Db::Postgres | Db::Kafka => devcycle::testkit::fresh_postgres().await,
        };
        let kafka = match db {
            Db::Kafka => (
                brokers.unwrap_or_else(|| {
                    std::env::var("DEVCYCLE_TEST_KAFKA_BROKERS")
                        .unwrap_or_else(|_| "127.0.0.1:9092".into())
                }),
                format!("t{}", uuid::Uuid::new_v4().simple()),
            ),
            _ => (String::new(), "devcycle".into()),
        };
        let sched =
            start_scheduler(&pki, &url, &registry.addr.to_string(), bus, &kafka, &stop).await;
        let mesh = Self {
            pki,
            registry: registry.addr.to_string(),
            scheduler: sched.addr.to_string(),
            db_url: url,
            kafka,
            stop,
            scheduler_task: Some(sched.task),
            _dirs: dirs,
        };
        let mut r = mesh.registry_client();
        for (name, runtime, schema) in [
            ("noop", "noop", ""),
            ("echo", "echo", r#"{"type":"object"}"#),
            ("flaky", "noop", ""),
            ("hang", "noop", ""),
        ] {
            r.create_agent(reg::CreateAgentRequest {
                agent: Some(reg::Agent {
                    name: name.into(),
                    owner: "test".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
            r.publish_version(reg::PublishVersionRequest {
                version: Some(reg::AgentVersion {
                    agent: name.into(),
                    version: "1.0.0".into(),
                    runtime: Some(reg::Runtime {
                        kind: Some(reg::runtime::Kind::Builtin(reg::BuiltinRuntime {
                            name: runtime.into(),
                        })),
                    }),
                    capabilities: vec![format!("test.{name}")],
                    input_schema: schema.into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
            r.deploy(reg::DeployRequest {
                agent: name.into(),
                version: "1.0.0".into(),
            })
            .await
            .unwrap();
        }
        mesh
    }

    /// Another scheduler on the same database (a replica); its address.
    pub async fn replica(&self) -> String {
        let bus = Arc::new(devcycle::bus::InProcessBus::default());
        let r = start_scheduler(
            &self.pki,
            &self.db_url,
            &self.registry,
            bus,
            &self.kafka,
            &self.stop,
        )
        .await;
        r.addr.to_string()
    }

    pub fn client_of(&self, scheduler: &str) -> SchedulerClient<Channel> {
        let ch = devcycle::client::channel(
            &self.user(),
            scheduler,
            TestPki::id(Kind::Service, "scheduler"),
        )
        .unwrap();
        SchedulerClient::new(ch)
    }

    /// A worker stream driven by the test, message by message.
    pub async fn raw_worker(
        &self,
        scheduler: &str,
        id: &str,
        session: u64,
        held: Vec<pb::LeaseRef>,
    ) -> RawWorker {
        let ch = devcycle::client::channel(
            &self.pki.identity(Kind::Worker, id),
            scheduler,
            TestPki::id(Kind::Service, "scheduler"),
        )
        .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(pb::WorkRequest {
            msg: Some(pb::work_request::Msg::Hello(pb::WorkerHello {
                worker_id: id.into(),
                held,
                session,
                ..Default::default()
            })),
        })
        .unwrap();
        let inbound = SchedulerClient::new(ch)
            .work(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        RawWorker { tx, inbound }
    }

    pub fn user(&self) -> Arc<MeshTls> {
        self.pki.identity(Kind::User, "tester")
    }

    pub fn client_as(&self, tls: &Arc<MeshTls>) -> SchedulerClient<Channel> {
        let ch = devcycle::client::channel(
            tls,
            &self.scheduler,
            TestPki::id(Kind::Service, "scheduler"),
        )
        .unwrap();
        SchedulerClient::new(ch)
    }

    /// The `Messages` service the scheduler serves, as the test user.
    /// The scheduler as the gateway calls it for `subject` with `roles`.
    pub fn as_user(&self, subject: &str, roles: &str) -> AsUser {
        let ch = devcycle::client::channel(
            &self.pki.identity(Kind::Service, "gateway"),
            &self.scheduler,
            TestPki::id(Kind::Service, "scheduler"),
        )
        .unwrap();
        let (subject, roles) = (subject.to_owned(), roles.to_owned());
        let add: AddPrincipal = Box::new(move |mut req| {
            let md = req.metadata_mut();
            md.insert(devcycle::authz::SUBJECT_HEADER, subject.parse().unwrap());
            md.insert(devcycle::authz::ROLES_HEADER, roles.parse().unwrap());
            md.insert(devcycle::authz::SESSION_HEADER, "s1".parse().unwrap());
            Ok(req)
        });
        tonic::service::interceptor::InterceptedService::new(ch, add)
    }

    pub fn messages(&self) -> MessagesClient<Channel> {
        self.messages_of(&self.scheduler)
    }

    pub fn messages_of(&self, scheduler: &str) -> MessagesClient<Channel> {
        let ch = devcycle::client::channel(
            &self.user(),
            scheduler,
            TestPki::id(Kind::Service, "scheduler"),
        )
        .unwrap();
        MessagesClient::new(ch)
    }

    pub fn client(&self) -> SchedulerClient<Channel> {
        self.client_as(&self.user())
    }

    pub fn registry_client(&self) -> AgentRegistryClient<Channel> {
        let ch = devcycle::client::channel(
            &self.user(),
            &self.registry,
            TestPki::id(Kind::Service, "registry"),
        )
        .unwrap();
        AgentRegistryClient::new(ch)
    }

    pub fn worker(&self, id: &str, slots: u32) -> Worker {
        Worker::spawn(
            self.pki.identity(Kind::Worker, id),
            &self.scheduler,
            id,
            slots,
        )
    }
}

async fn start_scheduler(
    pki: &TestPki,
    url: &str,
    registry: &str,
    bus: Arc<dyn devcycle::bus::EventBus>,
    (brokers, prefix): &(String, String),
    stop: &CancellationToken,
) -> devcycle_scheduler::Running {
    devcycle_scheduler::start(
        devcycle_scheduler::Options {
            endpoint: devcycle::server::Endpoint {
                listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
                tls: pki.identity(Kind::Service, "scheduler"),
                gateway: TestPki::id(Kind::Service, "gateway"),
                health_grace: Duration::ZERO,
                drain: Duration::from_millis(200),
            },
            db: Database::open(url).await.unwrap(),
            registry: registry.to_owned(),
            bus,
            topic_prefix: prefix.clone(),
            kafka_brokers: brokers.clone(),
            heartbeat_interval: Duration::from_millis(200),
        },
        stop.clone(),
    )
    .await
    .unwrap()
}

/// One Work stream, each message sent and read by the test.
pub struct RawWorker {
    pub tx: mpsc::UnboundedSender<pb::WorkRequest>,
    pub inbound: tonic::Streaming<pb::WorkResponse>,
}

impl RawWorker {
    pub fn send(&self, m: pb::work_request::Msg) {
        let _ = self.tx.send(pb::WorkRequest { msg: Some(m) });
    }

    pub fn credit(&self, n: u32) {
        self.send(pb::work_request::Msg::Credit(pb::CreditGrant {
            credits: n,
        }));
    }

    /// The next message other than welcomes and heartbeat acks, within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<pb::work_response::Msg> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let m = tokio::time::timeout_at(deadline, self.inbound.message())
                .await
                .ok()?
                .ok()??;
            match m.msg {
                Some(pb::work_response::Msg::Welcome(_))
                | Some(pb::work_response::Msg::HeartbeatAck(_))
                | None => continue,
                other => return other,
            }
        }
    }

    pub async fn assignment(&mut self, within: Duration) -> pb::Assignment {
        match self.next(within).await {
            Some(pb::work_response::Msg::Assignment(a)) => a,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }
}

/// A worker that runs the test agents: `noop` → `{}`, `echo` → its input,
/// `flaky` → fails while `failing` is set, `hang` → never answers (until
/// cancelled).
pub struct Worker {
    pub failing: Arc<std::sync::atomic::AtomicBool>,
    pub cancelled: Arc<Mutex<Vec<String>>>,
    pub done: Arc<Mutex<Vec<(String, u32)>>>,
    stop: CancellationToken,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Worker {
    fn spawn(tls: Arc<MeshTls>, addr: &str, id: &str, slots: u32) -> Self {
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cancelled = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let ch =
            devcycle::client::channel(&tls, addr, TestPki::id(Kind::Service, "scheduler")).unwrap();
        let (id, f, c, d, s) = (
            id.to_owned(),
            Arc::clone(&failing),
            Arc::clone(&cancelled),
            Arc::clone(&done),
            stop.clone(),
        );
        tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(1024);
            let send = |m: pb::work_request::Msg| pb::WorkRequest { msg: Some(m) };
            tx.send(send(pb::work_request::Msg::Hello(pb::WorkerHello {
                worker_id: id.clone(),
                ..Default::default()
            })))
            .await
            .unwrap();
            tx.send(send(pb::work_request::Msg::Credit(pb::CreditGrant {
                credits: slots,
            })))
            .await
            .unwrap();
            let mut inbound = SchedulerClient::new(ch)
                .work(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            // An empty heartbeat now and then keeps the stream alive; the
            // leases of `hang` tasks are never extended.
            let mut beat = tokio::time::interval(Duration::from_millis(100));
            loop {
                let msg = tokio::select! {
                    _ = s.cancelled() => return,
                    _ = beat.tick() => {
                        let _ = tx.send(send(pb::work_request::Msg::Heartbeat(Default::default()))).await;
                        continue;
                    }
                    m = inbound.message() => match m { Ok(Some(m)) => m, _ => return },
                };
                match msg.msg {
                    Some(pb::work_response::Msg::Assignment(a)) => {
                        let agent = a
                            .agent
                            .as_ref()
                            .map(|v| v.agent.clone())
                            .unwrap_or_default();
                        let lease = a.lease.clone();
                        let outcome = match agent.as_str() {
                            "hang" => continue,
                            "echo" => pb::task_result::Outcome::Output(a.input.clone()),
                            "flaky" if f.load(std::sync::atomic::Ordering::SeqCst) => {
                                pb::task_result::Outcome::Error(pb::TaskError {
                                    kind: "flaky".into(),
                                    message: "it failed".into(),
                                    retryable: true,
                                })
                            }
                            _ => pb::task_result::Outcome::Output("{}".into()),
                        };
                        if let Some(l) = &lease {
                            d.lock().push((l.task_id.clone(), l.attempt));
                        }
                        let result = pb::TaskResult {
                            lease,
                            outcome: Some(outcome),
                            ..Default::default()
                        };
                        let _ = tx.send(send(pb::work_request::Msg::Result(result))).await;
                        let _ = tx
                            .send(send(pb::work_request::Msg::Credit(pb::CreditGrant {
                                credits: 1,
                            })))
                            .await;
                    }
                    Some(pb::work_response::Msg::Cancel(cancel)) => {
                        c.lock()
                            .push(cancel.lease.map(|l| l.task_id).unwrap_or_default());
                        let _ = tx
                            .send(send(pb::work_request::Msg::Credit(pb::CreditGrant {
                                credits: 1,
                            })))
                            .await;
                    }
                    _ => {}
                }
            }
        });
        Self {
            failing,
            cancelled,
            done,
            stop,
        }
    }
}
