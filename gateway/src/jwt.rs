//! JSON Web Tokens, verified strictly. Only asymmetric algorithms from an
//! allow-list are accepted, each bound to its key's type (so an Ed25519 public
//! key can never act as an HMAC secret); keys come only from configuration or
//! the configured issuers' JWKS, never from the token (`jku`, `x5u`, `jwk`,
//! `x5c` are refused); claims are checked for issuer, a single audience, a
//! bounded lifetime and the token's type; repeated JSON keys and unknown
//! critical headers are refused.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use crate::json::StrictObject;
use crate::jwks::ExternalIssuer;

/// `typ` of access tokens (RFC 9068) and of refresh tokens.
pub const ACCESS_TYP: &str = "at+jwt";
pub const REFRESH_TYP: &str = "rt+jwt";
/// Larger tokens are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Header parameters that would let a token choose its own key.
const KEY_CARRYING_HEADERS: [&str; 5] = ["jku", "x5u", "jwk", "x5c", "x5t#S256"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    EdDSA,
    ES256,
}

impl Alg {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "EdDSA" => Some(Alg::EdDSA),
            "ES256" => Some(Alg::ES256),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
        }
    }
}

/// Why a token was refused; always UNAUTHENTICATED to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token: {0}")]
pub struct TokenError(pub String);

fn bad(reason: impl Into<String>) -> TokenError {
    TokenError(reason.into())
}

/// A verification key with the one algorithm it may be used with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub alg: Alg,
    /// Ed25519: 32 bytes; P-256: the uncompressed point (65 bytes).
    pub bytes: Vec<u8>,
}

impl PublicKey {
    fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        let alg: &dyn signature::VerificationAlgorithm = match self.alg {
            Alg::EdDSA => &signature::ED25519,
            Alg::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        };
        signature::UnparsedPublicKey::new(alg, &self.bytes)
            .verify(message, sig)
            .is_ok()
    }

    pub fn to_jwk(&self) -> devcycle::proto::auth::v1::Jwk {
        use devcycle::proto::auth::v1::Jwk;
        match self.alg {
            Alg::EdDSA => Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                kid: self.kid.clone(),
                alg: "EdDSA".into(),
                x: B64.encode(&self.bytes),
                y: String::new(),
                r#use: "sig".into(),
            },
            Alg::ES256 => Jwk {
                kty: "EC".into(),
                crv: "P-256".into(),
                kid: self.kid.clone(),
                alg: "ES256".into(),
                x: B64.encode(&self.bytes[1..33]),
                y: B64.encode(&self.bytes[33..]),
                r#use: "sig".into(),
            },
        }
    }

    /// A key from one JWKS entry; `None` for entries we cannot use (other key
    /// types, encryption keys, malformed coordinates).
    pub fn from_jwk(v: &Value) -> Option<Self> {
        let s = |k: &str| v.get(k).and_then(Value::as_str);
        let kid = s("kid")?.to_owned();
        if s("use").is_some_and(|u| u != "sig") {
            return None;
        }
        let coord = |k: &str| B64.decode(s(k)?).ok().filter(|b| b.len() == 32);
        let (alg, bytes) = match (s("kty")?, s("crv")?) {
            ("OKP", "Ed25519") => (Alg::EdDSA, coord("x")?),
            ("EC", "P-256") => {
                let mut p = vec![4u8];
                p.extend(coord("x")?);
                p.extend(coord("y")?);
                (Alg::ES256, p)
            }
            _ => return None,
        };
        if s("alg").is_some_and(|a| a != alg.as_str()) {
            return None;
        }
        Some(Self { kid, alg, bytes })
    }
}

/// The gateway's own signing key (Ed25519), kept in a PKCS#8 file that every
/// replica mounts.
pub struct Signer {
    key: Ed25519KeyPair,
    public: PublicKey,
}

