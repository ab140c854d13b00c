//! Workflow files (YAML or JSON), in the shape of `WorkflowSpec`:
//!
//! ```yaml
//! name: ci
//! inputs: [{ name: repo, required: true }]
//! failure_policy: fail_fast          # or continue
//! tasks:
//!   - id: checkout
//!     agent: checkout                # or agent: { name: checkout, version: 1.0.0 }
//!     input: { repo: "${inputs.repo}" }
//!   - id: review
//!     capability: code.review
//!     depends_on: [checkout]
//!     input: { diff: "${tasks.checkout.output.diff}" }
//!     retry: { max_attempts: 5, initial_backoff_ms: 500 }
//!     timeouts: { start_to_close_ms: 600000 }
//!   - id: release-ok
//!     approval: { message: "Ship ${inputs.repo}?", approvers: [role/maintainer], timeout_ms: 3600000 }
//!     depends_on: [review]
//! ```

use devcycle::proto::scheduler::v1 as pb;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub inputs: Vec<InputFile>,
    #[serde(default)]
    pub failure_policy: Option<String>,
    pub tasks: Vec<TaskFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    pub name: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum AgentFile {
    Name(String),
    Ref {
        name: String,
        #[serde(default)]
        version: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    pub id: String,
    #[serde(default)]
    pub agent: Option<AgentFile>,
    #[serde(default)]
    pub capability: Option<String>,
    #[serde(default)]
    pub approval: Option<ApprovalFile>,
    #[serde(default)]
    pub input: Option<serde_json::Value>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub retry: Option<RetryFile>,
    #[serde(default)]
    pub timeouts: Option<TimeoutsFile>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub concurrency_key: String,
    #[serde(default)]
    pub concurrency_limit: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalFile {
    pub message: String,
    pub approvers: Vec<String>,
    pub timeout_ms: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryFile {
    pub max_attempts: u32,
    pub initial_backoff_ms: u32,
    pub max_backoff_ms: u32,
    pub backoff_multiplier: f64,
    pub jitter: f64,
    pub non_retryable_errors: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsFile {
    pub schedule_to_start_ms: u64,
    pub start_to_close_ms: u64,
    pub heartbeat_ms: u64,
}

/// Parses a workflow file. Errors name the offending key and line.
pub fn parse(text: &str) -> Result<pb::WorkflowSpec, String> {
    let f: WorkflowFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let failure_policy = match f.failure_policy.as_deref() {
        None | Some("fail_fast") => pb::FailurePolicy::FailFast,
        Some("continue") => pb::FailurePolicy::Continue,
        Some(other) => {
            return Err(format!(
                "failure_policy: {other:?} is not fail_fast or continue"
            ));
        }
    };
    let mut tasks = Vec::with_capacity(f.tasks.len());
    for (i, t) in f.tasks.into_iter().enumerate() {
        let target = match (t.agent, t.capability, t.approval) {
            (Some(AgentFile::Name(name)), None, None) => {
                pb::task_spec::Target::Agent(pb::AgentRef {
                    name,
                    version: String::new(),
                })
            }
            (Some(AgentFile::Ref { name, version }), None, None) => {
                pb::task_spec::Target::Agent(pb::AgentRef { name, version })
            }
            (None, Some(c), None) => pb::task_spec::Target::Capability(c),
            (None, None, Some(a)) => pb::task_spec::Target::Approval(pb::ApprovalSpec {
                message: a.message,
                approvers: a.approvers,
                timeout_ms: a.timeout_ms,
            }),
            _ => {
                return Err(format!(
                    "tasks[{i}] ({}): set exactly one of agent, capability and approval",
                    t.id
                ));
            }
        };
        tasks.push(pb::TaskSpec {
            id: t.id,
            target: Some(target),
            input: t.input.map(|v| v.to_string()).unwrap_or_default(),
            depends_on: t.depends_on,
            retry: t.retry.map(|r| pb::RetryPolicy {
                max_attempts: r.max_attempts,
                initial_backoff_ms: r.initial_backoff_ms,
                max_backoff_ms: r.max_backoff_ms,
                backoff_multiplier: r.backoff_multiplier,
                jitter: r.jitter,
                non_retryable_errors: r.non_retryable_errors,
            }),
            timeouts: t.timeouts.map(|t| pb::Timeouts {
                schedule_to_start_ms: t.schedule_to_start_ms,
                start_to_close_ms: t.start_to_close_ms,
                heartbeat_ms: t.heartbeat_ms,
            }),
            priority: t.priority,
            concurrency_key: t.concurrency_key,
            concurrency_limit: t.concurrency_limit,
        });
    }
    Ok(pb::WorkflowSpec {
        name: f.name,
        description: f.description,
        inputs: f
            .inputs
            .into_iter()
            .map(|i| pb::WorkflowInput {
                name: i.name,
                required: i.required,
                default_value: i.default.map(|v| v.to_string()).unwrap_or_default(),
                description: i.description,
            })
            .collect(),
        tasks,
        failure_policy: failure_policy as i32,
    })
}

/// `k=v` run inputs from the command line: JSON if `v` parses as JSON,
/// otherwise `v` as a string.
pub fn input_arg(arg: &str) -> Result<(String, String), String> {
    let (k, v) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?} is not key=value"))?;
    let json = match serde_json::from_str::<serde_json::Value>(v) {
        Ok(_) => v.to_owned(),
        Err(_) => serde_json::Value::String(v.to_owned()).to_string(),
    };
    Ok((k.to_owned(), json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_workflows_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/workflows");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let spec = parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
                crate::spec::check_spec(&spec, "spec").unwrap();
                n += 1;
            }
        }
        assert!(n >= 1);
    }

    #[test]
    fn inputs_from_the_command_line() {
        assert_eq!(input_arg("n=3").unwrap(), ("n".into(), "3".into()));
        assert_eq!(
            input_arg("repo=x/y").unwrap(),
            ("repo".into(), "\"x/y\"".into())
        );
        assert!(input_arg("nokey").is_err());
    }
}
