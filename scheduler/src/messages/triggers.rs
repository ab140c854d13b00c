//! Triggers: each reads its topic as its own consumer group and starts a
//! run of its workflow for every message its filters pass.
//!
//! At least once, exactly one run: a message is acked only after its run
//! is committed, and the run's idempotency key is the trigger's id and the
//! message's, so a redelivered message finds the run it already started.
//! A message that can never start a run (its inputs do not render, the
//! workflow is gone) goes to the group's dead letters at once, with why;
//! one that failed for a passing reason (the registry is down) is retried
//! until the topic's max deliveries.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use devcycle::proto::messages::v1 as pb;
use devcycle::proto::scheduler::v1 as spb;
use devcycle::validate::{self, FieldError};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::service::Inner;
use super::{MessageLog, Outcome, TopicRow, TriggerRow};
use crate::error::{Error, Result};
use crate::service::SchedulerService;
use crate::template::{self, Ref};

const MAX_FILTERS: usize = 32;
/// Messages a trigger holds at once, and how long before one returns.
const IN_FLIGHT: usize = 16;
const DEADLINE_MS: i64 = 60_000;
/// Wait before a message that failed for a passing reason returns.
const RETRY_MS: i64 = 1_000;

/// Checks a trigger to create against the workflow it names.
pub(super) async fn check(
    runs: &SchedulerService,
    t: &pb::Trigger,
) -> Result<(
    Vec<(String, String)>,
    Vec<(String, String)>,
    Vec<(String, String)>,
)> {
    validate::dns_label("trigger.name", &t.name)?;
    validate::dns_label("trigger.workflow_name", &t.workflow_name)?;
    let which = spb::submit_run_request::Workflow::WorkflowName(t.workflow_name.clone());
    let (wf, _, _) = runs.workflow_spec(Some(which)).await.map_err(|e| match e {
        Error::NotFound(m) => Error::NotFound(format!("trigger.{m}")),
        other => other,
    })?;
    if t.header_filter.len() > MAX_FILTERS || t.payload_filter.len() > MAX_FILTERS {
        let field = if t.header_filter.len() > MAX_FILTERS {
            "trigger.header_filter"
        } else {
            "trigger.payload_filter"
        };
        return Err(FieldError::new(field, format!("at most {MAX_FILTERS} entries")).into());
    }
    for (k, v) in &t.header_filter {
        let f = format!("trigger.header_filter[{k:?}]");
        validate::token(&f, k, 128, b"._")?;
        validate::max_bytes(&f, v, super::check::MAX_HEADER_VALUE_BYTES)?;
    }
    for (path, want) in &t.payload_filter {
        let f = format!("trigger.payload_filter[{path:?}]");
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(FieldError::new(f, "a path is dotted names or indices, none empty").into());
        }
        validate::max_bytes(&f, want, 4096)?;
        serde_json::from_str::<Value>(want)
            .map_err(|e| FieldError::new(&f, format!("the expected value is not JSON: {e}")))?;
    }
    let declared: Vec<&str> = wf.inputs.iter().map(|i| i.name.as_str()).collect();
    for (name, text) in &t.inputs {
        let f = format!("trigger.inputs[{name}]");
        if !declared.contains(&name.as_str()) {
            return Err(FieldError::new(
                f,
                format!("workflow {} declares no such input", t.workflow_name),
            )
            .into());
        }
        validate::max_bytes(&f, text, 64 * 1024)?;
        let v: Value = serde_json::from_str(text)
            .map_err(|e| FieldError::new(&f, format!("is not JSON: {e}")))?;
        for r in template::refs(&v).map_err(|e| FieldError::new(&f, e))? {
            if let Ref::Message(path) = &r
                && !message_path(path)
            {
                return Err(FieldError::new(
                    &f,
                    format!("{r}: a message has id, key, topic, headers.NAME and payload[.PATH]"),
                )
                .into());
            }
            if !matches!(r, Ref::Message(_)) {
                return Err(FieldError::new(
                    &f,
                    format!("{r}: only ${{message.*}} may be used here"),
                )
                .into());
            }
        }
    }
    for i in &wf.inputs {
        if i.required && i.default_value.is_empty() && !t.inputs.contains_key(&i.name) {
            return Err(FieldError::new(
                format!("trigger.inputs[{}]", i.name),
                format!("workflow {} requires this input", t.workflow_name),
            )
            .into());
        }
    }
    let sorted = |m: &HashMap<String, String>| -> Vec<(String, String)> {
        let b: BTreeMap<_, _> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        b.into_iter().collect()
    };
    Ok((
        sorted(&t.header_filter),
        sorted(&t.payload_filter),
        sorted(&t.inputs),
    ))
}

/// Whether `${message.PATH}` names a part of every message.
fn message_path(path: &[String]) -> bool {
    match path.first().map(String::as_str) {
        Some("id" | "key" | "topic") => path.len() == 1,
        Some("headers") => path.len() == 2,
        Some("payload") => true,
        _ => false,
    }
}

