//! Authorization of every call by the caller's SPIFFE ID, fail-closed: a
//! method with no policy entry is denied. The layer also establishes the
//! [`Caller`] that handlers see, trusting a forwarded end-user principal only
//! from the gateway's identity and stripping it from everyone else.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use tonic::body::Body;

use crate::identity::SpiffeId;
use crate::tls::MeshConnectInfo;

mod role;
pub use role::{Role, Roles};

/// Metadata the gateway sets for the end user it verified.
pub const SUBJECT_HEADER: &str = "x-devcycle-subject";
pub const ROLES_HEADER: &str = "x-devcycle-roles";
pub const SESSION_HEADER: &str = "x-devcycle-session";
const PRINCIPAL_HEADERS: [&str; 3] = [SUBJECT_HEADER, ROLES_HEADER, SESSION_HEADER];

/// The end user behind a call that came through the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub roles: Roles,
    pub session: String,
}

/// Who is calling: the mTLS peer, and the end user when the peer is the
/// gateway acting for one.
#[derive(Debug, Clone)]
pub struct Caller {
    pub peer: Arc<SpiffeId>,
    pub principal: Option<Principal>,
    pub remote: std::net::SocketAddr,
}

impl Caller {
    /// The name recorded as the actor of a change: the end user if any,
    /// otherwise the peer's `<kind>/<name>`.
    pub fn actor(&self) -> String {
        match &self.principal {
            Some(p) => format!("user/{}", p.subject),
            None => self.peer.path(),
        }
    }

    /// The caller of a tonic request; absent only if the authz layer is not
    /// installed, which is a wiring bug reported as UNAUTHENTICATED.
    pub fn of<T>(req: &tonic::Request<T>) -> Result<&Caller, tonic::Status> {
        req.extensions()
            .get::<Caller>()
            .ok_or_else(|| tonic::Status::unauthenticated("no authenticated caller"))
    }
}

/// Which identities may call which methods. Patterns are `<kind>/<name>`,
/// `<kind>/*`, or `*` for any identity of the mesh.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: HashMap<String, Vec<String>>,
}

/// Methods every mesh identity may call on every service.
const COMMON: &[(&str, &[&str])] = &[
    ("/grpc.health.v1.Health/Check", &["*"]),
    ("/grpc.health.v1.Health/Watch", &["*"]),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        &["*"],
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        &["*"],
    ),
];

impl Policy {
    /// A policy from `(method, patterns)` entries, plus health and reflection.
    pub fn new(entries: &[(&str, &[&str])]) -> Self {
        let mut rules = HashMap::new();
        for (method, patterns) in COMMON.iter().chain(entries) {
            rules
                .entry((*method).to_owned())
                .or_insert_with(Vec::new)
                .extend(patterns.iter().map(|p| (*p).to_owned()));
        }
        Self { rules }
    }

    /// A policy for one gRPC service: `prefix` (`/pkg.Service/`) joined to
    /// each method name.
    pub fn for_service(prefix: &str, entries: &[(&str, &[&str])]) -> Self {
        let full: Vec<(String, &[&str])> = entries
            .iter()
            .map(|(m, p)| (format!("{prefix}{m}"), *p))
            .collect();
        let refs: Vec<(&str, &[&str])> = full.iter().map(|(m, p)| (m.as_str(), *p)).collect();
        Self::new(&refs)
    }

    /// This policy and `other`'s entries, for a server hosting both services.
    pub fn merge(mut self, other: Policy) -> Self {
        for (method, patterns) in other.rules {
            self.rules.entry(method).or_default().extend(patterns);
        }
        self
    }

    pub fn has_entry(&self, method: &str) -> bool {
        self.rules.contains_key(method)
    }

    pub fn allows(&self, method: &str, peer: &SpiffeId) -> bool {
        let Some(patterns) = self.rules.get(method) else {
            return false;
        };
        let kind = peer.kind().as_str();
        patterns.iter().any(|p| match p.split_once('/') {
            None => p == "*",
            Some((k, "*")) => k == kind,
            Some((k, n)) => k == kind && n == peer.name(),
        })
    }
}

