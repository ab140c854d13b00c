//! How a service stops.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration, invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Health reports NOT_SERVING this long before the listener closes.
    #[serde(with = "duration::whole_millis")]
    pub health_grace: Duration,
    /// In-flight calls may run this long after the listener closes.
    #[serde(with = "duration::whole_millis")]
    pub drain: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            health_grace: Duration::ZERO,
            drain: Duration::from_secs(10),
        }
    }
}

impl ShutdownConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.drain > Duration::from_secs(3600) {
            return Err(invalid("shutdown.drain", "must be at most 1h"));
        }
        if self.health_grace > Duration::from_secs(600) {
            return Err(invalid("shutdown.health_grace", "must be at most 10m"));
        }
        Ok(())
    }
}
