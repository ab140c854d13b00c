//! Where a call goes: the gateway's own services (Auth, Audit, health,
//! reflection) in process, every other service over mTLS to its owner,
//! chosen by the method's service name. No code per RPC: a new method of a
//! routed service is served once it has a policy entry.

use std::collections::HashMap;

use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::ServiceExt;

use crate::rbac::service_of;

#[derive(Clone)]
pub struct Routes {
    /// `/pkg.Service/` → channel to its owner.
    remote: HashMap<String, Channel>,
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

    /// Routes every method of `service` (`pkg.Service`) to `channel`.
    pub fn remote(mut self, service: &str, channel: Channel) -> Self {
        self.remote.insert(format!("/{service}/"), channel);
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
        let Some(channel) = self.remote.get(service) else {
            return Status::unimplemented(format!(
                "{} is not served by this mesh",
                service.trim_matches('/')
            ))
            .into_http();
        };
        match channel.clone().oneshot(req).await {
            Ok(res) => res.map(Body::new),
            Err(e) => {
                tracing::warn!(method, error = %e, "proxied call failed");
                Status::unavailable(format!("{}: unreachable: {e}", service.trim_matches('/')))
                    .into_http()
            }
        }
    }
}
