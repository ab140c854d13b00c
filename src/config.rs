//! Layered configuration: defaults → TOML file → `DEVCYCLE_*` environment
//! (`__` nests: `DEVCYCLE_REGISTRY__LISTEN`) → command-line flags →
//! [`Config::validate`]. Every error names the key at fault.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::authz::Role;
use crate::identity::{SpiffeId, valid_trust_domain};
use crate::telemetry::LogFormat;
use crate::tls::IdentityFiles;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Holds the SQLite database and, in development, the CA and certificates.
    pub data_dir: PathBuf,
    /// The SPIFFE trust domain of the mesh.
    pub trust_domain: String,
    /// Default database of every service: `sqlite://...` or `postgres://...`.
    /// Empty means `sqlite://<data_dir>/devcycle.db`.
    pub database_url: String,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub tls: TlsConfig,
    pub shutdown: ShutdownConfig,
    pub registry: RegistryConfig,
    pub scheduler: SchedulerConfig,
    pub executor: ExecutorConfig,
    pub gateway: GatewayConfig,
    pub kafka: KafkaConfig,
    pub client: ClientConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `RUST_LOG` syntax.
    pub filter: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics` is served; empty disables it.
    pub listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Directory of `ca.pem` and `<kind>-<name>.pem|.key`; empty means
    /// `<data_dir>/pki`.
    pub dir: String,
    /// Create a development CA and certificates in `dir` when missing.
    pub dev_ca: bool,
    /// How often certificate files are checked for changes.
    pub reload_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Health reports NOT_SERVING this long before the listener closes.
    pub health_grace_ms: u64,
    /// In-flight calls may run this long after the listener closes.
    pub drain_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    pub listen: SocketAddr,
    /// Overrides `database_url` for the registry.
    pub database_url: String,
    /// How often workers heartbeat.
    pub heartbeat_interval_ms: u32,
    /// A worker is DOWN after this many missed heartbeats.
    pub missed_heartbeats: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    pub listen: SocketAddr,
    /// Overrides `database_url` for the scheduler.
    pub database_url: String,
    /// host:port of the registry, to resolve agents.
    pub registry: String,
    /// How often workers heartbeat their leases.
    pub heartbeat_interval_ms: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// The control plane's address.
    pub listen: SocketAddr,
    /// This worker's id: its certificate is `worker/<id>`.
    pub worker_id: String,
    /// host:port of the scheduler, or of several replicas separated by
    /// commas (the worker moves to the next when its stream breaks); and of
    /// the registry.
    pub scheduler: String,
    pub registry: String,
    /// Tasks run at once.
    pub slots: u32,
    /// Agents served; empty means any.
    pub agents: Vec<String>,
    /// Where relative agent commands are found (e.g. `bin/lint.py`).
    pub agent_dir: String,
    /// Host directories agents may read (bound read-only in the sandbox),
    /// e.g. where local repositories live.
    pub read_only: Vec<String>,
    /// Task workspaces; empty means `<data_dir>/work`.
    pub work_dir: String,
    /// The bubblewrap binary; empty disables namespaces.
    pub bwrap: String,
    /// Use a cgroup per task when the hierarchy is writable.
    pub cgroups: bool,
    /// Running tasks may finish this long after SIGTERM.
    pub drain_ms: u64,
    /// Defaults for agents that set no limits.
    pub limits: LimitsConfig,
    /// Executor environment variables agents may receive, by name: `${env:NAME}`
    /// in a process agent's environment, `token_env` of an http agent.
    /// Anything else is refused when the task runs.
    pub secrets: Vec<String>,
    /// Files an http agent may send as its bearer token (`token_file`).
    pub secret_files: Vec<String>,
    /// The http runtime may use plain `http://` URLs.
    pub http_allow_plaintext: bool,
    /// The http runtime may reach loopback, private, link-local (cloud
    /// metadata) and other non-public addresses.
    pub http_allow_private: bool,
    /// Run process agents without bubblewrap when it does not work here;
    /// they can then read whatever the executor's user can.
    pub allow_unsandboxed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub wall_time_ms: u64,
    pub memory_bytes: u64,
    pub cpu_time_ms: u64,
    pub max_processes: u32,
    pub max_open_files: u32,
    pub max_output_bytes: u64,
}

