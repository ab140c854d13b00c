//! SPIFFE identities: `spiffe://<trust-domain>/<kind>/<name>`.

use std::fmt;

/// What a workload is, by the first segment of its SPIFFE path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A mesh service: `svc/registry`, `svc/gateway`, ...
    Service,
    /// An executor: `worker/<id>`.
    Worker,
    /// A person or a CLI acting for one: `user/<name>`.
    User,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "svc",
            Kind::Worker => "worker",
            Kind::User => "user",
        }
    }
}

/// A parsed SPIFFE ID of the mesh. Only the three path shapes above exist.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    kind: Kind,
    name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not a spiffe:// URI")]
    Scheme,
    #[error("invalid trust domain")]
    TrustDomain,
    #[error("path must be /svc/<name>, /worker/<id> or /user/<name>")]
    Path,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, kind: Kind, name: &str) -> Result<Self, ParseError> {
        if !valid_trust_domain(trust_domain) {
            return Err(ParseError::TrustDomain);
        }
        if !valid_segment(name) {
            return Err(ParseError::Path);
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            kind,
            name: name.to_owned(),
        })
    }

    pub fn service(trust_domain: &str, name: &str) -> Result<Self, ParseError> {
        Self::new(trust_domain, Kind::Service, name)
    }

    pub fn parse(uri: &str) -> Result<Self, ParseError> {
        let rest = uri.strip_prefix("spiffe://").ok_or(ParseError::Scheme)?;
        let (td, path) = rest.split_once('/').ok_or(ParseError::Path)?;
        let (kind, name) = path.split_once('/').ok_or(ParseError::Path)?;
        let kind = match kind {
            "svc" => Kind::Service,
            "worker" => Kind::Worker,
            "user" => Kind::User,
            _ => return Err(ParseError::Path),
        };
        Self::new(td, kind, name)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<kind>/<name>`, the form policies are written in.
    pub fn path(&self) -> String {
        format!("{}/{}", self.kind.as_str(), self.name)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/{}/{}",
            self.trust_domain,
            self.kind.as_str(),
            self.name
        )
    }
}

/// Trust domains are lowercase DNS-like names.
pub fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = SpiffeId::parse("spiffe://devcycle.local/worker/w-1").unwrap();
        assert_eq!(id.kind(), Kind::Worker);
        assert_eq!(id.name(), "w-1");
        assert_eq!(id.path(), "worker/w-1");
        assert_eq!(id.to_string(), "spiffe://devcycle.local/worker/w-1");
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(SpiffeId::parse("https://x/svc/a"), Err(ParseError::Scheme));
        assert_eq!(SpiffeId::parse("spiffe://x/pod/a"), Err(ParseError::Path));
        assert_eq!(SpiffeId::parse("spiffe://x/svc/"), Err(ParseError::Path));
        assert_eq!(SpiffeId::parse("spiffe://x/svc/a/b"), Err(ParseError::Path));
        assert_eq!(
            SpiffeId::parse("spiffe://X/svc/a"),
            Err(ParseError::TrustDomain)
        );
    }
}