/// The tower layer applied to every mesh server.
#[derive(Clone)]
pub struct AuthzLayer {
    policy: Arc<Policy>,
    gateway: Arc<SpiffeId>,
    denylist: Option<Arc<crate::denylist::Denylist>>,
}

impl AuthzLayer {
    /// `gateway` is the only identity whose forwarded principal is trusted;
    /// certificates on `denylist` are refused.
    pub fn new(
        policy: Policy,
        gateway: SpiffeId,
        denylist: Option<Arc<crate::denylist::Denylist>>,
    ) -> Self {
        Self {
            policy: Arc::new(policy),
            gateway: Arc::new(gateway),
            denylist,
        }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    layer: AuthzLayer,
}

impl<S> tower::Service<Request<Body>> for Authz<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<Response<Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        match self.authorize(&mut req) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                futures::future::Either::Left(self.inner.call(req))
            }
            Err(status) => {
                futures::future::Either::Right(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

impl<S> Authz<S> {
    fn authorize(&self, req: &mut Request<Body>) -> Result<Caller, tonic::Status> {
        let info = req
            .extensions()
            .get::<MeshConnectInfo>()
            .cloned()
            .ok_or_else(|| tonic::Status::unauthenticated("connection is not mTLS"))?;
        let peer = info
            .peer
            .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
        if let Some(list) = &self.layer.denylist
            && list.revoked(&peer, info.issued_ms)
        {
            tracing::warn!(peer = %peer, "revoked certificate refused");
            return Err(tonic::Status::unauthenticated(format!(
                "the certificate of {peer} was revoked; get a new one"
            )));
        }
        let method = req.uri().path();
        if !self.layer.policy.allows(method, &peer) {
            tracing::warn!(peer = %peer, method, "denied by mesh policy");
            return Err(tonic::Status::permission_denied(format!(
                "{peer} may not call {method}"
            )));
        }
        let principal = if *peer == *self.layer.gateway {
            principal_from(req.headers())?
        } else {
            for h in PRINCIPAL_HEADERS {
                req.headers_mut().remove(h);
            }
            None
        };
        Ok(Caller {
            peer,
            principal,
            remote: info.remote,
        })
    }
}

fn principal_from(headers: &HeaderMap) -> Result<Option<Principal>, tonic::Status> {
    let get = |name: &str| -> Result<Option<String>, tonic::Status> {
        headers
            .get(name)
            .map(|v| {
                v.to_str().map(str::to_owned).map_err(|_| {
                    tonic::Status::invalid_argument(format!("{name}: not valid ASCII"))
                })
            })
            .transpose()
    };
    let Some(subject) = get(SUBJECT_HEADER)? else {
        return Ok(None);
    };
    let roles = get(ROLES_HEADER)?
        .map(|r| Roles::parse_list(&r))
        .unwrap_or_default();
    Ok(Some(Principal {
        subject,
        roles,
        session: get(SESSION_HEADER)?.unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://t.local/{s}")).unwrap()
    }

    #[test]
    fn fail_closed_and_patterns() {
        let p = Policy::new(&[
            ("/a.B/Read", &["*"]),
            ("/a.B/Write", &["user/*", "svc/gateway"]),
        ]);
        assert!(p.allows("/a.B/Read", &id("worker/w1")));
        assert!(p.allows("/a.B/Write", &id("user/ann")));
        assert!(p.allows("/a.B/Write", &id("svc/gateway")));
        assert!(!p.allows("/a.B/Write", &id("svc/scheduler")));
        assert!(!p.allows("/a.B/Write", &id("worker/w1")));
        assert!(!p.allows("/a.B/Unknown", &id("svc/gateway")));
        assert!(p.allows("/grpc.health.v1.Health/Check", &id("worker/w1")));
    }
}