/// The front door: gRPC and grpc-web, tokens, sessions, RBAC, rate limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Overrides `database_url` for users and the audit log.
    pub database_url: String,
    /// Sessions, revocations and rate limits: `redis://host:port`; empty
    /// means in-process (one gateway only).
    pub redis_url: String,
    /// Prefix of every Redis key.
    pub redis_prefix: String,
    /// host:port of the services the gateway routes to; empty: not routed.
    pub registry: String,
    pub scheduler: String,
    pub executor: String,
    /// Browser origins allowed to call over grpc-web, e.g.
    /// `https://ci.example.com`. Exact matches; `null` and `*` are refused.
    pub allowed_origins: Vec<String>,
    /// `iss` and `aud` of the tokens it issues.
    pub issuer: String,
    pub audience: String,
    /// Ed25519 PKCS#8 key signing tokens, shared by every replica; empty
    /// means `<data_dir>/gateway/signing-key.p8`, created when missing.
    pub signing_key: String,
    /// Directory of the CA (`ca.pem`, `ca.key`) that signs client
    /// certificates (IssueCertificate); empty means the TLS directory when
    /// `tls.dev_ca` is set, else no certificates are issued.
    pub ca_dir: String,
    pub access_ttl_s: u32,
    pub session_idle_s: u32,
    pub session_absolute_s: u32,
    /// Requests per second and burst, per principal and per client address.
    pub rate_per_principal: f64,
    pub burst_per_principal: u32,
    pub rate_per_address: f64,
    pub burst_per_address: u32,
    /// Largest request message, bytes.
    pub max_message_bytes: u32,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Creates this admin at start-up when there are no users; prefer the
    /// environment (`DEVCYCLE_GATEWAY__ADMIN_PASSWORD`).
    pub admin_password: String,
    /// Other token issuers trusted for access tokens.
    pub external_issuers: Vec<ExternalIssuerConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalIssuerConfig {
    pub issuer: String,
    /// `https://`; `http://` only to a loopback host.
    pub jwks_url: String,
    pub audience: String,
    /// Prepended to `sub`, keeping external users apart from local ones.
    pub subject_prefix: String,
    /// Longest interval between JWKS refreshes, seconds; a shorter
    /// `Cache-Control: max-age` from the issuer wins.
    pub jwks_refresh_s: u32,
    /// The token claim (a string or an array of strings) whose values are
    /// mapped to roles, e.g. `groups`.
    pub roles_claim: String,
    /// Claim value → devcycle roles. Values not listed grant nothing; the
    /// issuer's own role names are never taken as-is.
    pub role_map: std::collections::BTreeMap<String, Vec<String>>,
}

/// `https://`, or `http://` to a loopback host (an issuer on the same
/// machine): keys fetched any other way can be replaced on the way.
pub fn jwks_url_is_protected(url: &str) -> bool {
    if let Some(rest) = url.strip_prefix("https://") {
        return !rest.is_empty() && !rest.starts_with('/');
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Default for ExternalIssuerConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            jwks_url: String::new(),
            audience: String::new(),
            subject_prefix: String::new(),
            jwks_refresh_s: 300,
            roles_claim: "groups".into(),
            role_map: Default::default(),
        }
    }
}

/// The event bus. Without brokers, events stay in the process (`devcycle up`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated host:port list; empty means the in-process bus.
    pub brokers: String,
    /// Topics are `<prefix>.<family>`, e.g. `devcycle.run-events`.
    pub topic_prefix: String,
}

/// Where client commands find the mesh, and as whom they speak.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// host:port of the gateway, which client commands use by default.
    pub gateway: String,
    /// Talk to the services directly over mTLS with the certificate of
    /// `identity` instead of through the gateway with a login.
    pub direct: bool,
    /// host:port of the registry.
    pub registry: String,
    /// host:port of the scheduler.
    pub scheduler: String,
    /// host:port of an executor's control plane.
    pub executor: String,
    /// Identity whose certificate the CLI presents, `<kind>/<name>`.
    pub identity: String,
}

