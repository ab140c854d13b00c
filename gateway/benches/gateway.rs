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

async fn call(c: &mut Client) -> Duration {
    let t = Instant::now();
    c.get_agent(pb::GetAgentRequest {
        name: "bench".into(),
    })
    .await
    .unwrap();
    t.elapsed()
}

/// Alternates direct and gateway calls so both see the same machine (this
/// one's speed drifts), and returns both series plus the per-pair extra.
async fn interleaved(direct: &mut Client, through: &mut Client) -> [Vec<f64>; 3] {
    for _ in 0..WARMUP {
        call(direct).await;
        call(through).await;
    }
    let (mut d, mut g, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SEQUENTIAL {
        let a = call(direct).await.as_secs_f64() * 1e6;
        let b = call(through).await.as_secs_f64() * 1e6;
        d.push(a);
        g.push(b);
        added.push(b - a);
    }
    for v in [&mut d, &mut g, &mut added] {
        v.sort_by(f64::total_cmp);
    }
    [d, g, added]
}

/// Health checks, alternating: the registry's over mTLS, and the gateway's
/// own (TLS, the front door's checks, no proxy hop).
async fn health(direct: Channel, gateway: Channel, token: &str) -> [Vec<f64>; 2] {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let (mut d, mut g) = (HealthClient::new(direct), HealthClient::new(gateway));
    let mut out = [Vec::new(), Vec::new()];
    for i in 0..(WARMUP + SEQUENTIAL) {
        let t = Instant::now();
        d.check(HealthCheckRequest::default()).await.unwrap();
        let a = t.elapsed().as_secs_f64() * 1e6;
        let mut req = tonic::Request::new(HealthCheckRequest::default());
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let t = Instant::now();
        g.check(req).await.unwrap();
        let b = t.elapsed().as_secs_f64() * 1e6;
        if i >= WARMUP {
            out[0].push(a);
            out[1].push(b);
        }
    }
    for v in &mut out {
        v.sort_by(f64::total_cmp);
    }
    out
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

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
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
            endpoint: devcycle::server::Endpoint {
                listener,
                tls: identity(&ca, Kind::Service, "registry"),
                gateway: TestPki::id(Kind::Service, "gateway"),
                health_grace: Duration::ZERO,
                drain: Duration::from_secs(1),
            },
            db: devcycle::db::Database::open(&db_url).await.unwrap(),
            heartbeat_interval: Duration::from_secs(5),
            missed_heartbeats: 3,
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
            in_process_calls: std::env::var("DEVCYCLE_BENCH_GATEWAY_HOP").as_deref()
                != Ok("network"),
            origins: Vec::new(),
            max_message_bytes: 4 << 20,
            per_principal: rate(1e6, 1_000_000),
            per_address: rate(1e6, 1_000_000),
            max_concurrent_streams: 256,
            admin_password: Some(PASSWORD.into()),
            revocation_sync: Duration::from_millis(250),
            rate_sync: Duration::from_millis(20),
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
    let mut through: Client = AgentRegistryClient::with_interceptor(gw_ch.clone(), bearer);

    let direct_ch = devcycle::client::channel(
        &user,
        &registry.addr.to_string(),
        TestPki::id(Kind::Service, "registry"),
    )
    .unwrap();
    let [hd, hg] = health(direct_ch, gw_ch, &token).await;
    let [d, g, added] = interleaved(&mut direct, &mut through).await;
    let cache_kind = if redis.is_some() {
        "redis"
    } else {
        "in-process"
    };
    println!(
        "gateway bench: registry GetAgent, {SEQUENTIAL} calls each, alternating, cache {cache_kind}"
    );
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
    println!(
        "  added per call   p50 {:7.1} µs  (median of gateway minus direct, call by call)",
        pct(&added, 0.5)
    );
    println!(
        "  health check: registry (mTLS) p50 {:6.1} µs, gateway's own (TLS + checks, no hop) p50 {:6.1} µs",
        pct(&hd, 0.5),
        pct(&hg, 0.5)
    );
    let direct_rps = load(direct).await;
    let gw_rps = load(through).await;
    println!(
        "  load, {CONCURRENCY} in flight for {LOAD_SECONDS} s: direct {direct_rps:.0} req/s, through gateway {gw_rps:.0} req/s"
    );
    stop.cancel();
}