/// The message as templates and filters see it.
fn as_json(m: &pb::Message) -> Value {
    let payload = serde_json::from_slice(&m.payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&m.payload).into_owned()));
    serde_json::json!({
        "id": m.id,
        "key": m.key,
        "topic": m.topic,
        "headers": m.headers,
        "payload": payload,
    })
}

/// A trigger with its filters and inputs parsed, once per reader.
struct Compiled {
    row: TriggerRow,
    /// Dotted path, split, to the value expected there.
    payload_filter: Vec<(Vec<String>, Value)>,
    /// Input name to its template, or why the stored text does not parse.
    inputs: Vec<(String, std::result::Result<Value, String>)>,
}

impl Compiled {
    fn new(row: TriggerRow) -> Self {
        let payload_filter = row
            .payload_filter
            .iter()
            .map(|(path, want)| {
                (
                    path.split('.').map(str::to_owned).collect(),
                    serde_json::from_str(want).unwrap_or(Value::Null),
                )
            })
            .collect();
        let inputs = row
            .inputs
            .iter()
            .map(|(name, text)| {
                let v = serde_json::from_str(text).map_err(|e| format!("inputs[{name}]: {e}"));
                (name.clone(), v)
            })
            .collect();
        Self {
            row,
            payload_filter,
            inputs,
        }
    }
}

fn passes(t: &Compiled, m: &pb::Message, doc: &Value) -> bool {
    let headers = t
        .row
        .header_filter
        .iter()
        .all(|(k, v)| m.headers.get(k) == Some(v));
    headers
        && t.payload_filter
            .iter()
            .all(|(path, want)| template::select(&doc["payload"], path) == Some(want))
}

/// The run's inputs for one message, as JSON text.
fn render_inputs(
    t: &Compiled,
    doc: &Value,
) -> std::result::Result<HashMap<String, String>, String> {
    t.inputs
        .iter()
        .map(|(name, v)| {
            let v = v.as_ref().map_err(Clone::clone)?;
            let lookup = |r: &Ref| match r {
                Ref::Message(path) => template::select(doc, path),
                _ => None,
            };
            let out = template::render(v, &lookup, template::MAX_RENDERED_BYTES)
                .map_err(|e| format!("inputs[{name}]: {e}"))?;
            Ok((name.clone(), out.to_string()))
        })
        .collect()
}

enum Fail {
    /// Will not work however often it is tried.
    Never(String),
    /// May work on a later delivery.
    Later(String),
}

async fn fire(
    runs: &SchedulerService,
    c: &Compiled,
    m: &pb::Message,
) -> std::result::Result<Outcome, Fail> {
    let doc = as_json(m);
    if !passes(c, m, &doc) {
        return Ok(Outcome::Skipped);
    }
    let inputs = render_inputs(c, &doc).map_err(Fail::Never)?;
    let t = &c.row;
    let key = format!("trigger/{}/{}", t.id, m.id);
    match runs
        .start_stored(t.owner.clone(), &t.workflow, &inputs, &key)
        .await
    {
        Ok((run_id, true)) => Ok(Outcome::Fired { run_id }),
        // Delivered again: its run was started before.
        Ok((_, false)) => Ok(Outcome::Repeated),
        Err(
            e @ (Error::Invalid(_)
            | Error::NotFound(_)
            | Error::PermissionDenied(_)
            | Error::AlreadyExists(_)),
        ) => Err(Fail::Never(e.to_string())),
        // Includes FAILED_PRECONDITION: an agent without a live version
        // (mid-deploy) may have one on the next delivery.
        Err(e) => Err(Fail::Later(e.to_string())),
    }
}

