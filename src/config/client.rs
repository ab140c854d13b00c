//! Where client commands find the mesh, and as whom they speak.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// host:port of the gateway, which client commands use by default.
    pub gateway: String,
    /// Talk to the services directly over mTLS with the certificate of
    /// `identity` instead of through the gateway with a login.
    pub direct: bool,
    /// host:port of the registry.
    pub registry: String,
    /// host:port of the scheduler.
    pub scheduler: String,
    /// host:port of an executor's control plane.
    pub executor: String,
    /// Identity whose certificate the CLI presents, `<kind>/<name>`.
    pub identity: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            gateway: "127.0.0.1:7400".into(),
            direct: false,
            registry: "127.0.0.1:7401".into(),
            scheduler: "127.0.0.1:7402".into(),
            executor: "127.0.0.1:7403".into(),
            identity: "user/admin".into(),
        }
    }
}
