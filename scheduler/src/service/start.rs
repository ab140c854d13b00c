//! Starting a run: from a submitted or stored spec to a committed run, and
//! waiting for it to end when the caller asks.

use std::sync::Arc;
use std::time::Duration;

use devcycle::proto::registry::v1 as reg;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::time::now_ms;
use devcycle::validate::{self, FieldError};
use prost::Message;

use super::SchedulerService;
use crate::error::{Error, Result};
use crate::model::APPROVAL_AGENT;
use crate::spec::{self, Target};
use crate::{submit, wire};

const DEFAULT_WAIT: Duration = Duration::from_secs(60);
const MAX_WAIT: Duration = Duration::from_secs(600);

impl SchedulerService {
    pub(crate) async fn workflow_spec(
        &self,
        spec: Option<pb::submit_run_request::Workflow>,
    ) -> Result<(pb::WorkflowSpec, i64, &'static str)> {
        use pb::submit_run_request::Workflow;
        match spec {
            Some(Workflow::Spec(s)) => Ok((s, 0, "spec")),
            Some(Workflow::WorkflowName(name)) => {
                validate::dns_label("workflow_name", &name)?;
                let w = self.store.get_workflow(&name).await?.ok_or_else(|| {
                    Error::NotFound(format!("workflow_name: workflow {name} does not exist"))
                })?;
                let spec = pb::WorkflowSpec::decode(w.spec.as_slice())
                    .map_err(|e| Error::Corrupt(format!("stored workflow {name}: {e}")))?;
                Ok((spec, w.revision, "workflow"))
            }
            None => Err(FieldError::new(
                "workflow_name",
                "a workflow name or an inline spec is required",
            )
            .into()),
        }
    }

    /// Validates, resolves agents, and starts a run as `actor` (or finds the
    /// run its idempotency key names). Returns the run id and whether it is
    /// new.
    pub(super) async fn start(&self, actor: String, s: Start<'_>) -> Result<Started> {
        validate::max_bytes("idempotency_key", s.key, 128)?;
        let key = (!s.key.is_empty()).then(|| s.key.to_owned());
        if let Some(k) = &key
            && let Some(existing) = self.store.run_by_key(&actor, k).await?
        {
            return Ok(Started {
                run_id: existing,
                created: false,
                done: None,
            });
        }
        let prefix = s.prefix;
        let plan = spec::plan_run(&s.spec, s.inputs, prefix)?;
        let mut agents = Vec::with_capacity(plan.tasks.len());
        for t in &plan.tasks {
            let field = match &t.target {
                Target::Agent { .. } => format!("{prefix}.tasks[{}].agent", t.index),
                Target::Capability(_) => format!("{prefix}.tasks[{}].capability", t.index),
                Target::Approval => {
                    agents.push(Arc::clone(&self.approval));
                    continue;
                }
            };
            agents.push(self.resolver.resolve(&t.target, &field).await?);
        }
        let specs = dedupe(&agents);
        let run_id = uuid::Uuid::now_v7().to_string();
        // Waiting starts before the run exists, so its end cannot be missed.
        let done = s.wait.then(|| self.engine.hub.wait_for(&run_id));
        let meta = submit::RunMeta {
            run_id: run_id.clone(),
            workflow_name: s.workflow_name,
            workflow_revision: s.revision,
            idempotency_key: key,
            created_by: actor,
            now: now_ms(),
            traceparent: devcycle::otel::traceparent(&tracing::Span::current()),
        };
        let submitted = match submit::build(plan, agents, meta, &self.schemas, prefix) {
            Ok(submit) => self.engine.submit(submit, specs).await,
            Err(e) => Err(e),
        };
        // A run that was not created has no end to wait for: close the
        // receiver first, so that forgetting it removes the entry.
        let forget = |done: Option<_>| {
            drop(done);
            self.engine.hub.forget_waiters(&run_id);
        };
        let (id, created) = match submitted {
            Ok(v) => v,
            Err(e) => {
                forget(done);
                return Err(e);
            }
        };
        if !created {
            // The key was taken meanwhile: the run is another one.
            forget(done);
            return Ok(Started {
                run_id: id,
                created,
                done: None,
            });
        }
        Ok(Started {
            run_id: id,
            created,
            done,
        })
    }

    /// The run, after waiting for it to end when asked.
    pub(super) async fn answer(
        &self,
        started: Started,
        wait: bool,
        wait_ms: u32,
    ) -> Result<pb::Run> {
        let run_id = started.run_id.as_str();
        let limit = if wait_ms == 0 {
            DEFAULT_WAIT
        } else {
            Duration::from_millis(u64::from(wait_ms)).min(MAX_WAIT)
        };
        if let Some(done) = started.done {
            match tokio::time::timeout(limit, done).await {
                Ok(Ok(f)) => {
                    return Ok(wire::run(&f.0, &f.1));
                }
                _ => self.engine.hub.forget_waiters(run_id),
            }
        } else if wait {
            let done = self.engine.hub.wait_for(run_id);
            // The run may have ended before we started waiting.
            if let Some((run, tasks)) = self.store.get_run(run_id).await?
                && run.state.is_terminal()
            {
                self.engine.hub.forget_waiters(run_id);
                return Ok(wire::run(&run, &tasks));
            }
            match tokio::time::timeout(limit, done).await {
                Ok(Ok(f)) => return Ok(wire::run(&f.0, &f.1)),
                _ => self.engine.hub.forget_waiters(run_id),
            }
        }
        self.fetch_run(run_id).await
    }
}

/// A run that was started or found.
pub(super) struct Started {
    pub(super) run_id: String,
    pub(super) created: bool,
    /// Resolves when the run ends; set when the caller waits for a new run.
    pub(super) done: Option<tokio::sync::oneshot::Receiver<crate::hub::Finished>>,
}

/// A run to start, as a submit described it.
pub(super) struct Start<'a> {
    pub(super) spec: pb::WorkflowSpec,
    pub(super) revision: i64,
    /// Field path of the spec in errors: "spec", "workflow" or "task".
    pub(super) prefix: &'a str,
    pub(super) inputs: &'a std::collections::HashMap<String, String>,
    pub(super) key: &'a str,
    pub(super) workflow_name: String,
    pub(super) wait: bool,
}

fn dedupe(agents: &[Arc<reg::AgentVersion>]) -> Vec<Arc<reg::AgentVersion>> {
    let mut out: Vec<Arc<reg::AgentVersion>> = Vec::new();
    for a in agents {
        if a.agent == APPROVAL_AGENT {
            continue;
        }
        if !out
            .iter()
            .any(|o| o.agent == a.agent && o.version == a.version)
        {
            out.push(Arc::clone(a));
        }
    }
    out
}
