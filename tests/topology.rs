//! The distributed mesh as separate processes of the real binary: two
//! registries, two schedulers and three executors on one PostgreSQL and a
//! Kafka-protocol broker, with a gateway in front. 3,000 tasks and 20
//! lifecycle runs go in through both schedulers (and the gateway) while one
//! scheduler and one executor are killed (-9) and another executor is
//! stopped past its leases. Then every accepted run has ended, succeeded or
//! with a dead-lettered task; no attempt's outcome is recorded twice; Kafka
//! has every event of every run, once per id and in order; and on either
//! replica a waiting submit is answered within a second of the run's end
//! and a cancel kills the agent's process within a second.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{BIN, Proc, free_port, processes_with, repo, wait_for_port};
use devcycle::config::Config;
use devcycle::identity::{Kind, SpiffeId};
use devcycle::proto::auth::v1 as auth;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient;
use devcycle::tls::{CertificateAuthority, MeshConnector, MeshTls};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tonic::transport::{Channel, Endpoint};

type Client = SchedulerClient<Channel>;

const TASKS: usize = 3000;
const NAPS: usize = 150;
const CI_RUNS: usize = 20;
const PASSWORD: &str = "a long enough password";

struct Topology {
    dir: tempfile::TempDir,
    config: Config,
    config_path: PathBuf,
    db_url: String,
    registries: [String; 2],
    schedulers: [String; 2],
    gateway: String,
    user: Arc<MeshTls>,
    procs: HashMap<String, Proc>,
}

