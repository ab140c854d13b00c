//! What the front door learned about a request, handed to the gateway's own
//! services through request extensions, and the statuses it answers with.

use std::net::SocketAddr;

use devcycle::validate::FieldError;
use tonic::Status;

use crate::jwt::Claims;
use crate::verified::Verified;

/// A verified token's holder.
#[derive(Debug, Clone)]
pub struct Authenticated(pub std::sync::Arc<Verified>);

/// Where the request came from.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// A `Bootstrap <token>` credential, checked by CreateUser itself.
#[derive(Debug, Clone)]
pub struct BootstrapCredential(pub String);

pub fn invalid(e: FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// RESOURCE_EXHAUSTED with the wait in metadata: `retry-after` (seconds,
/// rounded up, as in HTTP) and `retry-after-ms`.
pub fn rate_limited(what: &str, wait_us: i64) -> Status {
    let ms = (wait_us + 999) / 1000;
    let mut s =
        Status::resource_exhausted(format!("{what}: rate limit exceeded; retry in {ms} ms"));
    let md = s.metadata_mut();
    if let Ok(v) = ((ms + 999) / 1000).to_string().parse() {
        md.insert("retry-after", v);
    }
    if let Ok(v) = ms.to_string().parse() {
        md.insert("retry-after-ms", v);
    }
    s
}

/// The authenticated caller of a gateway RPC.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<&Claims, Status> {
    req.extensions()
        .get::<Authenticated>()
        .map(|a| &a.0.claims)
        .ok_or_else(|| Status::unauthenticated("authorization: a bearer token is required"))
}

pub fn client_addr<T>(req: &tonic::Request<T>) -> String {
    req.extensions()
        .get::<ClientAddr>()
        .map(|a| a.0.ip().to_string())
        .unwrap_or_default()
}
