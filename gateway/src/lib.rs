//! The gateway: the mesh's one front door. gRPC and grpc-web clients come in
//! with JWTs; the mesh inside speaks only mTLS. See docs/design.md, "Gateway".

pub mod audit;
pub mod auth;
pub mod cache;
pub mod error;
pub mod front;
pub mod json;
pub mod jwks;
pub mod jwt;
pub mod limits;
pub mod password;
pub mod principal;
pub mod proxy;
pub mod rbac;
pub mod revocation;
mod serve;
pub mod store;
pub mod tokens;
pub mod totp;
pub mod verified;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use devcycle::bus::EventBus;
use devcycle::config::Config;
use devcycle::db::Database;
use devcycle::identity::SpiffeId;
use devcycle::proto::auth::v1 as pb;
use devcycle::tls::{CertificateAuthority, MeshTls};
use http::HeaderValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::front::{Front, FrontConfig, FrontService, Rate};
use crate::jwks::ExternalIssuer;
use crate::jwt::{Signer, Verifier};
use crate::limits::Limiter;
use crate::revocation::Revocations;
use crate::store::{Store, UserRow};
use crate::tokens::{Lifetimes, Minter};
use tonic_health::ServingStatus;

/// What the gateway reports on the health port.
const GATEWAY_HEALTH: &str = "devcycle.auth.v1.Auth";

/// A service the gateway routes to: `pkg.Service`, its address, and the
/// identity it must present.
#[derive(Debug, Clone)]
pub struct Route {
    pub service: &'static str,
    pub addr: String,
    pub id: SpiffeId,
}

/// Everything the gateway needs; `from_config` builds it for binaries, tests
/// build it directly.
pub struct Options {
    pub listener: TcpListener,
    /// `svc/gateway`: the public certificate and the mTLS client identity.
    pub tls: Arc<MeshTls>,
    pub db: Database,
    pub cache: Arc<dyn Cache>,
    pub bus: Arc<dyn EventBus>,
    pub audit_topic: String,
    pub signer: Arc<Signer>,
    pub issuer: String,
    pub audience: String,
    pub life: Lifetimes,
    pub external: Vec<Arc<ExternalIssuer>>,
    pub ca: Option<Arc<CertificateAuthority>>,
    pub routes: Vec<Route>,
    /// Routes to services in this process are called in memory
    /// (`devcycle::inproc`).
    pub in_process_calls: bool,
    pub origins: Vec<String>,
    pub max_message_bytes: usize,
    pub per_principal: Rate,
    pub per_address: Rate,
    pub max_concurrent_streams: u32,
    /// Creates user `admin` with this password when there are no users.
    pub admin_password: Option<String>,
    pub revocation_sync: Duration,
    /// How often local rate-limit decisions are shared with other replicas.
    pub rate_sync: Duration,
    pub drain: Duration,
}

/// A running gateway; `extra` is the bootstrap token, set when there are
/// no users and no admin password: it creates the first admin once
/// (`devcycle login --bootstrap`).
pub type Running = devcycle::server::Running<Option<String>>;

pub fn rate(per_second: f64, burst: u32) -> Rate {
    Rate {
        interval_us: (1e6 / per_second).max(1.0) as i64,
        burst,
    }
}

