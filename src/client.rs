//! Opening mTLS channels to mesh services.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::identity::SpiffeId;
use crate::tls::{MeshConnector, MeshTls};

/// A channel to `addr` (`host:port`) as `tls`'s identity, requiring the
/// server to be `expect`. Connects lazily: the first call dials, and calls
/// after a broken connection redial.
pub fn channel(
    tls: &Arc<MeshTls>,
    addr: &str,
    expect: SpiffeId,
) -> Result<Channel, tonic::transport::Error> {
    // The connector does TLS itself, so tonic sees plain http.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_with_connector_lazy(MeshConnector::new(tls, Some(expect))))
}

/// A channel to any mesh identity at `addr` (its SPIFFE ID is still
/// verified to be of this trust domain); for talking to a worker whose id
/// the caller does not know.
pub fn channel_any(tls: &Arc<MeshTls>, addr: &str) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    Ok(endpoint.connect_with_connector_lazy(MeshConnector::new(tls, None)))
}

/// A channel to a mesh service that calls it in memory while this process
/// serves it ([`crate::inproc`]), presenting `tls`'s identity as the mTLS
/// handshake would, and over the network otherwise. The choice is made per
/// call, so a service that starts later, or stops, is followed.
#[derive(Clone)]
pub struct MeshChannel {
    net: Channel,
    /// The address, when calls to a service this process serves there may
    /// stay in memory.
    local: Option<std::net::SocketAddr>,
    tls: Arc<MeshTls>,
}

impl MeshChannel {
    /// [`channel`], with calls in memory when `in_process` and the service
    /// at `addr` is served by this process.
    pub fn new(
        tls: &Arc<MeshTls>,
        addr: &str,
        expect: SpiffeId,
        in_process: bool,
    ) -> Result<Self, tonic::transport::Error> {
        Ok(Self {
            net: channel(tls, addr, expect)?,
            local: addr.parse().ok().filter(|_| in_process),
            tls: Arc::clone(tls),
        })
    }
}

type Body = tonic::body::Body;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<Body>> for MeshChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send + 'static>,
    >;

    /// Always ready: the network path waits for its channel in `call`.
    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        use tower::ServiceExt;
        if let Some(local) = self.local.and_then(crate::inproc::lookup) {
            let tls = Arc::clone(&self.tls);
            let unspecified = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
            return Box::pin(async move {
                Ok(crate::inproc::call(local, &tls, unspecified, req).await)
            });
        }
        let net = self.net.clone();
        Box::pin(async move { net.oneshot(req).await.map_err(BoxError::from) })
    }
}
