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
    /// How often certificate files are checked for changes
    /// (`reload_interval`, milliseconds here).
    #[serde(rename = "reload_interval", with = "duration::millis")]
    pub reload_interval_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            dev_ca: false,
            reload_interval_ms: 5_000,
        }
    }
}

impl TlsConfig {
    pub fn reload_interval(&self) -> Duration {
        Duration::from_millis(self.reload_interval_ms)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(100..=600_000).contains(&self.reload_interval_ms) {
            return Err(invalid(
                "tls.reload_interval",
                "must be between 100ms and 10m",
            ));
        }
        Ok(())
    }
}
