//! External token issuers, verified through their JWKS. Keys are cached; an
//! unknown `kid` triggers at most one refetch per `min_refetch` (single
//! flight), so a stream of tokens with made-up key ids cannot turn the
//! gateway into a traffic amplifier against the issuer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::Value;

use crate::jwt::PublicKey;

pub struct ExternalIssuer {
    pub issuer: String,
    pub audience: String,
    /// Prepended to the token's `sub`, so external users cannot collide with
    /// local ones.
    pub subject_prefix: String,
    pub max_lifetime_s: i64,
    jwks_url: String,
    keys: ArcSwap<Vec<PublicKey>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refetch: Duration,
    http: reqwest::Client,
}

impl ExternalIssuer {
    pub fn new(
        issuer: String,
        audience: String,
        jwks_url: String,
        subject_prefix: String,
        min_refetch: Duration,
    ) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            issuer,
            audience,
            subject_prefix,
            max_lifetime_s: 24 * 3600,
            jwks_url,
            keys: ArcSwap::from_pointee(Vec::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            min_refetch,
            http,
        })
    }

    fn cached(&self, kid: &str) -> Option<PublicKey> {
        self.keys.load().iter().find(|k| k.kid == kid).cloned()
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
        match self.fetch().await {
            Ok(keys) => {
                metrics::counter!("devcycle_gateway_jwks_fetches_total", "outcome" => "ok")
                    .increment(1);
                self.keys.store(Arc::new(keys));
            }
            Err(e) => {
                metrics::counter!("devcycle_gateway_jwks_fetches_total", "outcome" => "error")
                    .increment(1);
                tracing::warn!(issuer = %self.issuer, error = %e, "cannot fetch JWKS");
            }
        }
        self.cached(kid)
    }

    async fn fetch(&self) -> anyhow::Result<Vec<PublicKey>> {
        let body: Value = self
            .http
            .get(&self.jwks_url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let keys = body
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow::anyhow!("JWKS without a keys array"))?;
        Ok(keys.iter().filter_map(PublicKey::from_jwk).collect())
    }
}
