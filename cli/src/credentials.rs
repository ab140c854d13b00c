//! The tokens of `devcycle login`, kept in `<data_dir>/credentials.json`
//! with mode 0600 and replaced atomically.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::Context;
use devcycle::config::Config;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub gateway: String,
    pub user: String,
    pub session_id: String,
    pub access_token: String,
    pub refresh_token: String,
    /// Unix seconds.
    pub access_expires_at: i64,
}

fn path(config: &Config) -> PathBuf {
    config.data_dir.join("credentials.json")
}

impl Credentials {
    /// The saved credentials for the configured gateway, if any.
    pub fn load(config: &Config) -> anyhow::Result<Option<Self>> {
        let p = path(config);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| p.display().to_string()),
        };
        let c: Credentials = serde_json::from_str(&text)
            .with_context(|| format!("{}: not credentials", p.display()))?;
        Ok((c.gateway == config.client.gateway).then_some(c))
    }

    pub fn save(&self, config: &Config) -> anyhow::Result<()> {
        let p = path(config);
        std::fs::create_dir_all(&config.data_dir)?;
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| tmp.display().to_string())?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p).with_context(|| p.display().to_string())?;
        Ok(())
    }

    pub fn remove(config: &Config) -> anyhow::Result<()> {
        match std::fs::remove_file(path(config)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
