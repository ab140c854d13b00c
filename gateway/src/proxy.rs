//! Where a call goes: the gateway's own services (Auth, Audit, health,
//! reflection) in process, every other service to its owner, chosen by the
//! method's service name: in memory when the owner is served by this same
//! process (`devcycle::inproc`), else over mTLS. No code per RPC: a new
//! method of a routed service is served once it has a policy entry.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use devcycle::identity::SpiffeId;
use devcycle::tls::{MeshConnector, MeshTls};
use http::{Request, Response, Uri};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tonic::Status;
use tonic::body::Body;
use tower::ServiceExt;

use crate::error::Error;
use crate::principal::ClientAddr;
use crate::rbac::service_of;

/// One HTTP/2 connection over mTLS to a service, redialled when it closes.
/// Calls go straight to the connection (no buffer task in between: a task
/// hop per call is measurable on the gateway's path).
pub struct Upstream {
    authority: String,
    /// The address, when calls to a service served by this process at it
    /// may go in memory.
    in_process: Option<SocketAddr>,
    tls: Arc<MeshTls>,
    connector: MeshConnector,
    /// The live connection, read without locking on every call.
    current: arc_swap::ArcSwapOption<SendRequest<Body>>,
    /// Held while dialling, so one caller redials and the others wait.
    dialling: tokio::sync::Mutex<()>,
}

impl Upstream {
    pub fn new(tls: &Arc<MeshTls>, addr: &str, expect: SpiffeId, in_process: bool) -> Arc<Self> {
        Arc::new(Self {
            authority: addr.to_owned(),
            in_process: addr.parse().ok().filter(|_| in_process),
            tls: Arc::clone(tls),
            connector: MeshConnector::new(tls, Some(expect)),
            current: arc_swap::ArcSwapOption::empty(),
            dialling: tokio::sync::Mutex::new(()),
        })
    }

    async fn sender(&self) -> Result<SendRequest<Body>, String> {
        let live = |c: &Option<Arc<SendRequest<Body>>>| {
            c.as_ref()
                .filter(|s| !s.is_closed())
                .map(|s| SendRequest::clone(s))
        };
        if let Some(s) = live(&self.current.load_full()) {
            return Ok(s);
        }
        let _dialling = self.dialling.lock().await;
        if let Some(s) = live(&self.current.load_full()) {
            return Ok(s);
        }
        let uri: Uri = format!("http://{}", self.authority)
            .parse()
            .map_err(|e| format!("{e}"))?;
        let io = tokio::time::timeout(Duration::from_secs(5), self.connector.clone().oneshot(uri))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        self.current.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }

    async fn call(&self, mut req: Request<Body>) -> Result<Response<Body>, String> {
        if let Some(local) = self.in_process.and_then(devcycle::inproc::lookup) {
            let remote = req
                .extensions()
                .get::<ClientAddr>()
                .map_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0), |a| {
                    a.0
                });
            return Ok(devcycle::inproc::call(local, &self.tls, remote, req).await);
        }
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        *req.uri_mut() = format!("http://{}{path}", self.authority)
            .parse()
            .map_err(|e| format!("{e}"))?;
        let mut sender = self.sender().await?;
        sender
            .send_request(req)
            .await
            .map(|r| r.map(Body::new))
            .map_err(|e| e.to_string())
    }
}

#[derive(Clone)]
pub struct Routes {
    /// `/pkg.Service/` → its owner.
    remote: HashMap<String, Arc<Upstream>>,
    local_prefixes: Vec<&'static str>,
    local: tonic::service::Routes,
}

impl Routes {
    pub fn new(local: tonic::service::Routes, local_prefixes: Vec<&'static str>) -> Self {
        Self {
            remote: HashMap::new(),
            local_prefixes,
            local: local.prepare(),
        }
    }

    /// Routes every method of `service` (`pkg.Service`) to `upstream`.
    pub fn remote(mut self, service: &str, upstream: Arc<Upstream>) -> Self {
        self.remote.insert(format!("/{service}/"), upstream);
        self
    }

    pub async fn call(&self, method: &str, req: Request<Body>) -> Response<Body> {
        let service = service_of(method);
        if self.local_prefixes.contains(&service) {
            return match self.local.clone().oneshot(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            };
        }
        let Some(upstream) = self.remote.get(service) else {
            let e = Error::Unimplemented(format!(
                "{} is not served by this mesh",
                service.trim_matches('/')
            ));
            return Status::from(e).into_http();
        };
        match upstream.call(req).await {
            Ok(res) => res,
            Err(e) => {
                tracing::warn!(method, error = %e, "proxied call failed");
                let e = Error::unavailable(format!(
                    "{} is unreachable; retry later",
                    service.trim_matches('/')
                ));
                Status::from(e).into_http()
            }
        }
    }
}
