//! The per-request path of the front door, in order: origin and URL checks,
//! the method's policy entry (fail-closed), identity metadata refused,
//! token verification and revocation, RBAC, rate limits, the request size,
//! then the call — to the gateway's own services or proxied over mTLS — with
//! the outcome of mutating calls audited.

mod audited;
mod target;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::{Code, Status};

pub use self::audited::code_name;
use self::audited::{audited, finish_row};
use self::target::target_of;
use crate::audit::Recorder;
use crate::cache::Bucket;
use crate::error::{Error, bad_token};
use crate::jwt::{ACCESS_TYP, Verifier};
use crate::limits::Limiter;
use crate::principal::{Authenticated, BEARER_REQUIRED, BootstrapCredential, ClientAddr};
use crate::proxy::Routes;
use crate::rbac::{self, Access, Roles, Rule};
use crate::revocation::{Revocations, Revoked};
use crate::store::AuditRow;
use crate::verified::{TokenCache, Verified};

/// Rate of one kind of bucket: a request every `interval_us`, `burst` at once.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub interval_us: i64,
    pub burst: u32,
}

pub struct FrontConfig {
    pub origins: Vec<HeaderValue>,
    pub max_message_bytes: usize,
    pub per_principal: Rate,
    pub per_address: Rate,
}

pub struct Front {
    pub config: FrontConfig,
    pub verifier: Arc<Verifier>,
    pub revocations: Arc<Revocations>,
    pub limits: Arc<Limiter>,
    pub recorder: Recorder,
    pub routes: Routes,
    tokens: TokenCache,
}

/// What admission decided about a request.
struct Admitted {
    rule: &'static Rule,
    principal: Option<Arc<Verified>>,
    bootstrap: Option<String>,
}

