//! Accepting and opening mTLS connections. Handshakes run off the accept
//! loop so a slow or hostile peer cannot stall others; each accepted stream
//! carries the peer's verified SPIFFE ID into the request extensions.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::{MeshTls, svid_of};
use crate::identity::SpiffeId;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection: inserted by tonic into every
/// request's extensions.
#[derive(Debug, Clone)]
pub struct MeshConnectInfo {
    pub remote: SocketAddr,
    /// `None` only for connections that are not mTLS (the gateway's public
    /// listener); mesh listeners never accept a connection without one.
    pub peer: Option<Arc<SpiffeId>>,
    /// When the peer's certificate was issued (ms since the epoch), checked
    /// against the deny list ([`crate::denylist`]).
    pub issued_ms: i64,
}

/// An accepted mTLS connection.
pub struct MeshStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: MeshConnectInfo,
}

impl Connected for MeshStream {
    type ConnectInfo = MeshConnectInfo;
    fn connect_info(&self) -> MeshConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts connections on `listener` and yields those that complete an mTLS
/// handshake with a valid mesh SVID. Ends when the consumer drops the stream.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<MeshTls>,
) -> impl Stream<Item = Result<MeshStream, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Result<MeshStream, io::Error>>(64);
    let acceptor = TlsAcceptor::from(tls.server_config(&[b"h2"]));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, tls) = (acceptor.clone(), tx.clone(), Arc::clone(&tls));
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let leaf = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first());
                        let peer = leaf.and_then(|leaf| svid_of(leaf, tls.trust_domain()).ok());
                        let Some(peer) = peer else {
                            tracing::warn!(%remote, "mTLS peer without an SVID after handshake");
                            return;
                        };
                        let info = MeshConnectInfo {
                            remote,
                            peer: Some(Arc::new(peer)),
                            issued_ms: leaf.map(super::verify::issued_ms).unwrap_or(0),
                        };
                        let _ = tx
                            .send(Ok(MeshStream {
                                inner: stream,
                                info,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "mTLS handshake refused"),
                    Err(_) => tracing::debug!(%remote, "mTLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Opens mTLS connections for tonic channels: `Endpoint::connect_with_connector`.
#[derive(Clone)]
pub struct MeshConnector {
    connector: TlsConnector,
}

impl MeshConnector {
    /// Connects as `tls`'s identity, requiring the server to be `expect`.
    pub fn new(tls: &Arc<MeshTls>, expect: Option<SpiffeId>) -> Self {
        Self {
            connector: TlsConnector::from(tls.client_config(expect)),
        }
    }

    /// Connects with any client config, e.g. [`super::public_client_config`].
    pub fn with_config(config: Arc<rustls::ClientConfig>) -> Self {
        Self {
            connector: TlsConnector::from(config),
        }
    }
}

impl tower::Service<http::Uri> for MeshConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.connector.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URI without host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let stream = connector.connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}
