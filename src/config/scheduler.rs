//! The Scheduler service.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration, invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    pub listen: SocketAddr,
    /// Overrides `database_url` for the scheduler.
    pub database_url: String,
    /// host:port of the registry, to resolve agents.
    pub registry: String,
    /// How often workers heartbeat their leases (`heartbeat_interval`,
    /// milliseconds here).
    #[serde(rename = "heartbeat_interval", with = "duration::millis")]
    pub heartbeat_interval_ms: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7402)),
            database_url: String::new(),
            registry: "127.0.0.1:7401".into(),
            heartbeat_interval_ms: 5_000,
        }
    }
}

impl SchedulerConfig {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.into())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(100..=600_000).contains(&self.heartbeat_interval_ms) {
            return Err(invalid(
                "scheduler.heartbeat_interval",
                "must be between 100ms and 10m",
            ));
        }
        Ok(())
    }
}