impl Front {
    pub fn new(
        config: FrontConfig,
        verifier: Arc<Verifier>,
        revocations: Arc<Revocations>,
        limits: Arc<Limiter>,
        recorder: Recorder,
        routes: Routes,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            verifier,
            revocations,
            limits,
            recorder,
            routes,
            tokens: TokenCache::default(),
        })
    }

    /// Handles one gRPC request (grpc-web has been translated already).
    pub async fn handle(self: Arc<Self>, req: Request<Body>) -> Response<Body> {
        let remote = req
            .extensions()
            .get::<ClientAddr>()
            .map(|a| a.0)
            .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
        let method = req.uri().path().to_owned();
        let has_query = req.uri().query().is_some();
        let admitted = match self.admit(&method, req.headers(), has_query, remote).await {
            Ok(a) => a,
            Err(e) => {
                let status = Status::from(e);
                match status.code() {
                    Code::Unauthenticated => auth_failed("token"),
                    Code::PermissionDenied => auth_failed("permission"),
                    _ => {}
                }
                // Refusals by rate limit are counted, not audited: a flood
                // would otherwise crowd real events out of the audit queue.
                if let Some(rule) = rbac::rule(&method)
                    && rule.mutating
                    && status.code() != Code::ResourceExhausted
                {
                    self.audit_now(&method, "", "anonymous", remote, status.code());
                }
                return status.into_http();
            }
        };
        let (mut parts, body) = req.into_parts();
        let mut target = String::new();
        let body = if client_streaming().contains(method.as_str()) {
            body
        } else {
            match self.read_unary(body).await {
                Ok(bytes) => {
                    if admitted.rule.mutating {
                        target = target_of(&bytes, admitted.rule.target);
                    }
                    Body::new(http_body_util::Full::new(bytes))
                }
                Err(e) => return Status::from(e).into_http(),
            }
        };
        forwarded_headers(&mut parts.headers, admitted.principal.as_deref());
        if devcycle::otel::enabled() {
            devcycle::otel::inject(&tracing::Span::current(), &mut parts.headers);
        }
        parts.extensions.insert(ClientAddr(remote));
        if let Some(p) = &admitted.principal {
            parts.extensions.insert(Authenticated(Arc::clone(p)));
        }
        if let Some(b) = admitted.bootstrap {
            parts.extensions.insert(BootstrapCredential(b));
        }
        let req = Request::from_parts(parts, body);
        let res = self.routes.call(&method, req).await;
        if !admitted.rule.mutating {
            return res;
        }
        let actor = admitted
            .principal
            .as_ref()
            .map(|p| p.claims.subject.clone())
            .unwrap_or_else(|| "anonymous".into());
        let row = self.audit_row(&method, &target, &actor, remote);
        audited(res, self.recorder.clone(), row)
    }

    async fn admit(
        &self,
        method: &str,
        headers: &HeaderMap,
        has_query: bool,
        remote: SocketAddr,
    ) -> Result<Admitted, Error> {
        if let Some(origin) = headers.get(http::header::ORIGIN)
            && !self.config.origins.iter().any(|o| o == origin)
        {
            return Err(Error::permission_denied(format!(
                "origin: {} is not allowed",
                String::from_utf8_lossy(origin.as_bytes())
            )));
        }
        if has_query {
            return Err(Error::unauthenticated(
                "the URL query is refused: send credentials only in the authorization header",
            ));
        }
        let rule = rbac::rule(method).ok_or_else(|| {
            Error::permission_denied(format!("{method}: no policy entry, so it is denied"))
        })?;
        if let Some(h) = headers
            .keys()
            .find(|k| k.as_str().starts_with("x-devcycle-"))
        {
            return Err(Error::permission_denied(format!(
                "{h}: identity metadata is set by the gateway only"
            )));
        }
        let address = Bucket {
            key: format!("a:{}", remote.ip()),
            interval_us: self.config.per_address.interval_us,
            burst: self.config.per_address.burst,
        };
        let credential = match credential(headers, rule) {
            Ok(c) => c,
            Err(s) => {
                self.limit(&[address]).await?;
                return Err(s);
            }
        };
        let mut admitted = Admitted {
            rule,
            principal: None,
            bootstrap: None,
        };
        match credential {
            Credential::None => {}
            Credential::Bootstrap(b) => admitted.bootstrap = Some(b),
            Credential::Bearer(token) => match self.authenticate(&token).await {
                Ok(p) => admitted.principal = Some(p),
                Err(s) => {
                    self.limit(&[address]).await?;
                    return Err(s);
                }
            },
        }
        authorize(method, rule, &admitted)?;
        match &admitted.principal {
            Some(p) => {
                let principal = Bucket {
                    key: p.bucket.clone(),
                    interval_us: self.config.per_principal.interval_us,
                    burst: self.config.per_principal.burst,
                };
                self.limit(&[address, principal]).await?;
            }
            None => self.limit(&[address]).await?,
        }
        Ok(admitted)
    }

    async fn authenticate(&self, token: &str) -> Result<Arc<Verified>, Error> {
        let now = devcycle::time::now_ms() / 1000;
        let verified = match self.tokens.get(token, now, self.verifier.leeway_s) {
            Some(v) => v,
            None => {
                let claims = self
                    .verifier
                    .verify(token, ACCESS_TYP, now)
                    .await
                    .map_err(|e| bad_token("authorization", e))?;
                let v = Arc::new(Verified::new(claims).ok_or(Error::unauthenticated(
                    "authorization: claims that cannot be forwarded",
                ))?);
                self.tokens.insert(token, Arc::clone(&v));
                v
            }
        };
        match self
            .revocations
            .check(&verified.claims.jti, &verified.claims.session)
        {
            Ok(()) => Ok(verified),
            Err(Revoked::Token) => Err(Error::unauthenticated(
                "authorization: token revoked (logged out)",
            )),
            Err(Revoked::Session) => Err(Error::unauthenticated(
                "authorization: session revoked; log in again",
            )),
            Err(Revoked::Unknown) => Err(Error::unavailable(
                "revocation list not loaded yet; retry shortly",
            )),
        }
    }

    /// Applies rate limits (`limits`: decided locally, shared in the
    /// background).
    async fn limit(&self, buckets: &[Bucket]) -> Result<(), Error> {
        let now_us = devcycle::time::now_ms() * 1000;
        self.limits.admit(buckets, now_us).await.map_err(|wait_us| {
            metrics::counter!("devcycle_gateway_rate_limited_total").increment(1);
            Error::RateLimited {
                what: "requests",
                wait_us,
            }
        })
    }

    async fn read_unary(&self, body: Body) -> Result<Bytes, Error> {
        let max = self.config.max_message_bytes + 5;
        match http_body_util::Limited::new(body, max).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::TooLarge {
                max: self.config.max_message_bytes,
            }),
            Err(e) => Err(Error::Cancelled(format!("request body: {e}"))),
        }
    }

    fn audit_row(&self, method: &str, target: &str, actor: &str, remote: SocketAddr) -> AuditRow {
        AuditRow {
            id: uuid::Uuid::now_v7().to_string(),
            time_ms: devcycle::time::now_ms(),
            actor: actor.to_owned(),
            method: method.to_owned(),
            target: target.to_owned(),
            outcome: 0,
            status_code: String::new(),
            client_address: remote.ip().to_string(),
        }
    }

    fn audit_now(&self, method: &str, target: &str, actor: &str, remote: SocketAddr, code: Code) {
        let mut row = self.audit_row(method, target, actor, remote);
        finish_row(&mut row, code);
        self.recorder.record(row);
    }
}

