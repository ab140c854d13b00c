//! External token issuers, verified through their JWKS.
//!
//! Keys are refreshed on a schedule: the JWKS response's `Cache-Control:
//! max-age` (clamped between `min_refetch` and `refresh`) or `refresh`, and
//! each fetch replaces the whole set, so a key the issuer removed stops
//! verifying within one interval. When fetches fail the last set is kept for
//! at most [`MAX_STALE`], then dropped: the issuer's tokens are refused rather
//! than verified with keys it may have retired.
//!
//! An unknown `kid` triggers at most one refetch per `min_refetch` (single
//! flight), so tokens with made-up key ids cannot turn the gateway into a
//! traffic amplifier against the issuer.
//!
//! Roles never come from the token as-is: the values of the configured claim
//! are mapped through `role_map`, and values it does not name grant nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use devcycle::config::ExternalIssuerConfig;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::jwt::PublicKey;

/// How long keys are trusted after the last successful fetch.
pub const MAX_STALE: Duration = Duration::from_secs(24 * 3600);

struct KeySet {
    keys: Vec<PublicKey>,
    fetched: Instant,
}

pub struct ExternalIssuer {
    pub issuer: String,
    pub audience: String,
    /// Prepended to the token's `sub`, so external users cannot collide with
    /// local ones.
    pub subject_prefix: String,
    pub max_lifetime_s: i64,
    roles_claim: String,
    role_map: BTreeMap<String, Vec<String>>,
    jwks_url: String,
    keys: ArcSwap<Option<KeySet>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refetch: Duration,
    refresh: Duration,
    http: reqwest::Client,
}

impl ExternalIssuer {
    pub fn new(cfg: &ExternalIssuerConfig, min_refetch: Duration) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(
            devcycle::config::jwks_url_is_protected(&cfg.jwks_url),
            "jwks_url {:?} must be https:// (http:// only to a loopback host)",
            cfg.jwks_url
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            // Keys must come from the issuer itself, not through a proxy
            // the environment names (loopback http would travel in clear).
            .no_proxy()
            .build()?;
        let refresh = cfg.jwks_refresh.max(Duration::from_secs(1));
        Ok(Arc::new(Self {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            subject_prefix: cfg.subject_prefix.clone(),
            max_lifetime_s: 24 * 3600,
            roles_claim: cfg.roles_claim.clone(),
            role_map: cfg.role_map.clone(),
            jwks_url: cfg.jwks_url.clone(),
            keys: ArcSwap::from_pointee(None),
            last_fetch: tokio::sync::Mutex::new(None),
            min_refetch: min_refetch.min(refresh),
            refresh,
            http,
        }))
    }

    fn cached(&self, kid: &str) -> Option<PublicKey> {
        let set = self.keys.load();
        let set = set.as_ref().as_ref()?;
        if set.fetched.elapsed() > MAX_STALE {
            return None;
        }
        set.keys.iter().find(|k| k.kid == kid).cloned()
    }

    /// The devcycle roles the token's claim maps to; sorted, no duplicates.
    pub fn map_roles(&self, claim: Option<&Value>) -> Vec<String> {
        let values: Vec<&str> = match claim {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let mut roles: Vec<String> = values
            .into_iter()
            .filter_map(|v| self.role_map.get(v))
            .flatten()
            .cloned()
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }

    pub fn roles_claim(&self) -> &str {
        &self.roles_claim
    }

    /// The key `kid`, refetching the JWKS if it is unknown and the last fetch
    /// is older than `min_refetch`.
    pub async fn key(&self, kid: &str) -> Option<PublicKey> {
        if let Some(k) = self.cached(kid) {
            return Some(k);
        }
        let mut last = self.last_fetch.lock().await;
        // Another caller may have fetched while we waited.
        if let Some(k) = self.cached(kid) {
            return Some(k);
        }
        if last.is_some_and(|t| t.elapsed() < self.min_refetch) {
            return None;
        }
        *last = Some(Instant::now());
        let _ = self.fetch_and_store().await;
        self.cached(kid)
    }

    /// Keeps the key set fresh until `shutdown`.
    pub async fn refresh_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wait = {
                let mut last = self.last_fetch.lock().await;
                match *last {
                    // A verifier just fetched for an unknown kid.
                    Some(t) if t.elapsed() < self.min_refetch => {
                        let wait = self.min_refetch.saturating_sub(t.elapsed());
                        drop(last);
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(wait) => continue,
                        }
                    }
                    _ => *last = Some(Instant::now()),
                }
                match self.fetch_and_store().await {
                    Ok(max_age) => max_age
                        .unwrap_or(self.refresh)
                        .clamp(self.min_refetch, self.refresh),
                    // Retry sooner, but never faster than min_refetch.
                    Err(()) => (self.refresh / 4).max(self.min_refetch),
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Fetches and replaces the key set; the response's max-age on success.
    async fn fetch_and_store(&self) -> Result<Option<Duration>, ()> {
        match self.fetch().await {
            Ok((keys, max_age)) => {
                metrics::counter!("devcycle_gateway_jwks_fetches_total", "outcome" => "ok")
                    .increment(1);
                self.keys.store(Arc::new(Some(KeySet {
                    keys,
                    fetched: Instant::now(),
                })));
                Ok(max_age)
            }
            Err(e) => {
                metrics::counter!("devcycle_gateway_jwks_fetches_total", "outcome" => "error")
                    .increment(1);
                tracing::warn!(issuer = %self.issuer, error = %e, "cannot fetch JWKS");
                Err(())
            }
        }
    }

    async fn fetch(&self) -> anyhow::Result<(Vec<PublicKey>, Option<Duration>)> {
        let res = self
            .http
            .get(&self.jwks_url)
            .send()
            .await?
            .error_for_status()?;
        let max_age = res
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let body: Value = serde_json::from_slice(&read_limited(res, MAX_JWKS_BYTES).await?)?;
        let keys = body
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow::anyhow!("JWKS without a keys array"))?;
        Ok((
            keys.iter().filter_map(PublicKey::from_jwk).collect(),
            max_age,
        ))
    }
}

/// A JWKS larger than this is refused: real ones hold a few keys.
const MAX_JWKS_BYTES: usize = 256 * 1024;

async fn read_limited(mut res: reqwest::Response, max: usize) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        anyhow::ensure!(
            body.len() + chunk.len() <= max,
            "JWKS larger than {max} bytes"
        );
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `max-age` of a Cache-Control value; `no-cache`/`no-store` mean zero (the
/// caller's lower bound applies).
fn max_age(v: &str) -> Option<Duration> {
    let mut out = None;
    for d in v.split(',').map(str::trim) {
        let lower = d.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            out = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(max_age("public, max-age=60"), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }
}
