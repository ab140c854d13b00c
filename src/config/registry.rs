//! The Agent Registry service.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration, invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    pub listen: SocketAddr,
    /// Overrides `database_url` for the registry.
    pub database_url: String,
    /// How often workers heartbeat.
    #[serde(with = "duration::whole_millis")]
    pub heartbeat_interval: Duration,
    /// A worker is DOWN after this many missed heartbeats.
    pub missed_heartbeats: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            database_url: String::new(),
            heartbeat_interval: Duration::from_secs(5),
            missed_heartbeats: 3,
        }
    }
}

impl RegistryConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(Duration::from_millis(100)..=Duration::from_secs(600))
            .contains(&self.heartbeat_interval)
        {
            return Err(invalid(
                "registry.heartbeat_interval",
                "must be between 100ms and 10m",
            ));
        }
        if !(1..=100).contains(&self.missed_heartbeats) {
            return Err(invalid(
                "registry.missed_heartbeats",
                "must be between 1 and 100",
            ));
        }
        Ok(())
    }
}
