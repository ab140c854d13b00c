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