impl Signer {
    pub fn generate() -> anyhow::Result<Self> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
        Self::from_pkcs8(doc.as_ref())
    }

    pub fn from_pkcs8(der: &[u8]) -> anyhow::Result<Self> {
        let key = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 key: {e}"))?;
        let bytes = key.public_key().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let kid = B64.encode(&digest.as_ref()[..12]);
        Ok(Self {
            key,
            public: PublicKey {
                kid,
                alg: Alg::EdDSA,
                bytes,
            },
        })
    }

    /// Loads the key at `path`, creating it (mode 0600) when absent.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::read(path) {
            Ok(der) => Self::from_pkcs8(&der),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                f.write_all(doc.as_ref())?;
                Self::from_pkcs8(doc.as_ref())
            }
            Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// A compact JWS of `claims` with header `{alg, kid, typ}`.
    pub fn sign(&self, typ: &str, claims: &Value) -> String {
        let header = json!({"alg": "EdDSA", "kid": self.public.kid, "typ": typ});
        self.sign_raw(header.to_string().as_bytes(), claims.to_string().as_bytes())
    }

    /// Signs any header and payload text as given (tests craft hostile
    /// tokens with it).
    pub fn sign_raw(&self, header: &[u8], payload: &[u8]) -> String {
        let mut out = B64.encode(header);
        out.push('.');
        out.push_str(&B64.encode(payload));
        let sig = self.key.sign(out.as_bytes());
        out.push('.');
        out.push_str(&B64.encode(sig.as_ref()));
        out
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub subject: String,
    pub roles: Vec<String>,
    /// Session id; empty for external issuers' tokens.
    pub session: String,
    pub jti: String,
    /// Seconds since the epoch.
    pub exp: i64,
    pub issuer: String,
}

/// Checks tokens of the gateway's own issuer and of configured external ones.
pub struct Verifier {
    pub issuer: String,
    pub audience: String,
    own: Vec<PublicKey>,
    external: Vec<Arc<ExternalIssuer>>,
    /// Clock skew tolerated on `exp` and `nbf`, seconds.
    pub leeway_s: i64,
    /// Longest lifetime (`exp` - now) an own access token may claim.
    pub max_access_s: i64,
    pub max_refresh_s: i64,
}

impl Verifier {
    pub fn new(
        issuer: String,
        audience: String,
        own: Vec<PublicKey>,
        external: Vec<Arc<ExternalIssuer>>,
    ) -> Self {
        Self {
            issuer,
            audience,
            own,
            external,
            leeway_s: 30,
            max_access_s: 3600,
            max_refresh_s: 30 * 24 * 3600,
        }
    }

    /// The subject prefixes of external issuers' users.
    pub fn external_prefixes(&self) -> impl Iterator<Item = &str> {
        self.external.iter().map(|e| e.subject_prefix.as_str())
    }

    pub fn own_keys(&self) -> &[PublicKey] {
        &self.own
    }

    /// Verifies a token of type `typ` at `now` (seconds since the epoch).
    pub async fn verify(&self, token: &str, typ: &str, now: i64) -> Result<Claims, TokenError> {
        let parts = Parts::split(token)?;
        // The payload is read before the signature only to pick the issuer
        // whose keys verify it; nothing else in it is trusted until then.
        let unverified_iss = parts.claims.str("iss").map(str::to_owned);
        let Some(iss) = unverified_iss else {
            return Err(bad("missing iss"));
        };
        if iss == self.issuer {
            let key = self
                .own
                .iter()
                .find(|k| k.kid == parts.kid)
                .ok_or_else(|| bad(format!("unknown kid {:?}", parts.kid)))?;
            parts.check_signature(key)?;
            let max = if typ == REFRESH_TYP {
                self.max_refresh_s
            } else {
                self.max_access_s
            };
            return self.check_claims(&parts, typ, &self.audience, now, max, true);
        }
        let Some(ext) = self.external.iter().find(|e| e.issuer == iss) else {
            return Err(bad(format!("issuer {iss:?} is not trusted")));
        };
        if typ != ACCESS_TYP {
            return Err(bad("external issuers' tokens are access tokens only"));
        }
        let key = ext
            .key(&parts.kid)
            .await
            .ok_or_else(|| bad(format!("unknown kid {:?}", parts.kid)))?;
        parts.check_signature(&key)?;
        let mut claims =
            self.check_claims(&parts, typ, &ext.audience, now, ext.max_lifetime_s, false)?;
        claims.subject = format!("{}{}", ext.subject_prefix, claims.subject);
        claims.roles = ext.map_roles(parts.claims.get(ext.roles_claim()));
        Ok(claims)
    }

