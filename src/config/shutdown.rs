//! How a service stops.

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration, invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Health reports NOT_SERVING this long before the listener closes
    /// (`health_grace`, milliseconds here).
    #[serde(rename = "health_grace", with = "duration::millis")]
    pub health_grace_ms: u64,
    /// In-flight calls may run this long after the listener closes
    /// (`drain`, milliseconds here).
    #[serde(rename = "drain", with = "duration::millis")]
    pub drain_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            health_grace_ms: 0,
            drain_ms: 10_000,
        }
    }
}

impl ShutdownConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.drain_ms > 3_600_000 {
            return Err(invalid("shutdown.drain", "must be at most 1h"));
        }
        if self.health_grace_ms > 600_000 {
            return Err(invalid("shutdown.health_grace", "must be at most 10m"));
        }
        Ok(())
    }
}
