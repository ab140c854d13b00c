//! Agent manifests: one YAML file describing an agent and one version of it,
//! turned into the requests that create the agent and publish the version.
//! Dependencies and limits are the registry's own types; the runtime keeps a
//! shape of its own (one optional key per kind) that reads well in YAML.
//!
//! ```yaml
//! name: lint
//! owner: platform
//! labels: { lang: rust }
//! version: 1.0.0
//! capabilities: [code.lint]
//! runtime:
//!   process: { command: cargo, args: [clippy], network_allowed: false }
//! input_schema: { type: object }
//! dependencies: [{ agent: checkout, requirement: "^1" }]
//! limits: { wall_time_ms: 600000, memory_bytes: 2147483648 }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use devcycle::proto::registry::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::model::{Dependency, Limits};

/// Larger files are refused before anything is sent.
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub owner: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub runtime: Runtime,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub input_schema: Option<serde_json::Value>,
    #[serde(default)]
    pub output_schema: Option<serde_json::Value>,
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
    #[serde(default)]
    pub limits: Limits,
    /// Describes this version, where `description` describes the agent.
    #[serde(default)]
    pub version_description: String,
}

/// Exactly one of the three kinds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    #[serde(default)]
    pub process: Option<Process>,
    #[serde(default)]
    pub http: Option<Http>,
    #[serde(default)]
    pub builtin: Option<Builtin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub network_allowed: bool,
    #[serde(default)]
    pub require_isolation: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub url: String,
    #[serde(default)]
    pub protocol: HttpProtocol,
    #[serde(default)]
    pub timeout_ms: u32,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub token_env: String,
    #[serde(default)]
    pub token_file: String,
    #[serde(default)]
    pub max_retries: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Builtin {
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HttpProtocol {
    #[default]
    Json,
    OpenaiChat,
}

/// `limits` and `dependencies` are the model's own types, which stay
/// lenient for specs other versions stored; a manifest is a person's file,
/// so unknown keys there are refused as everywhere else in it.
fn check_model_keys(doc: &serde_yaml::Value) -> anyhow::Result<()> {
    let dependency = Dependency {
        agent: String::new(),
        requirement: String::new(),
    };
    let deps = doc.get("dependencies").and_then(|d| d.as_sequence());
    let sections = doc
        .get("limits")
        .map(|l| ("limits".to_owned(), l, keys_of(&Limits::default())))
        .into_iter()
        .chain(
            deps.into_iter()
                .flatten()
                .enumerate()
                .map(|(i, d)| (format!("dependencies[{i}]"), d, keys_of(&dependency))),
        );
    for (field, value, known) in sections {
        let Some(map) = value.as_mapping() else {
            continue;
        };
        for key in map.keys() {
            let key = key.as_str().unwrap_or_default();
            if !known.iter().any(|k| k == key) {
                let expected = known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>();
                bail!(
                    "{field}: unknown field `{key}`, expected one of {}",
                    expected.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// The keys `v` serialises to.
fn keys_of(v: &impl Serialize) -> Vec<String> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m.into_iter().map(|(k, _)| k).collect(),
        _ => Vec::new(),
    }
}

impl Manifest {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        if meta.len() > MAX_MANIFEST_BYTES {
            bail!(
                "{}: manifest is {} bytes, at most {MAX_MANIFEST_BYTES} are allowed",
                path.display(),
                meta.len()
            );
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let m: Self = serde_yaml::from_str(text)?;
        check_model_keys(&serde_yaml::from_str(text)?)?;
        let r = &m.runtime;
        let kinds = [r.process.is_some(), r.http.is_some(), r.builtin.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            bail!("runtime: set exactly one of process, http or builtin");
        }
        Ok(m)
    }

    pub fn agent(&self) -> pb::Agent {
        pb::Agent {
            name: self.name.clone(),
            owner: self.owner.clone(),
            description: self.description.clone(),
            labels: self.labels.clone().into_iter().collect(),
            ..Default::default()
        }
    }

    pub fn version(&self) -> pb::AgentVersion {
        let schema =
            |s: &Option<serde_json::Value>| s.as_ref().map(|v| v.to_string()).unwrap_or_default();
        pb::AgentVersion {
            agent: self.name.clone(),
            version: self.version.clone(),
            runtime: Some(self.runtime()),
            capabilities: self.capabilities.clone(),
            input_schema: schema(&self.input_schema),
            output_schema: schema(&self.output_schema),
            dependencies: self.dependencies.iter().cloned().map(Into::into).collect(),
            limits: Some(self.limits.clone().into()),
            description: self.version_description.clone(),
            ..Default::default()
        }
    }

    fn runtime(&self) -> pb::Runtime {
        use pb::runtime::Kind;
        let r = &self.runtime;
        let kind = if let Some(p) = &r.process {
            Kind::Process(pb::ProcessRuntime {
                command: p.command.clone(),
                args: p.args.clone(),
                env: p.env.clone().into_iter().collect(),
                network_allowed: p.network_allowed,
                require_isolation: p.require_isolation,
            })
        } else if let Some(h) = &r.http {
            Kind::Http(pb::HttpRuntime {
                url: h.url.clone(),
                protocol: match h.protocol {
                    HttpProtocol::Json => pb::HttpProtocol::Json,
                    HttpProtocol::OpenaiChat => pb::HttpProtocol::OpenaiChat,
                } as i32,
                timeout_ms: h.timeout_ms,
                model: h.model.clone(),
                token_env: h.token_env.clone(),
                token_file: h.token_file.clone(),
                max_retries: h.max_retries,
            })
        } else {
            let name = r
                .builtin
                .as_ref()
                .map(|b| b.name.clone())
                .unwrap_or_default();
            Kind::Builtin(pb::BuiltinRuntime { name })
        };
        pb::Runtime { kind: Some(kind) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_manifests_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agents");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let m = Manifest::load(&path).unwrap();
                assert_eq!(m.version().agent, m.name);
                n += 1;
            }
        }
        assert!(n >= 3, "examples/agents holds manifests");
    }

    #[test]
    fn exactly_one_runtime() {
        let two = "name: a\nowner: b\nversion: 1.0.0\nruntime: {builtin: {name: noop}, http: {url: 'http://x'}}\n";
        assert!(
            Manifest::parse(two)
                .unwrap_err()
                .to_string()
                .contains("exactly one")
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Manifest::parse("name: a\nowner: b\nversion: 1.0.0\nruntime: {builtin: {name: noop}}\ncapabilites: []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capabilites"), "{err}");
    }

    #[test]
    fn unknown_limit_and_dependency_keys_are_named() {
        let base = "name: a\nowner: b\nversion: 1.0.0\nruntime: {builtin: {name: noop}}\n";
        let err = Manifest::parse(&format!("{base}limits: {{wall_time: 5}}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits: unknown field `wall_time`"), "{err}");
        let err = Manifest::parse(&format!(
            "{base}dependencies: [{{agent: x, requirement: '^1', optional: true}}]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("dependencies[0]: unknown field `optional`"),
            "{err}"
        );
        let ok = Manifest::parse(&format!(
            "{base}limits: {{wall_time_ms: 5}}\ndependencies: [{{agent: x, requirement: '^1'}}]\n"
        ))
        .unwrap();
        assert_eq!(ok.limits.wall_time_ms, 5);
    }
}
