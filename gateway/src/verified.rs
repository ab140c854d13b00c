//! Tokens already verified, kept briefly so a client's every request does not
//! pay for a signature check (Ed25519 verification is the largest single cost
//! on the gateway's path). An entry is the exact token text, so a lookup is a
//! full comparison; it is used only while the token is unexpired and for at
//! most a minute. Revocation is checked on every request regardless.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use parking_lot::RwLock;

use crate::jwt::Claims;
use crate::rbac::Roles;

const CAPACITY: usize = 16_384;
const MAX_AGE: Duration = Duration::from_secs(60);

/// A verified token and what the request path derives from it, once.
#[derive(Debug)]
pub struct Verified {
    pub claims: Claims,
    pub roles: Roles,
    /// The principal metadata forwarded to services.
    pub headers: Vec<(&'static str, HeaderValue)>,
    /// The rate-limit bucket of this principal.
    pub bucket: String,
    cached_at: Instant,
}

impl Verified {
    pub fn new(claims: Claims) -> Self {
        let mut headers = Vec::with_capacity(3);
        for (k, v) in [
            (devcycle::authz::SUBJECT_HEADER, claims.subject.clone()),
            (devcycle::authz::ROLES_HEADER, claims.roles.join(",")),
            (devcycle::authz::SESSION_HEADER, claims.session.clone()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.push((k, v));
            }
        }
        Self {
            roles: Roles::of(&claims.roles),
            bucket: format!("p:{}", claims.subject),
            headers,
            claims,
            cached_at: Instant::now(),
        }
    }
}

#[derive(Default)]
pub struct TokenCache {
    map: RwLock<HashMap<Box<str>, Arc<Verified>>>,
}

impl TokenCache {
    /// The cached verification of `token`, if still usable at `now` (unix
    /// seconds) with `leeway`.
    pub fn get(&self, token: &str, now: i64, leeway: i64) -> Option<Arc<Verified>> {
        let m = self.map.read();
        let v = m.get(token)?;
        (v.cached_at.elapsed() < MAX_AGE && now <= v.claims.exp + leeway).then(|| Arc::clone(v))
    }

    pub fn insert(&self, token: &str, v: Arc<Verified>) {
        let mut m = self.map.write();
        if m.len() >= CAPACITY {
            // Rare and cheap to rebuild: every entry re-verifies once.
            m.clear();
        }
        m.insert(token.into(), v);
    }
}
