//! Deployments: what made a version live, and the history of them.

use devcycle::proto::registry::v1 as pb;
use serde_json::{Value, json};

use crate::output::{self, Render, or_dash, time};

impl Render for pb::Deployment {
    fn columns() -> &'static [&'static str] {
        &["REVISION", "VERSION", "KIND", "PREVIOUS", "TIME", "BY"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.revision.to_string(),
            self.version.clone(),
            kind(self.kind).into(),
            or_dash(&self.previous_version),
            time(&self.deploy_time),
            self.actor.clone(),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "agent": self.agent, "version": self.version, "previous_version": self.previous_version,
            "kind": kind(self.kind), "actor": self.actor, "deploy_time": time(&self.deploy_time), "revision": self.revision,
        })
    }
}

fn kind(k: i32) -> &'static str {
    match pb::DeploymentKind::try_from(k) {
        Ok(pb::DeploymentKind::Rollback) => "rollback",
        _ => "deploy",
    }
}

/// The outcome of `agent deploy` or `agent rollback`.
pub fn show(d: &pb::Deployment, as_json: bool) {
    if as_json {
        output::json(&d.json());
    } else if kind(d.kind) == "rollback" {
        println!(
            "rolled back: {}@{} is live (revision {})",
            d.agent, d.version, d.revision
        );
    } else {
        println!(
            "deployed: {}@{} is live (was {}, revision {})",
            d.agent,
            d.version,
            or_dash(&d.previous_version),
            d.revision
        );
    }
}