impl Default for Config {
    fn default() -> Self {
        let data_dir = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".devcycle"))
            .unwrap_or_else(|| PathBuf::from(".devcycle"));
        Self {
            data_dir,
            trust_domain: "devcycle.local".into(),
            database_url: String::new(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            tls: TlsConfig::default(),
            shutdown: ShutdownConfig::default(),
            registry: RegistryConfig::default(),
            scheduler: SchedulerConfig::default(),
            executor: ExecutorConfig::default(),
            gateway: GatewayConfig::default(),
            kafka: KafkaConfig::default(),
            client: ClientConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: "info".into(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            dev_ca: false,
            reload_interval_ms: 5_000,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            health_grace_ms: 0,
            drain_ms: 10_000,
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            database_url: String::new(),
            heartbeat_interval_ms: 5_000,
            missed_heartbeats: 3,
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7402)),
            database_url: String::new(),
            registry: "127.0.0.1:7401".into(),
            heartbeat_interval_ms: 5_000,
        }
    }
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7403)),
            worker_id: "local".into(),
            scheduler: "127.0.0.1:7402".into(),
            registry: "127.0.0.1:7401".into(),
            slots: 4,
            agents: Vec::new(),
            agent_dir: "examples/agents".into(),
            read_only: Vec::new(),
            work_dir: String::new(),
            bwrap: "bwrap".into(),
            cgroups: true,
            drain_ms: 30_000,
            limits: LimitsConfig::default(),
            secrets: Vec::new(),
            secret_files: Vec::new(),
            http_allow_plaintext: false,
            http_allow_private: false,
            allow_unsandboxed: false,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            wall_time_ms: 600_000,
            memory_bytes: 1 << 30,
            cpu_time_ms: 600_000,
            max_processes: 256,
            max_open_files: 1024,
            max_output_bytes: 1 << 20,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            database_url: String::new(),
            redis_url: String::new(),
            redis_prefix: "devcycle:".into(),
            registry: "127.0.0.1:7401".into(),
            scheduler: "127.0.0.1:7402".into(),
            executor: String::new(),
            allowed_origins: Vec::new(),
            issuer: "https://devcycle.local".into(),
            audience: "devcycle".into(),
            signing_key: String::new(),
            ca_dir: String::new(),
            access_ttl_s: 600,
            session_idle_s: 7 * 24 * 3600,
            session_absolute_s: 30 * 24 * 3600,
            rate_per_principal: 200.0,
            burst_per_principal: 400,
            rate_per_address: 500.0,
            burst_per_address: 1000,
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 256,
            admin_password: String::new(),
            external_issuers: Vec::new(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic_prefix: "devcycle".into(),
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            gateway: "127.0.0.1:7400".into(),
            direct: false,
            registry: "127.0.0.1:7401".into(),
            scheduler: "127.0.0.1:7402".into(),
            executor: "127.0.0.1:7403".into(),
            identity: "user/admin".into(),
        }
    }
}

