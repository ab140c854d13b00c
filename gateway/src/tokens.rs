//! Minting the gateway's tokens: short-lived access tokens, and refresh
//! tokens whose `jti` is the rotating secret of a session (only its digest
//! is stored).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;

use devcycle::authz::Roles;

use crate::jwt::{ACCESS_TYP, REFRESH_TYP, Signer};

/// Lifetimes, seconds.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub access_s: i64,
    /// A session ends after this long without a refresh...
    pub idle_s: i64,
    /// ...and after this long in any case.
    pub absolute_s: i64,
}

pub struct Minter {
    pub signer: Arc<Signer>,
    pub issuer: String,
    pub audience: String,
    pub life: Lifetimes,
}

pub struct Minted {
    pub token: String,
    pub jti: String,
    pub exp: i64,
}

/// 128 random bits, base64url.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .expect("the system random source works");
    B64.encode(b)
}

/// Equality whose time depends only on the lengths, for secrets.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// SHA-256 hex of a secret, as stored.
pub fn digest(secret: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Minter {
    pub fn access(&self, subject: &str, roles: Roles, session: &str, now: i64) -> Minted {
        let jti = random_id();
        let exp = now + self.life.access_s;
        let claims = json!({
            "iss": self.issuer, "aud": self.audience, "sub": subject, "roles": roles.names(),
            "sid": session, "jti": jti, "iat": now, "nbf": now, "exp": exp,
        });
        Minted {
            token: self.signer.sign(ACCESS_TYP, &claims),
            jti,
            exp,
        }
    }

    /// A refresh token valid until the session's absolute end.
    pub fn refresh(&self, subject: &str, session: &str, now: i64, session_end: i64) -> Minted {
        let jti = random_id();
        let claims = json!({
            "iss": self.issuer, "aud": self.audience, "sub": subject, "sid": session,
            "jti": jti, "iat": now, "nbf": now, "exp": session_end,
        });
        Minted {
            token: self.signer.sign(REFRESH_TYP, &claims),
            jti,
            exp: session_end,
        }
    }
}