impl Options {
    pub async fn from_config(
        config: &Config,
        listener: TcpListener,
        bus: Arc<dyn EventBus>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let g = &config.gateway;
        let tls = devcycle::mesh::identity(config, &config.service_id("gateway"), shutdown)?;
        let url = if !g.database_url.is_empty() {
            g.database_url.clone()
        } else {
            config.database_url_for("")
        };
        let db = Database::open(&url)
            .await
            .with_context(|| format!("gateway database {url}"))?;
        let cache: Arc<dyn Cache> = if g.redis_url.is_empty() {
            Arc::new(cache::MemoryCache::default())
        } else {
            let c = cache::RedisCache::new(&g.redis_url, &g.redis_prefix)?;
            if !c.wait_connected(Duration::from_secs(5)).await {
                tracing::warn!(url = %g.redis_url, "Redis unreachable; logins fail until it is back");
            }
            Arc::new(c)
        };
        let key_path = if g.signing_key.is_empty() {
            config.data_dir.join("gateway").join("signing-key.p8")
        } else {
            PathBuf::from(&g.signing_key)
        };
        let signer = Arc::new(
            Signer::load_or_create(&key_path)
                .with_context(|| format!("gateway.signing_key {}", key_path.display()))?,
        );
        let ca = if !g.ca_dir.is_empty() {
            Some(Arc::new(CertificateAuthority::load(&PathBuf::from(
                &g.ca_dir,
            ))?))
        } else if config.tls.dev_ca {
            Some(Arc::new(CertificateAuthority::load(&config.tls_dir())?))
        } else {
            None
        };
        let external = g
            .external_issuers
            .iter()
            .map(|e| ExternalIssuer::new(e, Duration::from_secs(30)))
            .collect::<anyhow::Result<_>>()?;
        let mut routes = Vec::new();
        for (service, addr, name) in [
            (
                "devcycle.registry.v1.AgentRegistry",
                &g.registry,
                "registry",
            ),
            ("devcycle.scheduler.v1.Scheduler", &g.scheduler, "scheduler"),
            // The scheduler serves messages: triggers start runs.
            ("devcycle.messages.v1.Messages", &g.scheduler, "scheduler"),
        ] {
            if !addr.is_empty() {
                routes.push(Route {
                    service,
                    addr: addr.clone(),
                    id: config.service_id(name),
                });
            }
        }
        Ok(Self {
            listener,
            tls,
            db,
            cache,
            bus,
            audit_topic: format!("{}.audit", config.kafka.topic_prefix),
            signer,
            issuer: g.issuer.clone(),
            audience: g.audience.clone(),
            life: Lifetimes {
                access_s: whole_secs(g.access_ttl),
                idle_s: whole_secs(g.session_idle),
                absolute_s: whole_secs(g.session_absolute),
            },
            external,
            ca,
            routes,
            in_process_calls: g.in_process_calls,
            origins: g.allowed_origins.clone(),
            max_message_bytes: g.max_message_bytes as usize,
            per_principal: rate(g.rate_per_principal, g.burst_per_principal),
            per_address: rate(g.rate_per_address, g.burst_per_address),
            max_concurrent_streams: g.max_concurrent_streams,
            admin_password: Some(g.admin_password.clone()).filter(|p| !p.is_empty()),
            revocation_sync: Duration::from_millis(250),
            rate_sync: Duration::from_millis(20),
            drain: config.shutdown.drain,
        })
    }
}

