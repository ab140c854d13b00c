//! From a validated plan and resolved agents to the rows of a new run.

use std::collections::HashMap;
use std::sync::Arc;

use devcycle::proto::registry::v1 as reg;
use devcycle::validate::FieldError;
use parking_lot::Mutex;
use prost::Message;
use serde_json::Value;

use crate::error::Error;
use crate::model::*;
use crate::spec::Plan;
use crate::store::Submit;
use crate::template::{self, Ref};

type Compiled = Option<Arc<jsonschema::Validator>>;

/// Compiled input schemas of agent versions, which never change.
#[derive(Default)]
pub struct Schemas {
    compiled: Mutex<HashMap<(String, String), Compiled>>,
}

impl Schemas {
    fn validator(&self, v: &reg::AgentVersion) -> Option<Arc<jsonschema::Validator>> {
        let key = (v.agent.clone(), v.version.clone());
        if let Some(hit) = self.compiled.lock().get(&key) {
            return hit.clone();
        }
        let compiled = if v.input_schema.is_empty() {
            None
        } else {
            serde_json::from_str::<Value>(&v.input_schema)
                .ok()
                .and_then(|s| jsonschema::validator_for(&s).ok())
                .map(Arc::new)
        };
        let mut map = self.compiled.lock();
        if map.len() > 10_000 {
            map.clear();
        }
        map.insert(key, compiled.clone());
        compiled
    }
}

/// What a new run is, besides its tasks.
pub struct RunMeta {
    pub run_id: String,
    pub workflow_name: String,
    pub workflow_revision: i64,
    pub idempotency_key: Option<String>,
    pub created_by: String,
    pub now: i64,
    /// W3C trace context of the submit ('' when traces are off).
    pub traceparent: String,
}

/// Builds the run and its tasks. Tasks without upstream get their input
/// rendered and checked against the agent's input schema now; `prefix`
/// names the spec in errors.
pub fn build(
    plan: Plan,
    agents: Vec<Arc<reg::AgentVersion>>,
    meta: RunMeta,
    schemas: &Schemas,
    prefix: &str,
) -> Result<Submit, Error> {
    let RunMeta {
        run_id,
        workflow_name,
        workflow_revision,
        idempotency_key,
        created_by,
        now,
        traceparent,
    } = meta;
    let ids: Vec<String> = plan
        .tasks
        .iter()
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let index: HashMap<&str, usize> = plan
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.key.as_str(), i))
        .collect();
    let mut dependents: Vec<Vec<String>> = vec![Vec::new(); plan.tasks.len()];
    for (i, t) in plan.tasks.iter().enumerate() {
        for d in &t.depends_on {
            dependents[index[d.as_str()]].push(ids[i].clone());
        }
    }
    let inputs = Value::Object(plan.inputs.clone().into_iter().collect());
    let mut tasks = Vec::with_capacity(plan.tasks.len());
    for (i, (t, agent)) in plan.tasks.into_iter().zip(&agents).enumerate() {
        let approval = agent.agent == APPROVAL_AGENT;
        let field = if approval {
            format!("{prefix}.tasks[{}].approval.message", t.index)
        } else {
            format!("{prefix}.tasks[{}].input", t.index)
        };
        let root = t.depends_on.is_empty();
        let input = if root {
            let rendered = template::render(
                &t.input,
                &|r| match r {
                    Ref::Input(n) => plan.inputs.get(n),
                    Ref::Output { .. } | Ref::Message(_) => None,
                },
                template::MAX_RENDERED_BYTES,
            )
            .map_err(|e| FieldError::new(&field, e))?;
            if let Some(v) = schemas.validator(agent)
                && let Err(e) = v.validate(&rendered)
            {
                return Err(FieldError::new(
                    &field,
                    format!(
                        "does not match the input schema of {}@{}: {e}",
                        agent.agent, agent.version
                    ),
                )
                .into());
            }
            rendered
        } else {
            t.input
        };
        tasks.push(TaskRow {
            id: ids[i].clone(),
            run_id: run_id.clone(),
            key: t.key,
            agent: agent.agent.clone(),
            agent_version: agent.version.clone(),
            state: match (root, approval) {
                (true, true) => TaskState::Waiting,
                (true, false) => TaskState::Ready,
                (false, _) => TaskState::Pending,
            },
            attempt: 0,
            priority: t.priority,
            input: input.to_string(),
            output: None,
            error: None,
            deps_pending: t.depends_on.len() as u32,
            depends_on: t.depends_on,
            dependents: std::mem::take(&mut dependents[i]),
            retry: t.retry,
            schedule_deadline: if root && t.timeouts.schedule_to_start_ms > 0 {
                now + t.timeouts.schedule_to_start_ms as i64
            } else {
                0
            },
            timeouts: t.timeouts,
            concurrency_key: t.concurrency_key,
            concurrency_limit: t.concurrency_limit,
            ready_at: now,
            lease_id: String::new(),
            lease_expires: 0,
            attempt_deadline: 0,
            worker_id: String::new(),
            create_time: now,
            start_time: 0,
            end_time: 0,
            rev: 0,
            traceparent: traceparent.clone(),
        });
    }
    let mut seen = std::collections::HashSet::new();
    let specs = agents
        .iter()
        .filter(|a| a.agent != APPROVAL_AGENT && seen.insert((a.agent.clone(), a.version.clone())))
        .map(|a| AgentSpecRow {
            agent: a.agent.clone(),
            version: a.version.clone(),
            spec: a.encode_to_vec(),
        })
        .collect();
    Ok(Submit {
        run: RunRow {
            id: run_id,
            workflow: workflow_name,
            workflow_revision,
            state: RunState::Running,
            inputs: inputs.to_string(),
            idempotency_key,
            created_by,
            failure_policy: plan.failure_policy,
            create_time: now,
            end_time: 0,
            last_seq: 0,
            rev: 0,
        },
        tasks,
        agents: specs,
    })
}
