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
    lists: RwLock<Lists>,
    ready: AtomicBool,
}

/// Revoked token ids and session ids, each with when the revocation ends.
#[derive(Default)]
struct Lists {
    tokens: HashMap<String, i64>,
    sessions: HashMap<String, i64>,
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

impl Lists {
    /// Records `entry` (`j:<jti>` or `s:<id>`) until `until_ms`, keeping the
    /// later end if it is already known.
    fn add(&mut self, entry: String, until_ms: i64) {
        let (map, key) = match (entry.strip_prefix("j:"), entry.strip_prefix("s:")) {
            (Some(k), _) => (&mut self.tokens, k),
            (_, Some(k)) => (&mut self.sessions, k),
            _ => return,
        };
        let v = map.entry(key.to_owned()).or_insert(until_ms);
        *v = (*v).max(until_ms);
    }
}

impl Revocations {
    /// Allocation-free: the lists are keyed by bare jti and session id.
    pub fn check(&self, jti: &str, session: &str) -> Result<(), Revoked> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(Revoked::Unknown);
        }
        let l = self.lists.read();
        if l.tokens.contains_key(jti) {
            return Err(Revoked::Token);
        }
        if !session.is_empty() && l.sessions.contains_key(session) {
            return Err(Revoked::Session);
        }
        Ok(())
    }

    /// Adds an entry locally (the replica that revoked sees it at once).
    pub fn insert(&self, entry: String, until_ms: i64) {
        self.lists.write().add(entry, until_ms);
    }

    fn merge(&self, fresh: Vec<(String, i64)>, now_ms: i64) {
        let mut l = self.lists.write();
        l.tokens.retain(|_, until| *until > now_ms);
        l.sessions.retain(|_, until| *until > now_ms);
        for (k, until) in fresh {
            l.add(k, until);
        }
        self.ready.store(true, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_closed_until_loaded_then_entries_last_until_they_end() {
        let r = Revocations::default();
        assert_eq!(r.check("j1", "s1"), Err(Revoked::Unknown));
        r.merge(
            vec![(jti_entry("j1"), 2_000), (session_entry("s1"), 1_000)],
            0,
        );
        assert_eq!(r.check("j1", ""), Err(Revoked::Token));
        assert_eq!(r.check("j2", "s1"), Err(Revoked::Session));
        assert_eq!(r.check("j2", "s2"), Ok(()));
        // A sync without them (Redis emptied) forgets nothing still in force.
        r.merge(Vec::new(), 1_500);
        assert_eq!(r.check("j1", ""), Err(Revoked::Token));
        assert_eq!(r.check("j2", "s1"), Ok(()));
        r.insert(session_entry("s2"), 5_000);
        assert_eq!(r.check("j3", "s2"), Err(Revoked::Session));
    }
}