enum Credential {
    None,
    Bearer(String),
    Bootstrap(String),
}

fn credential(headers: &HeaderMap, rule: &Rule) -> Result<Credential, Error> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Ok(Credential::None);
    };
    if values.next().is_some() {
        return Err(Error::unauthenticated("authorization: sent more than once"));
    }
    let v = v
        .to_str()
        .map_err(|_| Error::unauthenticated("authorization: not ASCII"))?;
    if let Some(t) = v.strip_prefix("Bearer ") {
        return Ok(Credential::Bearer(t.trim().to_owned()));
    }
    if let Some(t) = v.strip_prefix("Bootstrap ")
        && rule.access == Access::AdminOrBootstrap
    {
        return Ok(Credential::Bootstrap(t.trim().to_owned()));
    }
    Err(Error::unauthenticated(
        "authorization: expected \"Bearer <token>\"",
    ))
}

fn authorize(method: &str, rule: &Rule, a: &Admitted) -> Result<(), Error> {
    let roles = a.principal.as_ref().map(|p| p.roles);
    let allowed = match (rule.access, roles) {
        (Access::Public, _) => return Ok(()),
        (Access::AdminOrBootstrap, _) if a.bootstrap.is_some() => return Ok(()),
        (Access::Roles(Roles::NONE), _) => {
            return Err(Error::permission_denied(format!(
                "{method} is served only to mesh identities over mTLS"
            )));
        }
        (_, None) => {
            return Err(Error::unauthenticated(BEARER_REQUIRED));
        }
        (Access::Roles(need), Some(have)) => have.intersects(need),
        (Access::AdminOrBootstrap, Some(have)) => have.intersects(Roles::ADMIN),
    };
    if allowed {
        Ok(())
    } else {
        Err(Error::permission_denied(format!(
            "{method}: not allowed for roles {:?}",
            a.principal
                .as_ref()
                .map(|p| p.claims.roles.join(","))
                .unwrap_or_default()
        )))
    }
}

/// Counts a refused credential (`devcycle_gateway_auth_failures_total`):
/// `token` (missing, invalid, expired or revoked), `permission` (RBAC),
/// `password` or `totp` (a failed login).
pub fn auth_failed(reason: &'static str) {
    metrics::counter!("devcycle_gateway_auth_failures_total", "reason" => reason).increment(1);
}

/// Headers as the owning service must see them: the gateway's principal
/// metadata, no client credentials, no HTTP/1.1 connection headers.
fn forwarded_headers(h: &mut HeaderMap, principal: Option<&Verified>) {
    h.remove(http::header::AUTHORIZATION);
    h.remove(http::header::HOST);
    h.remove(http::header::CONNECTION);
    h.remove(http::header::COOKIE);
    if let Some(p) = principal {
        for (k, v) in &p.headers {
            h.insert(*k, v.clone());
        }
    }
}

/// Methods whose requests are streams: passed through, not buffered.
fn client_streaming() -> &'static HashSet<String> {
    static SET: OnceLock<HashSet<String>> = OnceLock::new();
    SET.get_or_init(|| {
        use prost::Message;
        let fds = prost_types::FileDescriptorSet::decode(devcycle::proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        let mut out = HashSet::new();
        for f in &fds.file {
            for s in &f.service {
                for m in &s.method {
                    if m.client_streaming() {
                        out.insert(format!("/{}.{}/{}", f.package(), s.name(), m.name()));
                    }
                }
            }
        }
        out
    })
}

/// The front door as a tower service.
#[derive(Clone)]
pub struct FrontService(pub Arc<Front>);

impl tower::Service<Request<Body>> for FrontService {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let front = Arc::clone(&self.0);
        if !devcycle::otel::enabled() {
            return Box::pin(async move { Ok(front.handle(req).await) });
        }
        // The gateway's span: a child of the client's `traceparent`, if
        // any, and the parent of the owning service's (see `handle`).
        let span = tracing::info_span!(
            "gateway",
            otel.name = %req.uri().path(),
            otel.kind = "server",
            rpc.system = "grpc",
            devcycle.component = "gateway",
        );
        devcycle::otel::set_parent_from(&span, req.headers());
        Box::pin(tracing::Instrument::instrument(
            async move { Ok(front.handle(req).await) },
            span,
        ))
    }
}