    fn check_claims(
        &self,
        parts: &Parts,
        typ: &str,
        audience: &str,
        now: i64,
        max_lifetime: i64,
        own: bool,
    ) -> Result<Claims, TokenError> {
        let c = &parts.claims;
        match (parts.typ.as_deref(), own) {
            (Some(t), _) if t == typ => {}
            // External issuers commonly label access tokens plain "JWT".
            (None | Some("JWT"), false) if typ == ACCESS_TYP => {}
            (t, _) => return Err(bad(format!("typ {t:?} is not {typ:?}"))),
        }
        match c.get("aud") {
            Some(Value::String(a)) if a == audience => {}
            Some(Value::String(a)) => return Err(bad(format!("aud {a:?} is not {audience:?}"))),
            Some(Value::Array(_)) => return Err(bad("aud must be a single audience")),
            Some(_) => return Err(bad("aud must be a string")),
            None => return Err(bad("missing aud")),
        }
        let exp = number(c, "exp")?.ok_or_else(|| bad("missing exp"))?;
        if now > exp + self.leeway_s {
            return Err(bad("expired"));
        }
        if exp - now > max_lifetime + self.leeway_s {
            return Err(bad(
                "exp is further ahead than any token this issuer grants",
            ));
        }
        if let Some(nbf) = number(c, "nbf")?
            && nbf > now + self.leeway_s
        {
            return Err(bad("not valid yet (nbf)"));
        }
        let jti = c.str("jti").filter(|j| !j.is_empty() && j.len() <= 128);
        let jti = jti
            .ok_or_else(|| bad("missing or oversized jti"))?
            .to_owned();
        let subject = c.str("sub").ok_or_else(|| bad("missing sub"))?;
        if devcycle::validate::user_name("sub", subject).is_err() {
            return Err(bad("sub is not a valid user name"));
        }
        // External issuers' roles are mapped by the caller instead.
        let roles = match c.get("roles").filter(|_| own) {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(_) => return Err(bad("roles must be an array")),
        };
        let session = if own {
            c.str("sid").ok_or_else(|| bad("missing sid"))?.to_owned()
        } else {
            String::new()
        };
        Ok(Claims {
            subject: subject.to_owned(),
            roles,
            session,
            jti,
            exp,
            issuer: c.str("iss").unwrap_or_default().to_owned(),
        })
    }
}

fn number(c: &StrictObject, key: &str) -> Result<Option<i64>, TokenError> {
    match c.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| bad(format!("{key} must be a number"))),
    }
}

/// A token split and decoded, its signature not yet checked.
struct Parts<'a> {
    signed: &'a str,
    signature: Vec<u8>,
    alg: Alg,
    kid: String,
    typ: Option<String>,
    claims: StrictObject,
}

impl<'a> Parts<'a> {
    fn split(token: &'a str) -> Result<Self, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(bad(format!("larger than {MAX_TOKEN_BYTES} bytes")));
        }
        let segments: Vec<&str> = token.split('.').collect();
        if segments.len() != 3 {
            return Err(bad(format!(
                "{} segments, a signed token has 3",
                segments.len()
            )));
        }
        let decode = |what: &str, s: &str| {
            B64.decode(s)
                .map_err(|_| bad(format!("{what} is not base64url")))
        };
        let header = StrictObject::parse(&decode("header", segments[0])?)
            .map_err(|e| bad(format!("header: {e}")))?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => {
                Alg::parse(a).ok_or_else(|| bad(format!("alg {a:?} is not allowed")))?
            }
            _ => return Err(bad("missing alg")),
        };
        for h in KEY_CARRYING_HEADERS {
            if header.get(h).is_some() {
                return Err(bad(format!("header {h:?} is not accepted")));
            }
        }
        if header.get("crit").is_some() {
            // No extension is understood, so any critical one is unknown.
            return Err(bad("unknown critical header (crit)"));
        }
        let kid = header
            .str("kid")
            .ok_or_else(|| bad("missing kid"))?
            .to_owned();
        let typ = match header.get("typ") {
            None => None,
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => return Err(bad("typ must be a string")),
        };
        let claims = StrictObject::parse(&decode("payload", segments[1])?)
            .map_err(|e| bad(format!("payload: {e}")))?;
        let signature = decode("signature", segments[2])?;
        let signed = &token[..segments[0].len() + 1 + segments[1].len()];
        Ok(Self {
            signed,
            signature,
            alg,
            kid,
            typ,
            claims,
        })
    }

    fn check_signature(&self, key: &PublicKey) -> Result<(), TokenError> {
        if key.alg != self.alg {
            return Err(bad(format!(
                "alg {} does not match key {}",
                self.alg.as_str(),
                key.kid
            )));
        }
        if !key.verify(self.signed.as_bytes(), &self.signature) {
            return Err(bad("bad signature"));
        }
        Ok(())
    }
}
