//! The front door: gRPC and grpc-web, tokens, sessions, RBAC, rate limits.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration, invalid};
use crate::authz::Role;

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
    /// A routed service served by this same process (`devcycle up`) is
    /// called in memory, through its same authorization and metrics, instead
    /// of over mTLS loopback.
    pub in_process_calls: bool,
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
    #[serde(with = "duration::whole_secs")]
    pub access_ttl: Duration,
    #[serde(with = "duration::whole_secs")]
    pub session_idle: Duration,
    #[serde(with = "duration::whole_secs")]
    pub session_absolute: Duration,
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
    /// Longest interval between JWKS refreshes; a shorter
    /// `Cache-Control: max-age` from the issuer wins.
    #[serde(with = "duration::whole_secs")]
    pub jwks_refresh: Duration,
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
            jwks_refresh: Duration::from_secs(300),
            roles_claim: "groups".into(),
            role_map: Default::default(),
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
            in_process_calls: true,
            allowed_origins: Vec::new(),
            issuer: "https://devcycle.local".into(),
            audience: "devcycle".into(),
            signing_key: String::new(),
            ca_dir: String::new(),
            access_ttl: Duration::from_secs(600),
            session_idle: Duration::from_secs(7 * 24 * 3600),
            session_absolute: Duration::from_secs(30 * 24 * 3600),
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

impl GatewayConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
        if !(Duration::from_secs(60)..=Duration::from_secs(3600)).contains(&self.access_ttl) {
            return Err(invalid("gateway.access_ttl", "must be between 1m and 1h"));
        }
        if self.session_idle < self.access_ttl || self.session_absolute < self.session_idle {
            return Err(invalid(
                "gateway.session_idle",
                "access_ttl <= session_idle <= session_absolute must hold",
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
            if e.roles_claim.is_empty() || e.jwks_refresh.is_zero() {
                return Err(invalid(
                    "gateway.external_issuers",
                    format!("entry {i}: roles_claim and a positive jwks_refresh are required"),
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
