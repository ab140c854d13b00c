//! The event bus.

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Without brokers, events stay in the process (`devcycle up`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated host:port list; empty means the in-process bus.
    pub brokers: String,
    /// Topics are `<prefix>.<family>`, e.g. `devcycle.run-events`.
    pub topic_prefix: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic_prefix: "devcycle".into(),
        }
    }
}

impl KafkaConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.topic_prefix;
        if !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(
                "kafka.topic_prefix",
                "may only hold letters, digits, '.', '_' and '-'",
            ));
        }
        Ok(())
    }
}
