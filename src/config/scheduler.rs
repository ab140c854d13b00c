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
    /// How often workers heartbeat their leases.
    #[serde(with = "duration::whole_millis")]
    pub heartbeat_interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7402)),
            database_url: String::new(),
            registry: "127.0.0.1:7401".into(),
            heartbeat_interval: Duration::from_secs(5),
        }
    }
}

impl SchedulerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(Duration::from_millis(100)..=Duration::from_secs(600))
            .contains(&self.heartbeat_interval)
        {
            return Err(invalid(
                "scheduler.heartbeat_interval",
                "must be between 100ms and 10m",
            ));
        }
        Ok(())
    }
}
