//! Published agent versions and their dependency check.

use devcycle::proto::registry::v1 as pb;
use serde_json::{Value, json};

use crate::output::{self, Render, time};

impl Render for pb::AgentVersion {
    fn columns() -> &'static [&'static str] {
        &["VERSION", "CAPABILITIES", "PUBLISHED", "BY"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.version.clone(),
            self.capabilities.join(","),
            time(&self.publish_time),
            self.published_by.clone(),
        ]
    }
    fn json(&self) -> Value {
        json(self)
    }
}

pub fn json(v: &pb::AgentVersion) -> Value {
    json!({
        "agent": v.agent, "version": v.version, "capabilities": v.capabilities,
        "runtime": runtime_json(v.runtime.as_ref()),
        "dependencies": v.dependencies.iter().map(|d| json!({"agent": d.agent, "requirement": d.requirement})).collect::<Vec<_>>(),
        "publish_time": time(&v.publish_time), "published_by": v.published_by,
    })
}

fn runtime_json(r: Option<&pb::Runtime>) -> Value {
    use pb::runtime::Kind;
    match r.and_then(|r| r.kind.as_ref()) {
        Some(Kind::Process(p)) => json!({
            "process": { "command": p.command, "args": p.args, "env": p.env,
                "network_allowed": p.network_allowed, "require_isolation": p.require_isolation }
        }),
        Some(Kind::Http(h)) => json!({
            "http": { "url": h.url, "protocol": if h.protocol == pb::HttpProtocol::OpenaiChat as i32 { "openai-chat" } else { "json" },
                "model": h.model, "timeout_ms": h.timeout_ms, "token_env": h.token_env,
                "token_file": h.token_file, "max_retries": h.max_retries }
        }),
        Some(Kind::Builtin(b)) => json!({ "builtin": { "name": b.name } }),
        None => Value::Null,
    }
}

/// `agent check`: the resolved dependency tree and any conflicts; exits 1
/// when the version is not compatible.
pub fn show_check(r: &pb::CheckCompatibilityResponse, as_json: bool) {
    if as_json {
        output::json(&json!({
            "compatible": r.compatible,
            "resolved": r.resolved.iter().map(|d| json!({
                "agent": d.agent, "requirement": d.requirement, "version": d.version, "depth": d.depth,
            })).collect::<Vec<_>>(),
            "conflicts": r.conflicts.iter().map(|c| json!({
                "kind": conflict_kind(c.kind), "path": c.path, "agent": c.agent,
                "requirement": c.requirement, "live_version": c.live_version, "message": c.message,
            })).collect::<Vec<_>>(),
        }));
    } else {
        for d in &r.resolved {
            println!(
                "{}{} {} -> {}",
                "  ".repeat(d.depth as usize),
                d.agent,
                d.requirement,
                d.version
            );
        }
        for c in &r.conflicts {
            println!("conflict ({}): {}", conflict_kind(c.kind), c.message);
        }
        println!(
            "{}",
            if r.compatible {
                "compatible"
            } else {
                "NOT compatible"
            }
        );
    }
    if !r.compatible {
        std::process::exit(1);
    }
}

fn conflict_kind(k: i32) -> &'static str {
    match pb::ConflictKind::try_from(k) {
        Ok(pb::ConflictKind::UnknownAgent) => "unknown-agent",
        Ok(pb::ConflictKind::NotDeployed) => "not-deployed",
        Ok(pb::ConflictKind::VersionMismatch) => "version-mismatch",
        Ok(pb::ConflictKind::Cycle) => "cycle",
        _ => "unknown",
    }
}
