//! Requests to domain types: each check names the field at fault.

use devcycle::proto::registry::v1 as pb;
use devcycle::validate::{self, FieldError};

use super::*;

impl AgentFields {
    /// Validates an agent from a request; `prefix` is the field path of it.
    pub fn from_pb(a: pb::Agent, prefix: &str) -> Result<Self, FieldError> {
        validate::dns_label(&format!("{prefix}.name"), &a.name)?;
        check_owner(&format!("{prefix}.owner"), &a.owner)?;
        validate::max_bytes(&format!("{prefix}.description"), &a.description, 1024)?;
        validate::labels(&format!("{prefix}.labels"), &a.labels)?;
        Ok(Self {
            name: a.name,
            owner: a.owner,
            description: a.description,
            labels: a.labels.into_iter().collect(),
        })
    }
}

pub fn check_owner(field: &str, owner: &str) -> Result<(), FieldError> {
    validate::required(field, owner)?;
    validate::max_bytes(field, owner, 128)?;
    if owner.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub fn parse_version(field: &str, v: &str) -> Result<semver::Version, FieldError> {
    semver::Version::parse(v)
        .map_err(|e| FieldError::new(field, format!("{v:?} is not a semantic version: {e}")))
}

/// Validates a version to publish. Publish time and publisher are not taken
/// from the caller.
pub fn version_from_pb(
    v: pb::AgentVersion,
) -> Result<(String, semver::Version, VersionSpec), FieldError> {
    validate::dns_label("version.agent", &v.agent)?;
    let version = parse_version("version.version", &v.version)?;
    let runtime = runtime_from_pb(v.runtime)?;
    validate::max_items("version.capabilities", v.capabilities.len(), MAX_LIST)?;
    for (i, c) in v.capabilities.iter().enumerate() {
        validate::token(&format!("version.capabilities[{i}]"), c, 64, b"._")?;
    }
    let mut capabilities = v.capabilities;
    capabilities.sort();
    capabilities.dedup();
    check_schema("version.input_schema", &v.input_schema)?;
    check_schema("version.output_schema", &v.output_schema)?;
    validate::max_items("version.dependencies", v.dependencies.len(), MAX_LIST)?;
    let mut dependencies = Vec::with_capacity(v.dependencies.len());
    for (i, d) in v.dependencies.into_iter().enumerate() {
        let field = format!("version.dependencies[{i}]");
        validate::dns_label(&format!("{field}.agent"), &d.agent)?;
        if d.agent == v.agent {
            return Err(FieldError::new(
                format!("{field}.agent"),
                "an agent cannot depend on itself",
            ));
        }
        if dependencies.iter().any(|x: &Dependency| x.agent == d.agent) {
            return Err(FieldError::new(
                format!("{field}.agent"),
                format!("{} is listed twice", d.agent),
            ));
        }
        semver::VersionReq::parse(&d.requirement).map_err(|e| {
            FieldError::new(
                format!("{field}.requirement"),
                format!("{:?} is not a semver requirement: {e}", d.requirement),
            )
        })?;
        dependencies.push(Dependency {
            agent: d.agent,
            requirement: d.requirement,
        });
    }
    validate::max_bytes("version.description", &v.description, 4096)?;
    let limits = v.limits.map(limits_from_pb).unwrap_or_default();
    Ok((
        v.agent,
        version,
        VersionSpec {
            runtime,
            capabilities,
            input_schema: v.input_schema,
            output_schema: v.output_schema,
            dependencies,
            limits,
            description: v.description,
        },
    ))
}

fn runtime_from_pb(r: Option<pb::Runtime>) -> Result<Runtime, FieldError> {
    use pb::runtime::Kind;
    let kind = r.and_then(|r| r.kind).ok_or_else(|| {
        FieldError::new(
            "version.runtime",
            "one of process, http or builtin is required",
        )
    })?;
    Ok(match kind {
        Kind::Process(p) => {
            validate::required("version.runtime.process.command", &p.command)?;
            validate::max_bytes("version.runtime.process.command", &p.command, 4096)?;
            validate::max_items("version.runtime.process.args", p.args.len(), 64)?;
            validate::max_items("version.runtime.process.env", p.env.len(), 64)?;
            for k in p.env.keys() {
                let ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    return Err(FieldError::new(
                        format!("version.runtime.process.env[{k}]"),
                        "is not an environment variable name",
                    ));
                }
                if validate::is_loader_variable(k) {
                    return Err(FieldError::new(
                        format!("version.runtime.process.env[{k}]"),
                        "changes how programs are loaded; agents may not set it",
                    ));
                }
            }
            Runtime::Process {
                command: p.command,
                args: p.args,
                env: p.env.into_iter().collect(),
                network_allowed: p.network_allowed,
                require_isolation: p.require_isolation,
            }
        }
        Kind::Http(h) => {
            let field = "version.runtime.http.url";
            validate::required(field, &h.url)?;
            if !(h.url.starts_with("http://") || h.url.starts_with("https://"))
                || h.url.parse::<http::Uri>().is_err()
            {
                return Err(FieldError::new(
                    field,
                    format!("{:?} is not an http(s) URL", h.url),
                ));
            }
            let protocol = match pb::HttpProtocol::try_from(h.protocol) {
                Ok(pb::HttpProtocol::Json) | Ok(pb::HttpProtocol::Unspecified) => {
                    HttpProtocol::Json
                }
                Ok(pb::HttpProtocol::OpenaiChat) => HttpProtocol::OpenaiChat,
                Err(_) => {
                    return Err(FieldError::new(
                        "version.runtime.http.protocol",
                        format!("unknown protocol {}", h.protocol),
                    ));
                }
            };
            if h.timeout_ms > 600_000 {
                return Err(FieldError::new(
                    "version.runtime.http.timeout_ms",
                    "must be at most 600000",
                ));
            }
            if h.max_retries > 10 {
                return Err(FieldError::new(
                    "version.runtime.http.max_retries",
                    "must be at most 10",
                ));
            }
            Runtime::Http {
                url: h.url,
                protocol,
                timeout_ms: h.timeout_ms,
                model: h.model,
                token_env: h.token_env,
                token_file: h.token_file,
                max_retries: h.max_retries,
            }
        }
        Kind::Builtin(b) => {
            if !matches!(b.name.as_str(), "noop" | "echo") {
                return Err(FieldError::new(
                    "version.runtime.builtin.name",
                    format!("{:?} is not a builtin (noop, echo)", b.name),
                ));
            }
            Runtime::Builtin { name: b.name }
        }
    })
}

fn limits_from_pb(l: pb::ResourceLimits) -> Limits {
    Limits {
        wall_time_ms: l.wall_time_ms,
        memory_bytes: l.memory_bytes,
        cpu_time_ms: l.cpu_time_ms,
        max_processes: l.max_processes,
        max_open_files: l.max_open_files,
        max_output_bytes: l.max_output_bytes,
    }
}

/// An empty schema means "any JSON"; otherwise it must be a JSON Schema that
/// compiles (valid against its meta-schema, resolvable references).
fn check_schema(field: &str, text: &str) -> Result<(), FieldError> {
    if text.is_empty() {
        return Ok(());
    }
    validate::max_bytes(field, text, MAX_SCHEMA_BYTES)?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| FieldError::new(field, format!("is not JSON: {e}")))?;
    jsonschema::meta::validate(&value)
        .map_err(|e| FieldError::new(field, format!("is not a valid JSON Schema: {e}")))?;
    jsonschema::validator_for(&value)
        .map_err(|e| FieldError::new(field, format!("is not a usable JSON Schema: {e}")))?;
    Ok(())
}
