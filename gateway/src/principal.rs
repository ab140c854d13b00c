//! What the front door learned about a request, handed to the gateway's own
//! services through request extensions.

use std::net::SocketAddr;

use crate::error::Error;
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

/// The refusal of a call that needs a token and came without one.
pub const BEARER_REQUIRED: &str = "authorization: a bearer token is required";

/// The authenticated caller of a gateway RPC.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<&Claims, Error> {
    req.extensions()
        .get::<Authenticated>()
        .map(|a| &a.0.claims)
        .ok_or(Error::unauthenticated(BEARER_REQUIRED))
}

pub fn client_addr<T>(req: &tonic::Request<T>) -> String {
    req.extensions()
        .get::<ClientAddr>()
        .map(|a| a.0.ip().to_string())
        .unwrap_or_default()
}
