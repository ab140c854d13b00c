//! Layered configuration: defaults → TOML file → `DEVCYCLE_*` environment
//! (`__` nests: `DEVCYCLE_REGISTRY__LISTEN`) → command-line flags →
//! [`Config::validate`]. Every error names the key at fault. One module per
//! section; durations are humantime strings (see [`duration`]).

mod client;
mod duration;
mod executor;
mod gateway;
mod kafka;
mod registry;
mod scheduler;
mod shutdown;
mod telemetry;
#[cfg(test)]
mod tests;
mod tls;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use client::ClientConfig;
pub use executor::{ExecutorConfig, LimitsConfig};
pub use gateway::{ExternalIssuerConfig, GatewayConfig, jwks_url_is_protected};
pub use kafka::KafkaConfig;
pub use registry::RegistryConfig;
pub use scheduler::SchedulerConfig;
pub use shutdown::ShutdownConfig;
pub use telemetry::{HealthConfig, LogConfig, MetricsConfig};
pub use tls::TlsConfig;

use crate::identity::{SpiffeId, valid_trust_domain};
use crate::tls::IdentityFiles;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Holds the SQLite database and, in development, the CA and certificates.
    pub data_dir: PathBuf,
    /// The SPIFFE trust domain of the mesh.
    pub trust_domain: String,
    /// Default database of every service: `sqlite://...` or `postgres://...`.
    /// Empty means `sqlite://<data_dir>/devcycle.db`.
    pub database_url: String,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub health: HealthConfig,
    pub tls: TlsConfig,
    pub shutdown: ShutdownConfig,
    pub registry: RegistryConfig,
    pub scheduler: SchedulerConfig,
    pub executor: ExecutorConfig,
    pub gateway: GatewayConfig,
    pub kafka: KafkaConfig,
    pub client: ClientConfig,
}

impl Default for Config {
    fn default() -> Self {
        let data_dir = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".devcycle"))
            .unwrap_or_else(|| PathBuf::from(".devcycle"));
        Self {
            data_dir,
            trust_domain: "devcycle.local".into(),
            database_url: String::new(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            health: HealthConfig::default(),
            tls: TlsConfig::default(),
            shutdown: ShutdownConfig::default(),
            registry: RegistryConfig::default(),
            scheduler: SchedulerConfig::default(),
            executor: ExecutorConfig::default(),
            gateway: GatewayConfig::default(),
            kafka: KafkaConfig::default(),
            client: ClientConfig::default(),
        }
    }
}

impl Config {
    /// Defaults, then `file` (if any), then the environment. Callers merge
    /// their flags on top and finish with [`Config::from_figment`].
    pub fn figment(file: Option<&Path>) -> Figment {
        Self::figment_over(Config::default(), file)
    }

    /// Like [`Config::figment`] with other defaults (`devcycle up` turns on
    /// the development CA, for instance).
    pub fn figment_over(defaults: Config, file: Option<&Path>) -> Figment {
        let mut f = Figment::from(Serialized::defaults(defaults));
        if let Some(file) = file {
            f = f.merge(duration::Legacy(Toml::file_exact(file)));
        }
        f.merge(duration::Legacy(
            Env::prefixed("DEVCYCLE_")
                .split("__")
                // Variables for the test harness and the config path itself
                // are not configuration keys.
                .filter(|k| {
                    let k = k.as_str().to_ascii_lowercase();
                    !k.starts_with("test_") && k != "config"
                }),
        ))
    }

    pub fn from_figment(f: Figment) -> Result<Self, ConfigError> {
        let config: Config = f.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Defaults, file and environment, validated.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_trust_domain(&self.trust_domain) {
            return Err(invalid(
                "trust_domain",
                "must be a lowercase DNS name such as devcycle.local",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        check_db_url("database_url", &self.database_url)?;
        check_db_url("registry.database_url", &self.registry.database_url)?;
        check_db_url("scheduler.database_url", &self.scheduler.database_url)?;
        check_db_url("gateway.database_url", &self.gateway.database_url)?;
        self.gateway.validate()?;
        self.scheduler.validate()?;
        self.executor.validate()?;
        self.kafka.validate()?;
        self.metrics.validate()?;
        self.health.validate()?;
        self.log.validate()?;
        self.tls.validate()?;
        self.registry.validate()?;
        self.shutdown.validate()?;
        self.client_identity()?;
        Ok(())
    }

    pub fn tls_dir(&self) -> PathBuf {
        if self.tls.dir.is_empty() {
            self.data_dir.join("pki")
        } else {
            PathBuf::from(&self.tls.dir)
        }
    }

    /// The database of a service: its own URL if set, else the shared one,
    /// else the SQLite file in the data directory.
    pub fn database_url_for<'a>(&'a self, service_url: &'a str) -> String {
        if !service_url.is_empty() {
            service_url.to_owned()
        } else if !self.database_url.is_empty() {
            self.database_url.clone()
        } else {
            format!("sqlite://{}", self.data_dir.join("devcycle.db").display())
        }
    }

    pub fn service_id(&self, name: &str) -> SpiffeId {
        SpiffeId::service(&self.trust_domain, name)
            .expect("service names are constants and the trust domain is validated")
    }

    pub fn client_identity(&self) -> Result<SpiffeId, ConfigError> {
        SpiffeId::parse(&format!(
            "spiffe://{}/{}",
            self.trust_domain, self.client.identity
        ))
        .map_err(|e| invalid("client.identity", format!("{e}")))
    }

    /// Where `id`'s certificate, key and CA are: `tls.cert_file`,
    /// `tls.key_file` and `tls.ca_file` when set (a process serving one
    /// identity, e.g. from a cert-manager Secret), else named after `id` in
    /// the TLS directory.
    pub fn identity_files(&self, id: &SpiffeId) -> IdentityFiles {
        let mut files = IdentityFiles::in_dir(&self.tls_dir(), id);
        let t = &self.tls;
        for (path, set) in [
            (&mut files.cert, &t.cert_file),
            (&mut files.key, &t.key_file),
            (&mut files.ca, &t.ca_file),
        ] {
            if !set.is_empty() {
                *path = PathBuf::from(set);
            }
        }
        files
    }
}

fn check_db_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    if url.is_empty()
        || url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
    {
        Ok(())
    } else {
        Err(invalid(
            key,
            "must start with sqlite:, postgres:// or postgresql://",
        ))
    }
}