/// Token lifetimes are whole seconds (the configuration refuses finer).
fn whole_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A JWK as RFC 7517 JSON: empty members left out.
fn jwk_json(k: &pb::Jwk) -> serde_json::Map<String, serde_json::Value> {
    [
        ("kty", &k.kty),
        ("crv", &k.crv),
        ("kid", &k.kid),
        ("alg", &k.alg),
        ("x", &k.x),
        ("y", &k.y),
        ("use", &k.r#use),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v.as_str())))
    .collect()
}

/// Creates the first admin, or the one-time token that may.
async fn bootstrap(
    store: &Store,
    admin_password: Option<String>,
) -> anyhow::Result<Option<String>> {
    if store.user_count().await? > 0 {
        return Ok(None);
    }
    let Some(password) = admin_password else {
        // The prefix keeps it from ever looking like a command-line flag.
        return Ok(Some(format!(
            "dcb_{}{}",
            tokens::random_id(),
            tokens::random_id()
        )));
    };
    anyhow::ensure!(
        password.chars().count() >= password::MIN_LEN,
        "gateway.admin_password: at least {} characters",
        password::MIN_LEN
    );
    let row = UserRow {
        name: "admin".into(),
        password_hash: password::hash(password).await?,
        roles: devcycle::authz::Roles::ADMIN,
        totp_secret: None,
        totp_pending: None,
        create_ms: devcycle::time::now_ms(),
    };
    match store.create_user(&row).await {
        Ok(()) | Err(store::StoreError::Exists) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn start(opts: Options, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let addr = opts.listener.local_addr()?;
    let store = Store::new(opts.db.clone());
    let bootstrap_token = bootstrap(&store, opts.admin_password.clone()).await?;
    let revocations = Arc::new(Revocations::default());
    tokio::spawn(Arc::clone(&revocations).sync(
        Arc::clone(&opts.cache),
        opts.revocation_sync,
        shutdown.clone(),
    ));
    let limits = Limiter::new(&opts.cache);
    tokio::spawn(Arc::clone(&limits).sync(opts.rate_sync, shutdown.clone()));
    for issuer in &opts.external {
        tokio::spawn(Arc::clone(issuer).refresh_loop(shutdown.clone()));
    }
    let mut verifier = Verifier::new(
        opts.issuer.clone(),
        opts.audience.clone(),
        vec![opts.signer.public().clone()],
        opts.external.clone(),
    );
    verifier.max_access_s = opts.life.access_s;
    verifier.max_refresh_s = opts.life.absolute_s;
    let verifier = Arc::new(verifier);
    let audit_stop = CancellationToken::new();
    let (recorder, audit_task) = audit::Recorder::start(
        store.clone(),
        Arc::clone(&opts.bus),
        opts.audit_topic.clone(),
        audit_stop.clone(),
    );
    let auth = auth::AuthService {
        store: store.clone(),
        cache: Arc::clone(&opts.cache),
        revocations: Arc::clone(&revocations),
        minter: Minter {
            signer: Arc::clone(&opts.signer),
            issuer: opts.issuer.clone(),
            audience: opts.audience.clone(),
            life: opts.life,
        },
        verifier: Arc::clone(&verifier),
        trust_domain: opts.tls.trust_domain().to_owned(),
        ca: opts.ca.clone(),
        bootstrap: parking_lot::Mutex::new(bootstrap_token.clone()),
    };
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::auth_server::AuthServer<auth::AuthService>>()
        .await;
    devcycle::health::report(GATEWAY_HEALTH, ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(devcycle::proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(devcycle::proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let local = tonic::service::Routes::new(pb::auth_server::AuthServer::new(auth))
        .add_service(pb::audit_server::AuditServer::new(audit::AuditService {
            store: store.clone(),
        }))
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(reflection_alpha);
    let mut routes = proxy::Routes::new(
        local,
        vec![
            "/devcycle.auth.v1.Auth/",
            "/devcycle.auth.v1.Audit/",
            "/grpc.health.v1.Health/",
            "/grpc.reflection.v1.ServerReflection/",
            "/grpc.reflection.v1alpha.ServerReflection/",
        ],
    );
    for r in &opts.routes {
        let upstream =
            proxy::Upstream::new(&opts.tls, &r.addr, r.id.clone(), opts.in_process_calls);
        routes = routes.remote(r.service, upstream);
    }
    let origins = opts
        .origins
        .iter()
        .map(|o| HeaderValue::from_str(o))
        .collect::<Result<Vec<_>, _>>()
        .context("gateway.allowed_origins")?;
    let front = Front::new(
        FrontConfig {
            origins: origins.clone(),
            max_message_bytes: opts.max_message_bytes,
            per_principal: opts.per_principal,
            per_address: opts.per_address,
        },
        verifier,
        revocations,
        limits,
        recorder,
        routes,
    );
    let jwks = serde_json::json!({
        "keys": [serde_json::to_value(jwk_json(&opts.signer.public().to_jwk()))?]
    });
    let listener = serve::Listener {
        listener: opts.listener,
        tls: opts.tls.public_server_config(&[b"h2", b"http/1.1"]),
        origins,
        max_concurrent_streams: opts.max_concurrent_streams,
        drain: opts.drain,
        jwks: jwks.to_string().into(),
    };
    tracing::info!(%addr, "gateway serving gRPC and grpc-web");
    let task = tokio::spawn(async move {
        let stopping = shutdown.clone();
        let health_task = tokio::spawn(async move {
            stopping.cancelled().await;
            health
                .set_not_serving::<pb::auth_server::AuthServer<auth::AuthService>>()
                .await;
            devcycle::health::report("", ServingStatus::NotServing).await;
            devcycle::health::report(GATEWAY_HEALTH, ServingStatus::NotServing).await;
        });
        serve::serve(listener, FrontService(front), shutdown).await;
        health_task.abort();
        audit_stop.cancel();
        let _ = audit_task.await;
        tracing::info!("gateway stopped");
        Ok(())
    });
    Ok(Running {
        addr,
        task,
        extra: bootstrap_token,
    })
}

/// Serves the gateway as configured until `shutdown`.
pub async fn serve(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.gateway.listen)
        .await
        .with_context(|| format!("gateway.listen: cannot listen on {}", config.gateway.listen))?;
    let bus = if config.kafka.brokers.is_empty() {
        Arc::new(devcycle::bus::InProcessBus::default()) as Arc<dyn EventBus>
    } else {
        Arc::new(devcycle::bus::KafkaBus::new(&config.kafka.brokers, &[])?)
    };
    let opts = Options::from_config(config, listener, bus, &shutdown).await?;
    let running = start(opts, shutdown).await?;
    if let Some(token) = &running.extra {
        eprintln!(
            "no users yet: create the first admin with `devcycle login --username admin --bootstrap {token}`"
        );
    }
    running.wait().await
}
