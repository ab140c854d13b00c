//! The revocation list every request is checked against, kept in memory and
//! refreshed from the shared cache several times a second, so a logout on
//! any replica is honoured by all within a second without a round trip per
//! request.
//!
//! Fail-closed: until the first successful sync nothing is accepted, and an
//! entry is never dropped before it expires — when Redis is unreachable,
//! every revocation already seen stays in force.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;

#[derive(Default)]
pub struct Revocations {
    entries: RwLock<HashMap<String, i64>>,
    ready: AtomicBool,
}

/// Why a token cannot be accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Revoked {
    Token,
    Session,
    /// The list has never been loaded.
    Unknown,
}

pub fn jti_entry(jti: &str) -> String {
    format!("j:{jti}")
}
pub fn session_entry(id: &str) -> String {
    format!("s:{id}")
}

impl Revocations {
    pub fn check(&self, jti: &str, session: &str) -> Result<(), Revoked> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(Revoked::Unknown);
        }
        let e = self.entries.read();
        if e.is_empty() {
            return Ok(());
        }
        // Entries are "j:<jti>" and "s:<id>"; build the keys without
        // allocating twice on the hot path.
        let mut key = String::with_capacity(2 + jti.len().max(session.len()));
        key.push_str("j:");
        key.push_str(jti);
        if e.contains_key(&key) {
            return Err(Revoked::Token);
        }
        if !session.is_empty() {
            key.truncate(0);
            key.push_str("s:");
            key.push_str(session);
            if e.contains_key(&key) {
                return Err(Revoked::Session);
            }
        }
        Ok(())
    }

    /// Adds an entry locally (the replica that revoked sees it at once).
    pub fn insert(&self, entry: String, until_ms: i64) {
        let mut e = self.entries.write();
        let v = e.entry(entry).or_insert(until_ms);
        *v = (*v).max(until_ms);
    }

    fn merge(&self, fresh: Vec<(String, i64)>, now_ms: i64) {
        let mut e = self.entries.write();
        e.retain(|_, until| *until > now_ms);
        for (k, until) in fresh {
            let v = e.entry(k).or_insert(until);
            *v = (*v).max(until);
        }
        self.ready.store(true, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads once, then keeps syncing from `cache` every `every` until
    /// `cancel`.
    pub async fn sync(
        self: Arc<Self>,
        cache: Arc<dyn Cache>,
        every: Duration,
        cancel: CancellationToken,
    ) {
        let mut failing = false;
        loop {
            let now = devcycle::time::now_ms();
            match cache.revocations(now).await {
                Ok(fresh) => {
                    if failing {
                        tracing::info!("revocation list synced again");
                        failing = false;
                    }
                    metrics::gauge!("devcycle_gateway_revocation_sync_failing").set(0.0);
                    self.merge(fresh, now);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot sync the revocation list; keeping every known revocation");
                        failing = true;
                    }
                    metrics::gauge!("devcycle_gateway_revocation_sync_failing").set(1.0);
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