impl Inner {
    /// Keeps one reader per stored trigger until `stop`, starting and
    /// stopping them as triggers are created and deleted.
    pub(super) async fn run_triggers(
        self: Arc<Self>,
        runs: Arc<SchedulerService>,
        stop: CancellationToken,
    ) {
        if self.opener_absent() {
            return;
        }
        let mut running: HashMap<String, (String, CancellationToken)> = HashMap::new();
        loop {
            let changed = self.triggers_changed.notified();
            // Until the log is open there are no triggers: creating one
            // opens it and wakes this loop.
            let Some(log) = self.opened().cloned() else {
                tokio::select! {
                    _ = changed => continue,
                    _ = stop.cancelled() => return,
                }
            };
            match all_triggers(&*log).await {
                Ok(list) => {
                    let ids: HashMap<&str, &str> = list
                        .iter()
                        .map(|t| (t.name.as_str(), t.id.as_str()))
                        .collect();
                    running.retain(|name, (id, token)| {
                        let keep = ids.get(name.as_str()) == Some(&id.as_str());
                        if !keep {
                            token.cancel();
                        }
                        keep
                    });
                    for t in list {
                        if running.contains_key(&t.name) {
                            continue;
                        }
                        let token = stop.child_token();
                        running.insert(t.name.clone(), (t.id.clone(), token.clone()));
                        let this = Arc::clone(&self);
                        tokio::spawn(this.run_trigger(
                            Arc::clone(&log),
                            Arc::clone(&runs),
                            t,
                            token,
                        ));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list triggers"),
            }
            tokio::select! {
                _ = changed => {}
                // Retries a failed listing.
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn run_trigger(
        self: Arc<Self>,
        log: Arc<dyn MessageLog>,
        runs: Arc<SchedulerService>,
        t: TriggerRow,
        stop: CancellationToken,
    ) {
        let group = t.group();
        let t = Compiled::new(t);
        while !stop.is_cancelled() {
            let topic = match log.get_topic(&t.row.topic).await {
                Ok(Some(topic)) => topic,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, trigger = %t.row.name, "cannot read the trigger's topic");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let (tx, mut rx) = mpsc::channel(IN_FLIGHT);
            let feeder = tokio::spawn(Arc::clone(&self).deliver_loop(
                topic.clone(),
                group.clone(),
                IN_FLIGHT,
                DEADLINE_MS,
                tx,
            ));
            loop {
                let next = tokio::select! {
                    m = rx.recv() => m,
                    _ = stop.cancelled() => None,
                };
                match next {
                    Some(Ok(pb::SubscribeResponse { message: Some(m) })) => {
                        self.settle(&*log, &runs, &t, &topic, &group, m).await;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, trigger = %t.row.name, "trigger delivery failed");
                        break;
                    }
                    None => break,
                }
            }
            drop(rx);
            let _ = feeder.await;
            if !stop.is_cancelled() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Starts the message's run (or not), then acks, retries or buries it.
    async fn settle(
        &self,
        log: &dyn MessageLog,
        runs: &SchedulerService,
        c: &Compiled,
        topic: &TopicRow,
        group: &str,
        m: pb::Message,
    ) {
        let t = &c.row;
        let outcome = match fire(runs, c, &m).await {
            Ok(o) => log
                .ack(&topic.name, group, std::slice::from_ref(&m.id))
                .await
                .map(|_| o),
            Err(Fail::Never(why)) => log
                .bury(&topic.name, group, &m.id, &why)
                .await
                .map(|_| Outcome::Failed { error: why }),
            Err(Fail::Later(why)) => log
                .nack(topic, group, &m.id, RETRY_MS, &why)
                .await
                .map(|_| Outcome::Failed { error: why }),
        };
        let recorded = match outcome {
            Ok(o) => log.record(&t.name, &t.id, &o).await,
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            // The message stays held and returns at its deadline.
            tracing::warn!(error = %e, trigger = %t.name, id = %m.id, "cannot settle a trigger's message");
        }
        self.notify(&topic.name).notify_waiters();
    }
}

async fn all_triggers(log: &dyn MessageLog) -> Result<Vec<TriggerRow>> {
    let mut out: Vec<TriggerRow> = Vec::new();
    loop {
        let after = out.last().map(|t| t.name.clone()).unwrap_or_default();
        let page = log.list_triggers("", &after, 500).await?;
        let done = page.len() < 500;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger() -> Compiled {
        Compiled::new(TriggerRow {
            name: "t".into(),
            id: "i".into(),
            topic: "pushes".into(),
            workflow: "ci".into(),
            header_filter: vec![("event".into(), "push".into())],
            payload_filter: vec![("ref".into(), "\"main\"".into())],
            inputs: vec![
                ("repo".into(), "\"${message.payload.repo}\"".into()),
                (
                    "note".into(),
                    "\"${message.id} on ${message.headers.event}\"".into(),
                ),
            ],
            owner: "user/a".into(),
            create_time: 0,
            fired: 0,
            skipped: 0,
            last_run_id: String::new(),
            last_error: String::new(),
        })
    }

    fn message(event: &str, payload: &str) -> pb::Message {
        pb::Message {
            id: "m1".into(),
            topic: "pushes".into(),
            payload: payload.as_bytes().to_vec(),
            headers: HashMap::from([("event".into(), event.into())]),
            ..Default::default()
        }
    }

    #[test]
    fn filters_pass_only_matching_messages() {
        let t = trigger();
        let ok = message("push", r#"{"ref": "main", "repo": {"name": "r"}}"#);
        assert!(passes(&t, &ok, &as_json(&ok)));
        let tag = message("tag", r#"{"ref": "main"}"#);
        assert!(!passes(&t, &tag, &as_json(&tag)));
        let branch = message("push", r#"{"ref": "dev"}"#);
        assert!(!passes(&t, &branch, &as_json(&branch)));
        let text = message("push", "not json");
        assert!(!passes(&t, &text, &as_json(&text)));
    }

    #[test]
    fn inputs_render_from_the_message() {
        let t = trigger();
        let m = message("push", r#"{"ref": "main", "repo": {"name": "r"}}"#);
        let inputs = render_inputs(&t, &as_json(&m)).unwrap();
        assert_eq!(inputs["repo"], r#"{"name":"r"}"#);
        assert_eq!(inputs["note"], r#""m1 on push""#);
        let bare = message("push", r#"{"ref": "main"}"#);
        let e = render_inputs(&t, &as_json(&bare)).unwrap_err();
        assert!(
            e.contains("inputs[repo]") && e.contains("${message.payload.repo}"),
            "{e}"
        );
    }
}
