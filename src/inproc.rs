//! Calls between services that share a process, without the network.
//!
//! Every mesh server registers its whole service stack (metrics and traces,
//! authorization, routes) under the address it listens on. A caller in the
//! same process that would dial that address (the gateway in `devcycle up`)
//! calls the stack in memory instead, presenting its own mesh identity as
//! the mTLS handshake would have ([`crate::tls::MeshTls::connect_info`]).
//! What the service checks and records is unchanged; what is skipped is TLS,
//! HTTP/2 framing and the task hops between the two ends.
//!
//! A server is registered from when it serves until its shutdown begins;
//! after that, callers dial its address and find it closed, as they would
//! across processes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use http::{Request, Response};
use tonic::body::Body;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use crate::tls::MeshTls;

/// A service stack as a caller in the same process sees it.
pub type LocalService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

static SERVED: LazyLock<ArcSwap<HashMap<SocketAddr, LocalService>>> =
    LazyLock::new(|| ArcSwap::from_pointee(HashMap::new()));

/// Keeps `addr` registered while it lives.
pub struct Registration {
    addr: SocketAddr,
}

/// Registers the stack served at `addr`.
pub fn register(addr: SocketAddr, service: LocalService) -> Registration {
    SERVED.rcu(|m| {
        let mut m = HashMap::clone(m);
        m.insert(addr, service.clone());
        Arc::new(m)
    });
    Registration { addr }
}

impl Drop for Registration {
    fn drop(&mut self) {
        SERVED.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(&self.addr);
            Arc::new(m)
        });
    }
}

/// The stack served at `addr` in this process, if any. Lock-free.
pub fn lookup(addr: SocketAddr) -> Option<LocalService> {
    SERVED.load().get(&addr).cloned()
}

/// Calls `local` as `tls`'s identity connected from `remote`: the request
/// carries what the mTLS handshake would have established and nothing else
/// of the caller's request state.
pub async fn call(
    local: LocalService,
    tls: &MeshTls,
    remote: SocketAddr,
    mut req: Request<Body>,
) -> Response<Body> {
    *req.extensions_mut() = http::Extensions::new();
    req.extensions_mut().insert(tls.connect_info(remote));
    match local.oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn served_while_registered() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let svc = LocalService::new(tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
        assert!(lookup(addr).is_none());
        let reg = register(addr, svc);
        let res = lookup(addr)
            .unwrap()
            .oneshot(Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        drop(reg);
        assert!(lookup(addr).is_none());
    }
}
