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
    /// `None` when the principal cannot be forwarded faithfully.
    pub fn new(claims: Claims) -> Option<Self> {
        let roles = Roles::of(&claims.roles);
        // Only the names of roles the gateway recognised travel on, so a
        // claim like "viewer,admin" cannot turn into two roles downstream.
        let names = roles.to_list();
        let mut headers = Vec::with_capacity(3);
        for (k, v) in [
            (devcycle::authz::SUBJECT_HEADER, claims.subject.clone()),
            (devcycle::authz::ROLES_HEADER, names),
            (devcycle::authz::SESSION_HEADER, claims.session.clone()),
        ] {
            headers.push((k, HeaderValue::from_str(&v).ok()?));
        }
        Some(Self {
            roles,
            bucket: format!("p:{}", claims.subject),
            headers,
            claims,
            cached_at: Instant::now(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_recognised_role_names_are_forwarded() {
        let v = Verified::new(Claims {
            subject: "eve".into(),
            roles: vec!["developer".into(), "viewer,admin".into(), "root".into()],
            session: "s1".into(),
            jti: "j1".into(),
            exp: 0,
            issuer: "i".into(),
        })
        .unwrap();
        let roles = v
            .headers
            .iter()
            .find(|(k, _)| *k == devcycle::authz::ROLES_HEADER)
            .unwrap();
        assert_eq!(roles.1, "developer");
        assert_eq!(v.roles, Roles::DEVELOPER);
    }
}
