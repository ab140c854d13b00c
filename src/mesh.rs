//! Wiring shared by every binary: a workload's identity from configuration.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::identity::SpiffeId;
use crate::tls::{CertificateAuthority, MeshTls, TlsError};

/// Lifetime of development certificates; they are renewed at start-up when a
/// third of it is left.
pub const DEV_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Names a development service certificate is valid for.
pub fn dev_hosts() -> Vec<String> {
    vec!["127.0.0.1".into(), "::1".into(), "localhost".into()]
}

/// Loads the identity `id` from the configured TLS directory, first creating
/// the development CA and the certificate when `tls.dev_ca` is set, and keeps
/// reloading the files until `cancel`.
pub fn identity(
    config: &Config,
    id: &SpiffeId,
    cancel: &CancellationToken,
) -> Result<Arc<MeshTls>, TlsError> {
    crate::tls::install_default_provider();
    let dir = config.tls_dir();
    if config.tls.dev_ca {
        let ca = CertificateAuthority::load_or_create(&dir, &config.trust_domain)?;
        ca.ensure_identity(&dir, id, &dev_hosts(), DEV_CERT_LIFETIME)?;
    }
    let tls = MeshTls::from_files(config.identity_files(id), &config.trust_domain)?;
    tls.spawn_reloader(config.tls.reload_interval, cancel.clone());
    Ok(tls)
}
