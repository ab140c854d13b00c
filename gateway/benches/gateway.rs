//! What the gateway adds to a call: the same unary RPC (registry GetAgent)
//! made directly over mTLS and through the gateway (TLS, JWT verification,
//! revocation check, RBAC, rate limits, the proxy hop), one at a time for
//! latency, then with many in flight for requests per second.
//!
//!   cargo bench -p devcycle-gateway --bench gateway
//!   DEVCYCLE_BENCH_REDIS_URL=redis://127.0.0.1:6379 cargo bench -p devcycle-gateway --bench gateway

use std::sync::Arc;
use std::time::{Duration, Instant};

use devcycle::identity::Kind;
use devcycle::proto::auth::v1 as auth;
use devcycle::proto::registry::v1 as pb;
use devcycle::proto::registry::v1::agent_registry_client::AgentRegistryClient;
use devcycle::testkit::{TRUST_DOMAIN, TestPki};
use devcycle::tls::{CertificateAuthority, MeshConnector, MeshTls};
use devcycle_gateway::cache::{Cache, MemoryCache, RedisCache};
use devcycle_gateway::jwt::Signer;
use devcycle_gateway::tokens::Lifetimes;
use devcycle_gateway::{Options, Route, rate};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

const SEQUENTIAL: usize = 20_000;
const WARMUP: usize = 2_000;
const CONCURRENCY: usize = 64;
const LOAD_SECONDS: u64 = 5;
const PASSWORD: &str = "benchmark password";

fn identity(ca: &CertificateAuthority, kind: Kind, name: &str) -> Arc<MeshTls> {
    let id = TestPki::id(kind, name);
    let hosts = ["127.0.0.1".to_owned()];
    let issued = ca.issue(&id, &hosts, Duration::from_secs(3600)).unwrap();
    MeshTls::from_pem(
        ca.cert_pem(),
        &issued.cert_pem,
        &issued.key_pem,
        TRUST_DOMAIN,
    )
    .unwrap()
}

type Client = AgentRegistryClient<InterceptedService<Channel, Auth>>;

#[derive(Clone)]
struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);
impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

async fn sequential(c: &mut Client) -> Vec<Duration> {
    for _ in 0..WARMUP {
        c.get_agent(pb::GetAgentRequest {
            name: "bench".into(),
        })
        .await
        .unwrap();
    }
    let mut lat = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        c.get_agent(pb::GetAgentRequest {
            name: "bench".into(),
        })
        .await
        .unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

async fn load(c: Client) -> f64 {
    let stop = Instant::now() + Duration::from_secs(LOAD_SECONDS);
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                c.get_agent(pb::GetAgentRequest {
                    name: "bench".into(),
                })
                .await
                .unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / LOAD_SECONDS as f64
}

fn pct(v: &[Duration], p: f64) -> f64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e6
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let TestPki { ca } = TestPki::new();
    let ca = Arc::new(ca);
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("bench.db").display());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = devcycle_registry::start(
        devcycle_registry::Options {
            listener,
            tls: identity(&ca, Kind::Service, "registry"),
            db: devcycle::db::Database::open(&db_url).await.unwrap(),
            heartbeat_interval: Duration::from_secs(5),
            missed_heartbeats: 3,
            gateway: TestPki::id(Kind::Service, "gateway"),
            health_grace: Duration::ZERO,
            drain: Duration::from_secs(1),
        },
        stop.clone(),
    )
    .await
    .unwrap();
    let user = identity(&ca, Kind::User, "bench");
    let direct_ch = devcycle::client::channel(
        &user,
        &registry.addr.to_string(),
        TestPki::id(Kind::Service, "registry"),
    )
    .unwrap();
    let mut direct: Client = AgentRegistryClient::with_interceptor(direct_ch, Auth(None));
    direct
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: "bench".into(),
                owner: "bench".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    let redis = std::env::var("DEVCYCLE_BENCH_REDIS_URL").ok();
    let cache: Arc<dyn Cache> = match &redis {
        Some(url) => {
            let c = RedisCache::new(url, &format!("dcbench:{}:", uuid::Uuid::new_v4().simple()))
                .unwrap();
            assert!(
                c.wait_connected(Duration::from_secs(5)).await,
                "Redis at {url}"
            );
            Arc::new(c)
        }
        None => Arc::new(MemoryCache::default()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = devcycle_gateway::start(
        Options {
            listener,
            tls: identity(&ca, Kind::Service, "gateway"),
            db: devcycle::db::Database::open(&db_url).await.unwrap(),
            cache,
            bus: Arc::new(devcycle::bus::InProcessBus::default()),
            audit_topic: "bench.audit".into(),
            signer: Arc::new(Signer::generate().unwrap()),
            issuer: "https://devcycle.bench".into(),
            audience: "devcycle".into(),
            life: Lifetimes {
                access_s: 3600,
                idle_s: 3600,
                absolute_s: 7200,
            },
            external: Vec::new(),
            ca: None,
            routes: vec![Route {
                service: "devcycle.registry.v1.AgentRegistry",
                addr: registry.addr.to_string(),
                id: TestPki::id(Kind::Service, "registry"),
            }],
            origins: Vec::new(),
            max_message_bytes: 4 << 20,
            per_principal: rate(1e6, 1_000_000),
            per_address: rate(1e6, 1_000_000),
            max_concurrent_streams: 256,
            admin_password: Some(PASSWORD.into()),
            revocation_sync: Duration::from_millis(250),
            drain: Duration::from_secs(1),
        },
        stop.clone(),
    )
    .await
    .unwrap();
    let tls = devcycle::tls::public_client_config(ca.cert_pem()).unwrap();
    let gw_ch = Endpoint::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .tcp_nodelay(true)
        .connect_with_connector_lazy(MeshConnector::with_config(tls));
    let token = auth::auth_client::AuthClient::new(gw_ch.clone())
        .login(auth::LoginRequest {
            username: "admin".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let bearer = Auth(Some(format!("Bearer {token}").parse().unwrap()));
    let mut through: Client = AgentRegistryClient::with_interceptor(gw_ch, bearer);

    let d = sequential(&mut direct).await;
    let g = sequential(&mut through).await;
    let cache_kind = if redis.is_some() {
        "redis"
    } else {
        "in-process"
    };
    println!("gateway bench: registry GetAgent, {SEQUENTIAL} sequential calls, cache {cache_kind}");
    println!(
        "  direct (mTLS)    p50 {:7.1} µs  p90 {:7.1} µs  p99 {:7.1} µs",
        pct(&d, 0.5),
        pct(&d, 0.9),
        pct(&d, 0.99)
    );
    println!(
        "  through gateway  p50 {:7.1} µs  p90 {:7.1} µs  p99 {:7.1} µs",
        pct(&g, 0.5),
        pct(&g, 0.9),
        pct(&g, 0.99)
    );
    println!("  added at p50     {:7.1} µs", pct(&g, 0.5) - pct(&d, 0.5));
    let direct_rps = load(direct).await;
    let gw_rps = load(through).await;
    println!(
        "  load, {CONCURRENCY} in flight for {LOAD_SECONDS} s: direct {direct_rps:.0} req/s, through gateway {gw_rps:.0} req/s"
    );
    stop.cancel();
}
