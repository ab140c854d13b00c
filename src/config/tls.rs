//! Certificates on disk.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration, invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Directory of `ca.pem` and `<kind>-<name>.pem|.key`; empty means
    /// `<data_dir>/pki`.
    pub dir: String,
    /// Create a development CA and certificates in `dir` when missing.
    pub dev_ca: bool,
    /// How often certificate files are checked for changes.
    #[serde(with = "duration::whole_millis")]
    pub reload_interval: Duration,
    /// This process's own certificate, key and trusted CA, overriding the
    /// files named after its identity in `dir` (e.g. `tls.crt`, `tls.key`
    /// and `ca.crt` of a mounted cert-manager Secret). Empty: from `dir`.
    pub cert_file: String,
    pub key_file: String,
    pub ca_file: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            dev_ca: false,
            reload_interval: Duration::from_secs(5),
            cert_file: String::new(),
            key_file: String::new(),
            ca_file: String::new(),
        }
    }
}

impl TlsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&self.reload_interval)
        {
            return Err(invalid(
                "tls.reload_interval",
                "must be between 100ms and 10m",
            ));
        }
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            return Err(invalid(
                "tls.cert_file",
                "tls.cert_file and tls.key_file are set together",
            ));
        }
        Ok(())
    }
}