impl GatewayConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for o in &self.allowed_origins {
            let ok = (o.starts_with("https://") || o.starts_with("http://"))
                && !o.ends_with('/')
                && !o.contains('*');
            if !ok {
                return Err(invalid(
                    "gateway.allowed_origins",
                    format!(
                        "{o:?} is not an origin such as https://ci.example.com (no wildcard, no null)"
                    ),
                ));
            }
        }
        if !(self.redis_url.is_empty()
            || self.redis_url.starts_with("redis://")
            || self.redis_url.starts_with("rediss://"))
        {
            return Err(invalid(
                "gateway.redis_url",
                "must start with redis:// or rediss://",
            ));
        }
        if !(60..=3600).contains(&self.access_ttl_s) {
            return Err(invalid(
                "gateway.access_ttl_s",
                "must be between 60 and 3600",
            ));
        }
        if self.session_idle_s < self.access_ttl_s || self.session_absolute_s < self.session_idle_s
        {
            return Err(invalid(
                "gateway.session_idle_s",
                "access_ttl_s <= session_idle_s <= session_absolute_s must hold",
            ));
        }
        if !(self.rate_per_principal > 0.0 && self.rate_per_address > 0.0)
            || self.burst_per_principal == 0
            || self.burst_per_address == 0
        {
            return Err(invalid(
                "gateway.rate_per_principal",
                "rates and bursts must be positive",
            ));
        }
        if self.max_message_bytes < 1024 {
            return Err(invalid(
                "gateway.max_message_bytes",
                "must be at least 1024",
            ));
        }
        if self.max_concurrent_streams == 0 {
            return Err(invalid(
                "gateway.max_concurrent_streams",
                "must be positive",
            ));
        }
        for (i, e) in self.external_issuers.iter().enumerate() {
            if e.issuer.is_empty() || e.audience.is_empty() || e.subject_prefix.is_empty() {
                return Err(invalid(
                    "gateway.external_issuers",
                    format!(
                        "entry {i}: issuer, audience, subject_prefix (keeping its users apart from local ones) and jwks_url are required"
                    ),
                ));
            }
            if !jwks_url_is_protected(&e.jwks_url) {
                return Err(invalid(
                    "gateway.external_issuers",
                    format!(
                        "entry {i}: jwks_url {:?} must be https:// (http:// only to a loopback host)",
                        e.jwks_url
                    ),
                ));
            }
            if e.roles_claim.is_empty() || e.jwks_refresh_s == 0 {
                return Err(invalid(
                    "gateway.external_issuers",
                    format!("entry {i}: roles_claim and a positive jwks_refresh_s are required"),
                ));
            }
            for (value, roles) in &e.role_map {
                if let Some(r) = roles
                    .iter()
                    .find(|r| !Role::HUMAN.iter().any(|h| h.as_str() == r.as_str()))
                {
                    return Err(invalid(
                        "gateway.external_issuers",
                        format!(
                            "entry {i}: role_map[{value:?}] names {r:?}; roles are {}",
                            Role::HUMAN.map(Role::as_str).join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Config {
    /// Defaults, then `file` (if any), then the environment. Callers merge
    /// their flags on top and finish with [`Config::from_figment`].
    pub fn figment(file: Option<&Path>) -> Figment {
        Self::figment_over(Config::default(), file)
    }

    /// Like [`Config::figment`] with other defaults (`devcycle up` turns on
    /// the development CA, for instance).
    pub fn figment_over(defaults: Config, file: Option<&Path>) -> Figment {
        let mut f = Figment::from(Serialized::defaults(defaults));
        if let Some(file) = file {
            f = f.merge(Toml::file_exact(file));
        }
        f.merge(
            Env::prefixed("DEVCYCLE_")
                .split("__")
                // Variables for the test harness and the config path itself
                // are not configuration keys.
                .filter(|k| {
                    let k = k.as_str().to_ascii_lowercase();
                    !k.starts_with("test_") && k != "config"
                }),
        )
    }

    pub fn from_figment(f: Figment) -> Result<Self, ConfigError> {
        let config: Config = f.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Defaults, file and environment, validated.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_trust_domain(&self.trust_domain) {
            return Err(invalid(
                "trust_domain",
                "must be a lowercase DNS name such as devcycle.local",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        check_db_url("database_url", &self.database_url)?;
        check_db_url("registry.database_url", &self.registry.database_url)?;
        check_db_url("scheduler.database_url", &self.scheduler.database_url)?;
        check_db_url("gateway.database_url", &self.gateway.database_url)?;
        self.gateway.validate()?;
        if !(100..=600_000).contains(&self.scheduler.heartbeat_interval_ms) {
            return Err(invalid(
                "scheduler.heartbeat_interval_ms",
                "must be between 100 and 600000",
            ));
        }
        if crate::validate::dns_label("executor.worker_id", &self.executor.worker_id).is_err() {
            return Err(invalid("executor.worker_id", "must be a DNS label"));
        }
        if !(1..=10_000).contains(&self.executor.slots) {
            return Err(invalid("executor.slots", "must be between 1 and 10000"));
        }
        let l = &self.executor.limits;
        if l.wall_time_ms == 0
            || l.memory_bytes < (1 << 20)
            || l.cpu_time_ms < 1000
            || l.max_processes == 0
            || l.max_open_files < 16
            || l.max_output_bytes == 0
        {
            return Err(invalid(
                "executor.limits",
                "wall_time_ms, cpu_time_ms (>= 1000), memory_bytes (>= 1 MiB), max_processes, max_open_files (>= 16) and max_output_bytes must be set",
            ));
        }
        if !self.kafka.topic_prefix.is_empty()
            && !self
                .kafka
                .topic_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(
                "kafka.topic_prefix",
                "may only hold letters, digits, '.', '_' and '-'",
            ));
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "metrics.listen",
                "must be host:port with an IP address, or empty",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_err() {
            return Err(invalid("log.filter", "not a valid RUST_LOG filter"));
        }
        if !(100..=600_000).contains(&self.tls.reload_interval_ms) {
            return Err(invalid(
                "tls.reload_interval_ms",
                "must be between 100 and 600000",
            ));
        }
        if !(100..=600_000).contains(&self.registry.heartbeat_interval_ms) {
            return Err(invalid(
                "registry.heartbeat_interval_ms",
                "must be between 100 and 600000",
            ));
        }
        if !(1..=100).contains(&self.registry.missed_heartbeats) {
            return Err(invalid(
                "registry.missed_heartbeats",
                "must be between 1 and 100",
            ));
        }
        if self.shutdown.drain_ms > 3_600_000 {
            return Err(invalid("shutdown.drain_ms", "must be at most 3600000"));
        }
        if self.shutdown.health_grace_ms > 600_000 {
            return Err(invalid(
                "shutdown.health_grace_ms",
                "must be at most 600000",
            ));
        }
        self.client_identity()?;
        Ok(())
    }

    pub fn tls_dir(&self) -> PathBuf {
        if self.tls.dir.is_empty() {
            self.data_dir.join("pki")
        } else {
            PathBuf::from(&self.tls.dir)
        }
    }

    /// The database of a service: its own URL if set, else the shared one,
    /// else the SQLite file in the data directory.
    pub fn database_url_for<'a>(&'a self, service_url: &'a str) -> String {
        if !service_url.is_empty() {
            service_url.to_owned()
        } else if !self.database_url.is_empty() {
            self.database_url.clone()
        } else {
            format!("sqlite://{}", self.data_dir.join("devcycle.db").display())
        }
    }

    pub fn service_id(&self, name: &str) -> SpiffeId {
        SpiffeId::service(&self.trust_domain, name)
            .expect("service names are constants and the trust domain is validated")
    }

    pub fn client_identity(&self) -> Result<SpiffeId, ConfigError> {
        SpiffeId::parse(&format!(
            "spiffe://{}/{}",
            self.trust_domain, self.client.identity
        ))
        .map_err(|e| invalid("client.identity", format!("{e}")))
    }

    pub fn identity_files(&self, id: &SpiffeId) -> IdentityFiles {
        IdentityFiles::in_dir(&self.tls_dir(), id)
    }

    pub fn health_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown.health_grace_ms)
    }
    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.shutdown.drain_ms)
    }
}

fn check_db_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    if url.is_empty()
        || url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
    {
        Ok(())
    } else {
        Err(invalid(
            key,
            "must start with sqlite:, postgres:// or postgresql://",
        ))
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "d.toml",
                "trust_domain = \"file.local\"\n[registry]\nheartbeat_interval_ms = 2000\n",
            )?;
            jail.set_env("DEVCYCLE_REGISTRY__HEARTBEAT_INTERVAL_MS", "3000");
            jail.set_env("DEVCYCLE_TEST_DATABASE_URL", "postgres://ignored");
            let f = Config::figment(Some(Path::new("d.toml")))
                .merge(Serialized::default("registry.missed_heartbeats", 7));
            let c = Config::from_figment(f).expect("valid");
            assert_eq!(c.trust_domain, "file.local");
            assert_eq!(c.registry.heartbeat_interval_ms, 3000);
            assert_eq!(c.registry.missed_heartbeats, 7);

            jail.set_env("DEVCYCLE_REGISTRY__MISSED_HEARTBEATS", "0");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("registry.missed_heartbeats"), "{err}");

            jail.set_env("DEVCYCLE_REGISTRY__MISSED_HEARTBEATS", "3");
            jail.set_env("DEVCYCLE_REGISTRY__LISTEN", "not-an-address");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("registry.listen"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("d.toml", "[registry]\nlisten_port = 1\n")?;
            let err = Config::load(Some(Path::new("d.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("listen_port"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn external_issuers_need_protected_jwks_and_known_roles() {
        assert!(jwks_url_is_protected("https://idp.example/jwks.json"));
        assert!(jwks_url_is_protected("http://127.0.0.1:8080/jwks.json"));
        assert!(jwks_url_is_protected("http://[::1]/jwks"));
        assert!(jwks_url_is_protected("http://localhost/jwks"));
        assert!(!jwks_url_is_protected("http://idp.example/jwks.json"));
        assert!(!jwks_url_is_protected("http://10.0.0.1/jwks.json"));
        assert!(!jwks_url_is_protected("http://127.0.0.1@idp.example/jwks"));
        assert!(!jwks_url_is_protected("ftp://idp.example/jwks.json"));
        assert!(!jwks_url_is_protected("idp.example/jwks.json"));
        figment::Jail::expect_with(|jail| {
            let issuer = |url: &str, role: &str| {
                format!(
                    "[[gateway.external_issuers]]\nissuer = \"https://idp.example\"\naudience = \"devcycle\"\nsubject_prefix = \"idp-\"\njwks_url = \"{url}\"\nrole_map = {{ eng = [\"{role}\"] }}\n"
                )
            };
            jail.create_file("ok.toml", &issuer("https://idp.example/jwks", "developer"))?;
            let c = Config::load(Some(Path::new("ok.toml"))).expect("valid");
            assert_eq!(c.gateway.external_issuers[0].roles_claim, "groups");
            jail.create_file("http.toml", &issuer("http://idp.example/jwks", "developer"))?;
            let err = Config::load(Some(Path::new("http.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("gateway.external_issuers") && err.contains("https"),
                "{err}"
            );
            jail.create_file("role.toml", &issuer("https://idp.example/jwks", "worker"))?;
            let err = Config::load(Some(Path::new("role.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("role_map") && err.contains("worker"), "{err}");
            Ok(())
        });
    }
}