impl Topology {
    async fn start() -> Self {
        devcycle::tls::install_default_provider();
        let kafka = std::env::var("DEVCYCLE_TEST_KAFKA_BROKERS").expect(
            "DEVCYCLE_TEST_KAFKA_BROKERS: run scripts/test.sh, which starts a Kafka-protocol broker",
        );
        let db_url = devcycle::testkit::fresh_postgres().await;
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("topo{}", uuid::Uuid::new_v4().simple());
        let text = format!(
            r#"data_dir = "{data}"
database_url = "{db_url}"
[tls]
dev_ca = true
[metrics]
listen = ""
[log]
filter = "info"
[kafka]
brokers = "{kafka}"
topic_prefix = "{prefix}"
[scheduler]
heartbeat_interval_ms = 300
[executor]
agent_dir = "{repo}/examples/agents"
read_only = ["{repo}/examples"]
drain_ms = 2000
secrets = ["REVIEW_API_URL", "REVIEW_MODEL", "REVIEW_API_KEY"]
"#,
            data = dir.path().display(),
            repo = repo().display()
        );
        let config_path = dir.path().join("devcycle.toml");
        std::fs::write(&config_path, text).unwrap();
        let config = Config::load(Some(&config_path)).unwrap();
        // Every identity exists before any process starts, so that replicas
        // of one service never write the same files at once.
        let tls_dir = config.tls_dir();
        let ca = CertificateAuthority::load_or_create(&tls_dir, &config.trust_domain).unwrap();
        let td = &config.trust_domain;
        let mut ids: Vec<SpiffeId> = ["registry", "scheduler", "gateway"]
            .iter()
            .map(|s| SpiffeId::service(td, s).unwrap())
            .collect();
        for w in ["exec-x", "exec-y", "exec-z"] {
            ids.push(SpiffeId::new(td, Kind::Worker, w).unwrap());
        }
        ids.push(config.client_identity().unwrap());
        for id in &ids {
            ca.ensure_identity(
                &tls_dir,
                id,
                &devcycle::mesh::dev_hosts(),
                devcycle::mesh::DEV_CERT_LIFETIME,
            )
            .unwrap();
        }
        let tester = SpiffeId::new(td, Kind::User, "tester").unwrap();
        let issued = ca.issue(&tester, &[], Duration::from_secs(3600)).unwrap();
        let user = MeshTls::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem, td).unwrap();
        let addr = || format!("127.0.0.1:{}", free_port());
        let mut t = Self {
            dir,
            config,
            config_path,
            db_url,
            registries: [addr(), addr()],
            schedulers: [addr(), addr()],
            gateway: addr(),
            user,
            procs: HashMap::new(),
        };
        for (i, r) in t.registries.clone().iter().enumerate() {
            t.spawn(&format!("registry-{i}"), &["registry", "--listen", r], &[]);
        }
        for r in &t.registries {
            wait_for_port(r);
        }
        for (i, s) in t.schedulers.clone().iter().enumerate() {
            let registry = t.registries[i].clone();
            t.spawn(
                &format!("scheduler-{i}"),
                &["scheduler", "--listen", s, "--registry", &registry],
                &[],
            );
        }
        let (g, r, s) = (
            t.gateway.clone(),
            t.registries[0].clone(),
            t.schedulers[0].clone(),
        );
        t.spawn(
            "gateway",
            &[
                "gateway",
                "--listen",
                &g,
                "--registry",
                &r,
                "--scheduler",
                &s,
            ],
            &[("DEVCYCLE_GATEWAY__ADMIN_PASSWORD", PASSWORD)],
        );
        for a in t.schedulers.iter().chain([&t.gateway]) {
            wait_for_port(a);
        }
        t
    }

    fn spawn(&mut self, name: &str, args: &[&str], env: &[(&str, &str)]) {
        let log = self.dir.path().join(format!("{name}.log"));
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .current_dir(repo())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.procs.insert(name.into(), Proc { child, log });
    }

    /// An executor connected to `schedulers` in that order of preference.
    fn executor(&mut self, id: &str, schedulers: &str) {
        let listen = format!("127.0.0.1:{}", free_port());
        let registry = self.registries[1].clone();
        self.spawn(
            id,
            &[
                "executor",
                "--worker-id",
                id,
                "--listen",
                &listen,
                "--scheduler",
                schedulers,
                "--registry",
                &registry,
                "--slots",
                "8",
            ],
            &[],
        );
        wait_for_port(&listen);
    }

    fn apply(&self, manifest: &str) {
        let path = if manifest.contains('\n') {
            let p = self
                .dir
                .path()
                .join(format!("agent-{}.yaml", uuid::Uuid::new_v4().simple()));
            std::fs::write(&p, manifest).unwrap();
            p
        } else {
            repo().join(manifest)
        };
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&self.config_path)
            .args(["agent", "apply", path.to_str().unwrap(), "--deploy"])
            .env("DEVCYCLE_CLIENT__REGISTRY", &self.registries[0])
            .env("DEVCYCLE_CLIENT__DIRECT", "true")
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "apply {manifest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn client(&self, i: usize) -> Client {
        let id = self.config.service_id("scheduler");
        SchedulerClient::new(
            devcycle::client::channel(&self.user, &self.schedulers[i], id).unwrap(),
        )
    }

    fn signal(&self, name: &str, sig: &str) {
        self.procs[name].signal(sig);
    }

    fn kill(&mut self, name: &str) {
        let mut p = self.procs.remove(name).unwrap();
        p.signal("KILL");
        let _ = p.child.wait();
    }

    /// The gateway's Scheduler, as the admin.
    async fn gateway_client(&self) -> (Client, String) {
        let ca_pem = std::fs::read_to_string(self.config.tls_dir().join("ca.pem")).unwrap();
        let tls = devcycle::tls::public_client_config(&ca_pem).unwrap();
        let ch = Endpoint::from_shared(format!("http://{}", self.gateway))
            .unwrap()
            .connect_with_connector_lazy(MeshConnector::with_config(tls));
        let token = auth::auth_client::AuthClient::new(ch.clone())
            .login(auth::LoginRequest {
                username: "admin".into(),
                password: PASSWORD.into(),
                device: "topology".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .access_token;
        (SchedulerClient::new(ch), token)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

fn one(agent: &str, key: String, heartbeat_ms: u64) -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest {
        task: Some(pb::TaskSpec {
            id: "t".into(),
            target: Some(pb::task_spec::Target::Agent(pb::AgentRef {
                name: agent.into(),
                version: String::new(),
            })),
            input: "{}".into(),
            retry: Some(pb::RetryPolicy {
                max_attempts: 5,
                initial_backoff_ms: 100,
                ..Default::default()
            }),
            timeouts: Some(pb::Timeouts {
                heartbeat_ms,
                ..Default::default()
            }),
            ..Default::default()
        }),
        idempotency_key: key,
        ..Default::default()
    }
}

fn ci_run(key: String) -> pb::SubmitRunRequest {
    let text = std::fs::read_to_string(repo().join("examples/workflows/ci.yaml")).unwrap();
    let spec = devcycle_scheduler::spec_file::parse(&text).unwrap();
    let sample = repo().join("examples/samples/calc");
    pb::SubmitRunRequest {
        workflow: Some(pb::submit_run_request::Workflow::Spec(spec)),
        inputs: [(
            "repo".to_owned(),
            serde_json::Value::from(sample.to_string_lossy()).to_string(),
        )]
        .into(),
        idempotency_key: key,
        ..Default::default()
    }
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Submits through `first`, and on failure through the other replica, with
/// the same idempotency key: a submit is accepted exactly once.
async fn submit_task(
    clients: &mut [Client; 2],
    first: usize,
    req: pb::SubmitTaskRequest,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = first;
    loop {
        match clients[i % 2].submit_task(req.clone()).await {
            Ok(r) => return r.into_inner().run.unwrap().id,
            Err(e) => {
                assert!(Instant::now() < deadline, "submit never accepted: {e:?}");
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// On replica `i`: waiting submits are answered within a second of their
/// run's end, and a cancel kills the agent's process within a second.
/// Returns the worst (wait, cancel) latencies.
async fn check_replica(t: &Topology, i: usize) -> (i64, Duration) {
    let mut c = t.client(i);
    let mut worst_wait = 0;
    for _ in 0..5 {
        let mut req = one("noop", String::new(), 2000);
        req.wait = true;
        req.wait_timeout_ms = 30_000;
        let run = c.submit_task(req).await.unwrap().into_inner().run.unwrap();
        let answered = devcycle::time::now_ms();
        assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
        let ended = devcycle::time::from_timestamp(run.end_time.as_ref()).unwrap();
        worst_wait = worst_wait.max(answered - ended);
    }
    assert!(
        worst_wait < 1000,
        "replica {i}: answered {worst_wait} ms after the run ended"
    );
    let run = c
        .submit_task(one("hang", String::new(), 5000))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    // The agent sleeps for 3000.<the task id's digits> seconds: a command
    // line no other process has.
    let digits: String = run.tasks[0]
        .id
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let marker = format!("3000.{digits}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_with(&format!("sleep {marker}")) == 0 {
        assert!(Instant::now() < deadline, "the agent never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = Instant::now();
    c.cancel_run(pb::CancelRunRequest {
        run_id: run.id,
        reason: "topology check".into(),
    })
    .await
    .unwrap();
    while processes_with(&format!("sleep {marker}")) > 0 {
        assert!(
            cancelled.elapsed() < Duration::from_secs(1),
            "replica {i}: the process outlived its cancel by a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (worst_wait, cancelled.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_survives_killed_and_stopped_processes() {
    let started = Instant::now();
    let mut t = Topology::start().await;
    t.apply("examples/agents/noop.yaml");
    for a in ["checkout", "build", "test", "lint", "review", "report"] {
        t.apply(&format!("examples/agents/{a}.yaml"));
    }
    t.apply(
        r#"name: hang
owner: test
version: 1.0.0
runtime:
  process:
    command: /bin/sh
    args: ["-c", "sleep 3000.$(printf %s \"$DEVCYCLE_TASK_ID\" | tr -dc 0-9)"]
capabilities: [test.hang]
"#,
    );
    t.apply(
        r#"name: nap
owner: test
version: 1.0.0
runtime:
  process:
    command: /bin/sh
    args: ["-c", "sleep 0.2; echo {}"]
capabilities: [test.nap]
"#,
    );
    let (s0, s1) = (t.schedulers[0].clone(), t.schedulers[1].clone());
    t.executor("exec-x", &format!("{s1},{s0}"));
    t.executor("exec-y", &format!("{s0},{s1}"));
    t.executor("exec-z", &format!("{s1},{s0}"));
    let before = [check_replica(&t, 0).await, check_replica(&t, 1).await];

    // The workload: through both schedulers, and lifecycle runs through the
    // gateway (which routes to scheduler 0) and directly to scheduler 1.
    let db = sqlx::PgPool::connect(&t.db_url).await.unwrap();
    let accepted: Arc<parking_lot::Mutex<HashSet<String>>> = Default::default();
    let next = Arc::new(AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for s in 0..8 {
        let mut clients = [t.client(0), t.client(1)];
        let (accepted, next) = (Arc::clone(&accepted), Arc::clone(&next));
        submitters.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= TASKS {
                    return;
                }
                let req = if i.is_multiple_of(TASKS / NAPS) {
                    one("nap", format!("topo-{i}"), 1500)
                } else {
                    one("noop", format!("topo-{i}"), 2000)
                };
                let id = submit_task(&mut clients, s, req).await;
                accepted.lock().insert(id);
            }
        }));
    }
    let (mut gw, token) = t.gateway_client().await;
    let mut direct = t.client(1);
    let mut ci_ids = Vec::new();
    for i in 0..CI_RUNS {
        let key = format!("topo-ci-{i}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let id = loop {
            let r = if i % 2 == 0 {
                gw.submit_run(bearer(ci_run(key.clone()), &token)).await
            } else {
                direct.submit_run(ci_run(key.clone())).await
            };
            match r {
                Ok(r) => break r.into_inner().run.unwrap().id,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{e:?}");
                    direct = t.client(0);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        ci_ids.push(id);
    }
    accepted.lock().extend(ci_ids);

    // Mid-run: scheduler 1 and executor x die, executor y stops past its
    // leases (1.5-2 s) and resumes; x comes back as a new process.
    let ended = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM sched_runs WHERE state <> 'running' AND idempotency_key LIKE 'topo-%'",
        )
        .fetch_one(&db)
        .await
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while ended().await < (TASKS / 4) as i64 {
        assert!(Instant::now() < deadline, "the workload does not progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fault = Instant::now();
    t.kill("scheduler-1");
    t.kill("exec-x");
    t.signal("exec-y", "STOP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.executor("exec-x", &format!("{s1},{s0}"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    t.signal("exec-y", "CONT");
    for s in submitters {
        s.await.unwrap();
    }
    let accepted: HashSet<String> = accepted.lock().clone();
    assert_eq!(
        accepted.len(),
        TASKS + CI_RUNS,
        "one run per idempotency key"
    );

    // Every accepted run ends.
    let deadline = Instant::now() + Duration::from_secs(240);
    while ended().await < accepted.len() as i64 {
        assert!(
            Instant::now() < deadline,
            "runs still running: {}",
            accepted.len() as i64 - ended().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = fault.elapsed();
    let states: BTreeMap<String, i64> = sqlx::query_as(
        "SELECT state, count(*) FROM sched_runs WHERE idempotency_key LIKE 'topo-%' GROUP BY state",
    )
    .fetch_all(&db)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let succeeded = states.get("succeeded").copied().unwrap_or(0);
    let failed = states.get("failed").copied().unwrap_or(0);
    assert_eq!(
        succeeded + failed,
        accepted.len() as i64,
        "completed + dead-lettered = accepted: {states:?}"
    );
    let failed_without_dead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sched_runs r WHERE r.state = 'failed' AND r.idempotency_key LIKE 'topo-%' \
         AND NOT EXISTS (SELECT 1 FROM sched_tasks t WHERE t.run_id = r.id AND t.state = 'dead')",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        failed_without_dead, 0,
        "a failed run has a dead-lettered task"
    );
    let twice: Vec<(String, i64)> = sqlx::query_as(
        "SELECT task_id, attempt FROM sched_events \
         WHERE kind IN ('task_succeeded', 'task_failed', 'task_dead') AND attempt > 0 \
         GROUP BY task_id, attempt HAVING count(*) > 1",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(twice.is_empty(), "attempts recorded twice: {twice:?}");
    let attempts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sched_events WHERE kind = 'task_leased' AND run_id IN \
         (SELECT id FROM sched_runs WHERE idempotency_key LIKE 'topo-%')",
    )
    .fetch_one(&db)
    .await
    .unwrap();

    // Kafka: every event of every run, once per id after dedupe, in order.
    let last: HashMap<String, i64> =
        sqlx::query_as("SELECT id, last_seq FROM sched_runs WHERE idempotency_key LIKE 'topo-%'")
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let (received, duplicates) = read_events(&t, &last).await;

    let after = check_replica(&t, 0).await;
    eprintln!(
        "topology: accepted {} (succeeded {succeeded}, failed {failed}), leases {attempts}, \
         all ended {:.1} s after the faults, {:.1} s in all; kafka {received} messages, \
         {duplicates} duplicates; wait answered within {} / {} / {} ms of the run's end, \
         cancel within {:?} / {:?} / {:?} (replica 0, replica 1, survivor)",
        accepted.len(),
        drained.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        before[0].0,
        before[1].0,
        after.0,
        before[0].1,
        before[1].1,
        after.1,
    );
    assert!(
        t.log("exec-x").contains("connected to the scheduler"),
        "the restarted executor joined"
    );
}

/// Reads the run events topic until every run in `last` (id → last
/// sequence) is complete; checks each run's sequences arrive in order once
/// duplicates are dropped by id. Returns (messages read, duplicates).
async fn read_events(t: &Topology, last: &HashMap<String, i64>) -> (usize, usize) {
    let topic = devcycle_scheduler::run_events_topic(&t.config.kafka.topic_prefix);
    let c: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &t.config.kafka.brokers)
        .set("group.id", format!("topology-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[&topic]).unwrap();
    let mut seen = HashSet::new();
    let mut got: HashMap<String, Vec<i64>> = HashMap::new();
    let (mut received, mut duplicates) = (0, 0);
    let mut complete = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while complete < last.len() {
        assert!(
            Instant::now() < deadline,
            "kafka has {complete} of {} runs complete",
            last.len()
        );
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), c.recv()).await else {
            continue;
        };
        received += 1;
        let e = pb::RunEvent::decode(m.payload().unwrap_or_default()).unwrap();
        assert_eq!(m.key(), Some(e.run_id.as_bytes()), "keyed by run id");
        if !seen.insert(e.event_id.clone()) {
            duplicates += 1;
            continue;
        }
        let Some(&want) = last.get(&e.run_id) else {
            continue;
        };
        let seqs = got.entry(e.run_id.clone()).or_default();
        assert_eq!(
            e.sequence,
            seqs.len() as i64 + 1,
            "run {}: events out of order: {seqs:?} then {}",
            e.run_id,
            e.sequence
        );
        seqs.push(e.sequence);
        if e.sequence == want {
            complete += 1;
        }
    }
    (received, duplicates)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sustained load (`scripts/soak.sh --minutes N`): tasks at a fixed rate
/// through both schedulers, an executor killed and restarted every 20 s.
/// Reports accepted, completed, dead and duplicated attempts, and the
/// memory of the long-lived processes over time; after warm-up (the first
/// quarter) their memory must not grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of minutes: scripts/soak.sh runs it"]
async fn soak() {
    let seconds = env_u64("SOAK_SECONDS", 120);
    let rate = env_u64("SOAK_RATE", 200);
    let mut t = Topology::start().await;
    t.apply("examples/agents/noop.yaml");
    t.apply(
        r#"name: nap
owner: test
version: 1.0.0
runtime:
  process:
    command: /bin/sh
    args: ["-c", "sleep 0.2; echo {}"]
capabilities: [test.nap]
"#,
    );
    let (s0, s1) = (t.schedulers[0].clone(), t.schedulers[1].clone());
    let executors = [
        ("exec-x", format!("{s1},{s0}")),
        ("exec-y", format!("{s0},{s1}")),
        ("exec-z", format!("{s1},{s0}")),
    ];
    for (id, to) in &executors {
        t.executor(id, to);
    }
    let db = sqlx::PgPool::connect(&t.db_url).await.unwrap();
    let long_lived = [
        "registry-0",
        "registry-1",
        "scheduler-0",
        "scheduler-1",
        "gateway",
    ];
    let pids: Vec<(&str, u32)> = long_lived
        .iter()
        .map(|n| (*n, t.procs[*n].child.id()))
        .collect();

    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let accepted = Arc::new(AtomicUsize::new(0));
    // Submits `rate` tasks a second, in ticks of 50 ms, to both schedulers.
    let submitter = {
        let clients = [t.client(0), t.client(1)];
        let accepted = Arc::clone(&accepted);
        tokio::spawn(async move {
            let per_tick = (rate / 20).max(1) as usize;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut n = 0usize;
            while Instant::now() < until {
                tick.tick().await;
                let mut calls = tokio::task::JoinSet::new();
                for _ in 0..per_tick {
                    n += 1;
                    let agent = if n.is_multiple_of(20) { "nap" } else { "noop" };
                    let req = one(agent, format!("topo-soak-{n}"), 2000);
                    let mut clients = clients.clone();
                    let first = n % 2;
                    calls.spawn(async move { submit_task(&mut clients, first, req).await });
                }
                let done = calls.join_all().await.len();
                accepted.fetch_add(done, Ordering::Relaxed);
            }
        })
    };
    let counts = || async {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM sched_runs WHERE idempotency_key LIKE 'topo-%' GROUP BY state",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        rows.into_iter().collect::<BTreeMap<String, i64>>()
    };
    let mut samples: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut kills = 0;
    let mut next_kill = start + Duration::from_secs(20);
    eprintln!("soak: {seconds} s at {rate} tasks/s; RSS in MiB of {long_lived:?}");
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if Instant::now() >= next_kill && Instant::now() + Duration::from_secs(5) < until {
            let (id, to) = &executors[kills % executors.len()];
            t.kill(id);
            tokio::time::sleep(Duration::from_secs(1)).await;
            t.executor(id, to);
            kills += 1;
            next_kill += Duration::from_secs(20);
        }
        let rss: Vec<u64> = pids.iter().map(|(_, pid)| rss_kib(*pid)).collect();
        let at = start.elapsed().as_secs();
        let c = counts().await;
        eprintln!(
            "soak: {at:>4} s accepted {:>6} succeeded {:>6} failed {:>3} running {:>5} | RSS {}",
            accepted.load(Ordering::Relaxed),
            c.get("succeeded").unwrap_or(&0),
            c.get("failed").unwrap_or(&0),
            c.get("running").unwrap_or(&0),
            rss.iter()
                .map(|k| format!("{:.1}", *k as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(" ")
        );
        samples.push((at, rss));
    }
    submitter.await.unwrap();
    let accepted = accepted.load(Ordering::Relaxed) as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = counts().await;
        let ended = c.get("succeeded").unwrap_or(&0) + c.get("failed").unwrap_or(&0);
        if ended == accepted && !c.contains_key("running") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "runs did not end: {c:?} of {accepted}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = counts().await;
    let twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT task_id, attempt FROM sched_events \
         WHERE kind IN ('task_succeeded', 'task_failed', 'task_dead') AND attempt > 0 \
         GROUP BY task_id, attempt HAVING count(*) > 1) AS d",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM sched_tasks WHERE state = 'dead'")
        .fetch_one(&db)
        .await
        .unwrap();
    eprintln!(
        "soak: done: accepted {accepted}, succeeded {}, failed {} (dead tasks {dead}), attempts recorded twice {twice}, executor kills {kills}",
        c.get("succeeded").unwrap_or(&0),
        c.get("failed").unwrap_or(&0),
    );
    assert_eq!(twice, 0, "no attempt's outcome is recorded twice");
    assert_eq!(
        c.get("succeeded").unwrap_or(&0) + c.get("failed").unwrap_or(&0),
        accepted
    );
    // Memory after warm-up: the last sample against the largest of the
    // samples at the end of the first quarter, with 10% and 4 MiB for
    // allocator noise.
    let warm = seconds / 4;
    let Some((_, at_warm)) = samples.iter().rev().find(|(at, _)| *at <= warm.max(5)) else {
        return;
    };
    let (_, last) = samples.last().unwrap();
    for (i, (name, _)) in pids.iter().enumerate() {
        let limit = at_warm[i] + at_warm[i] / 10 + 4096;
        assert!(
            last[i] <= limit,
            "{name}: RSS grew after warm-up: {} KiB at {warm} s, {} KiB at the end",
            at_warm[i],
            last[i]
        );
    }
}
