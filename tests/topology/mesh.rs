//! The topology under test: every service as its own process of the real
//! binary, and the requests the tests send through it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{BIN, Proc, free_port, repo, wait_for_port};
use devcycle::config::Config;
use devcycle::identity::{Kind, SpiffeId};
use devcycle::proto::auth::v1 as auth;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient;
use devcycle::tls::{CertificateAuthority, MeshConnector, MeshTls};
use tonic::transport::{Channel, Endpoint};

pub type Client = SchedulerClient<Channel>;

pub const PASSWORD: &str = "a long enough password";

pub struct Topology {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub config_path: PathBuf,
    pub db_url: String,
    pub registries: [String; 2],
    pub schedulers: [String; 2],
    pub gateway: String,
    pub user: Arc<MeshTls>,
    pub procs: HashMap<String, Proc>,
}

impl Topology {
    pub async fn start() -> Self {
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

    pub fn spawn(&mut self, name: &str, args: &[&str], env: &[(&str, &str)]) {
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
    pub fn executor(&mut self, id: &str, schedulers: &str) {
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

    pub fn apply(&self, manifest: &str) {
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

    pub fn client(&self, i: usize) -> Client {
        let id = self.config.service_id("scheduler");
        SchedulerClient::new(
            devcycle::client::channel(&self.user, &self.schedulers[i], id).unwrap(),
        )
    }

    pub fn signal(&self, name: &str, sig: &str) {
        self.procs[name].signal(sig);
    }

    pub fn kill(&mut self, name: &str) {
        let mut p = self.procs.remove(name).unwrap();
        p.signal("KILL");
        let _ = p.child.wait();
    }

    /// The gateway's Scheduler, as the admin.
    pub async fn gateway_client(&self) -> (Client, String) {
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

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

pub fn one(agent: &str, key: String, heartbeat_ms: u64) -> pb::SubmitTaskRequest {
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

pub fn ci_run(key: String) -> pb::SubmitRunRequest {
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

pub fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Submits through `first`, and on failure through the other replica, with
/// the same idempotency key: a submit is accepted exactly once.
pub async fn submit_task(
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

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
