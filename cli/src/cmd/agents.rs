//! Agents as the registry lists and finds them.

use std::collections::HashMap;

use devcycle::proto::registry::v1 as pb;
use serde_json::{Value, json};

use super::versions;
use crate::output::{self, Render, or_dash, time};

impl Render for pb::Agent {
    fn columns() -> &'static [&'static str] {
        &["NAME", "LIVE", "OWNER", "LABELS"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            or_dash(&self.live_version),
            self.owner.clone(),
            labels(&self.labels),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name, "owner": self.owner, "description": self.description, "labels": self.labels,
            "live_version": self.live_version, "create_time": time(&self.create_time), "update_time": time(&self.update_time),
        })
    }
}

/// `agent find`: an agent with its live version.
impl Render for pb::AgentMatch {
    fn columns() -> &'static [&'static str] {
        &["NAME", "LIVE", "CAPABILITIES", "LABELS"]
    }
    fn row(&self) -> Vec<String> {
        let a = self.agent.clone().unwrap_or_default();
        let v = self.live.clone().unwrap_or_default();
        vec![
            a.name,
            v.version,
            v.capabilities.join(","),
            labels(&a.labels),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "agent": self.agent.as_ref().map(Render::json),
            "live": self.live.as_ref().map(Render::json),
        })
    }
}

/// `key=value,...`, sorted.
pub fn labels(l: &HashMap<String, String>) -> String {
    let mut v: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    v.join(",")
}

/// One agent, with its live version when known.
pub fn show(a: &pb::Agent, live: Option<&pb::AgentVersion>, as_json: bool) {
    if as_json {
        let mut v = a.json();
        if let Some(l) = live {
            v["live"] = versions::json(l);
        }
        output::json(&v);
        return;
    }
    println!("name:         {}", a.name);
    println!("owner:        {}", a.owner);
    if !a.description.is_empty() {
        println!("description:  {}", a.description);
    }
    println!("labels:       {}", or_dash(&labels(&a.labels)));
    println!("live version: {}", or_dash(&a.live_version));
    if let Some(v) = live {
        println!("capabilities: {}", or_dash(&v.capabilities.join(", ")));
        for d in &v.dependencies {
            println!("depends on:   {} {}", d.agent, d.requirement);
        }
    }
    println!("created:      {}", time(&a.create_time));
}
