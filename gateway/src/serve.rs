//! The public listener: TLS (rustls) with HTTP/2 for gRPC and HTTP/1.1 for
//! grpc-web on one port, CORS for the allowed origins, stream and header
//! limits, and a graceful stop.

use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use http::{HeaderName, HeaderValue, Method, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::front::FrontService;
use crate::principal::ClientAddr;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Large enough that an oversized token reaches the verifier (and gets
/// UNAUTHENTICATED) rather than a bare stream reset.
const MAX_HEADER_LIST: u32 = 128 * 1024;

pub struct Listener {
    pub listener: TcpListener,
    pub tls: Arc<rustls::ServerConfig>,
    pub origins: Vec<HeaderValue>,
    pub max_concurrent_streams: u32,
    pub drain: Duration,
    /// `{"keys": [...]}`, served at `GET /.well-known/jwks.json`.
    pub jwks: bytes::Bytes,
}

fn cors(origins: Vec<HeaderValue>) -> CorsLayer {
    let h = |s: &'static str| HeaderName::from_static(s);
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            h("content-type"),
            h("authorization"),
            h("x-grpc-web"),
            h("x-user-agent"),
            h("grpc-timeout"),
        ])
        .expose_headers([
            h("grpc-status"),
            h("grpc-message"),
            h("grpc-status-details-bin"),
            h("retry-after"),
            h("retry-after-ms"),
        ])
        .max_age(Duration::from_secs(600))
}

fn jwks_response(jwks: &bytes::Bytes) -> http::Response<tonic::body::Body> {
    let mut res = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
        jwks.clone(),
    )));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    res.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    res
}

pub async fn serve(l: Listener, front: FrontService, shutdown: CancellationToken) {
    let stack = tower::ServiceBuilder::new()
        .layer(cors(l.origins))
        .layer(tonic_web::GrpcWebLayer::new())
        .service(front);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(l.max_concurrent_streams)
        .max_header_list_size(MAX_HEADER_LIST)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(MAX_HEADER_LIST as usize * 2);
    let builder = Arc::new(builder);
    let acceptor = TlsAcceptor::from(l.tls);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = l.listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, builder, stack) = (acceptor.clone(), builder.clone(), stack.clone());
        let jwks = l.jwks.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "TLS handshake refused"),
                Err(_) => return tracing::debug!(%remote, "TLS handshake timed out"),
            };
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                if req.method() == Method::GET && req.uri().path() == "/.well-known/jwks.json" {
                    return Either::Left(std::future::ready(Ok(jwks_response(&jwks))));
                }
                req.extensions_mut().insert(ClientAddr(remote));
                Either::Right(stack.clone().oneshot(req))
            });
            let conn = builder
                .serve_connection(TokioIo::new(tls), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(l.drain) => tracing::warn!("gateway drain deadline passed; dropping open calls"),
    }
}
