//! Validation of workflow definitions and run inputs. Everything a submit can
//! get wrong is found here, before anything is written, and named by field.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use devcycle::proto::scheduler::v1 as pb;
use devcycle::validate::{self, FieldError};
use serde_json::Value;

use crate::model::{FailurePolicy, RetryPolicy, Timeouts};
use crate::template::{self, Ref};

pub const MAX_TASKS: usize = 1000;
pub const MAX_INPUT_BYTES: usize = 256 * 1024;
const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;
/// Longest concurrency key, rendered.
const MAX_KEY_BYTES: usize = 256;
/// How long an approval waits for a decision by default, and at most.
const DEFAULT_APPROVAL_MS: u64 = 24 * 3600 * 1000;
const MAX_APPROVAL_MS: u64 = 30 * 24 * 3600 * 1000;
/// Roles an approval may name (`role/<role>`).
const ROLES: [&str; 4] = ["admin", "maintainer", "developer", "viewer"];
/// Below this a lease could not be renewed reliably over a network.
const MIN_HEARTBEAT_MS: u64 = 100;

/// What runs a task.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Agent {
        name: String,
        version: Option<String>,
    },
    Capability(String),
    /// No agent: a person decides ([`crate::model::APPROVAL_AGENT`]).
    Approval,
}

/// A validated task of a workflow, before agents are resolved.
#[derive(Debug, Clone)]
pub struct TaskPlan {
    pub key: String,
    pub target: Target,
    /// JSON input with templates still in it.
    pub input: Value,
    pub depends_on: Vec<String>,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    pub priority: i32,
    /// With `${inputs.*}` expanded at submit.
    pub concurrency_key: String,
    pub concurrency_limit: u32,
    /// Index in the spec, for error messages.
    pub index: usize,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub failure_policy: FailurePolicy,
    pub tasks: Vec<TaskPlan>,
    /// The run's inputs, defaults applied.
    pub inputs: BTreeMap<String, Value>,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError::new(field, reason)
}

/// Validates a workflow spec on its own (`PutWorkflow`).
pub fn check_spec(spec: &pb::WorkflowSpec, prefix: &str) -> Result<(), FieldError> {
    plan(spec, &HashMap::new(), prefix, false).map(|_| ())
}

/// Validates a spec and a run's inputs into a plan.
pub fn plan_run(
    spec: &pb::WorkflowSpec,
    inputs: &HashMap<String, String>,
    prefix: &str,
) -> Result<Plan, FieldError> {
    plan(spec, inputs, prefix, true)
}

fn plan(
    spec: &pb::WorkflowSpec,
    run_inputs: &HashMap<String, String>,
    prefix: &str,
    with_inputs: bool,
) -> Result<Plan, FieldError> {
    validate::dns_label(&format!("{prefix}.name"), &spec.name)?;
    validate::max_bytes(&format!("{prefix}.description"), &spec.description, 4096)?;
    let failure_policy = match pb::FailurePolicy::try_from(spec.failure_policy) {
        Ok(pb::FailurePolicy::Continue) => FailurePolicy::Continue,
        Ok(_) => FailurePolicy::FailFast,
        Err(_) => return Err(err(format!("{prefix}.failure_policy"), "unknown policy")),
    };

    // Declared inputs, and the run's values for them.
    let mut declared = HashSet::new();
    let mut inputs = BTreeMap::new();
    for (i, d) in spec.inputs.iter().enumerate() {
        let field = format!("{prefix}.inputs[{i}]");
        validate::token(&format!("{field}.name"), &d.name, 63, b"_")?;
        if !declared.insert(d.name.clone()) {
            return Err(err(
                format!("{field}.name"),
                format!("{} is declared twice", d.name),
            ));
        }
        let default = if d.default_value.is_empty() {
            None
        } else {
            Some(parse_json(
                &format!("{field}.default_value"),
                &d.default_value,
            )?)
        };
        if !with_inputs {
            continue;
        }
        match run_inputs.get(&d.name) {
            Some(v) => {
                inputs.insert(
                    d.name.clone(),
                    parse_json(&format!("inputs[{}]", d.name), v)?,
                );
            }
            None => match default {
                Some(v) => {
                    inputs.insert(d.name.clone(), v);
                }
                None if d.required => {
                    return Err(err(
                        format!("inputs[{}]", d.name),
                        "is required by the workflow",
                    ));
                }
                None => {}
            },
        }
    }
    if with_inputs {
        let mut unknown: Vec<&String> = run_inputs
            .keys()
            .filter(|k| !declared.contains(*k))
            .collect();
        unknown.sort();
        if let Some(k) = unknown.first() {
            return Err(err(
                format!("inputs[{k}]"),
                "is not an input of the workflow",
            ));
        }
    }

    if spec.tasks.is_empty() {
        return Err(err(
            format!("{prefix}.tasks"),
            "a workflow needs at least one task",
        ));
    }
    validate::max_items(&format!("{prefix}.tasks"), spec.tasks.len(), MAX_TASKS)?;
    let mut index = HashMap::new();
    for (i, t) in spec.tasks.iter().enumerate() {
        let field = format!("{prefix}.tasks[{i}].id");
        validate::token(&field, &t.id, 63, b"_")?;
        if index.insert(t.id.clone(), i).is_some() {
            return Err(err(field, format!("{} is used by two tasks", t.id)));
        }
    }
    let mut tasks = Vec::with_capacity(spec.tasks.len());
    for (i, t) in spec.tasks.iter().enumerate() {
        tasks.push(task_plan(t, i, &format!("{prefix}.tasks[{i}]"), &index)?);
    }
    check_acyclic(&tasks, prefix)?;

    // References: declared inputs, upstream tasks only.
    let upstream = upstream_sets(&tasks, &index);
    for t in &mut tasks {
        let field = format!("{prefix}.tasks[{}].input", t.index);
        for r in template::refs(&t.input).map_err(|e| err(&field, e))? {
            match &r {
                Ref::Input(name) if !declared.contains(name) => {
                    return Err(err(
                        &field,
                        format!("{r} names an input the workflow does not declare"),
                    ));
                }
                Ref::Output { task, .. } if !index.contains_key(task) => {
                    return Err(err(&field, format!("{r} names a task that does not exist")));
                }
                Ref::Message(_) => {
                    return Err(err(&field, format!("{r}: messages are for trigger inputs")));
                }
                Ref::Output { task, .. } if !upstream[t.index].contains(task) => {
                    return Err(err(
                        &field,
                        format!(
                            "{r} names a task that is not upstream of {} (add it to depends_on)",
                            t.key
                        ),
                    ));
                }
                _ => {}
            }
        }
        if !t.concurrency_key.is_empty() {
            let kfield = format!("{prefix}.tasks[{}].concurrency_key", t.index);
            let key = Value::String(t.concurrency_key.clone());
            for r in template::refs(&key).map_err(|e| err(&kfield, e))? {
                if !matches!(&r, Ref::Input(n) if declared.contains(n)) {
                    return Err(err(
                        &kfield,
                        format!("{r}: only declared ${{inputs.*}} may be used here"),
                    ));
                }
            }
            if with_inputs {
                let rendered = template::render(
                    &key,
                    &|r| match r {
                        Ref::Input(n) => inputs.get(n),
                        Ref::Output { .. } | Ref::Message(_) => None,
                    },
                    MAX_KEY_BYTES + 2,
                )
                .map_err(|e| err(&kfield, e))?;
                t.concurrency_key = match rendered {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                validate::max_bytes(&kfield, &t.concurrency_key, MAX_KEY_BYTES)?;
            }
        }
    }
    Ok(Plan {
        name: spec.name.clone(),
        failure_policy,
        tasks,
        inputs,
    })
}

/// A list of people: `user/<name>` or `role/<role>` entries, at most 100.
pub(crate) fn check_people(field: &str, list: &[String]) -> Result<(), FieldError> {
    if list.len() > 100 {
        return Err(err(field, "at most 100"));
    }
    for (j, who) in list.iter().enumerate() {
        let f = format!("{field}[{j}]");
        match who.split_once('/') {
            Some(("role", r)) if ROLES.contains(&r) => {}
            Some(("role", r)) => {
                return Err(err(
                    f,
                    format!("{r:?} is not a role ({})", ROLES.join(", ")),
                ));
            }
            Some(("user", name)) => validate::token(&f, name, 128, b"._-@")?,
            _ => {
                return Err(err(
                    f,
                    format!("{who:?} is neither user/<name> nor role/<role>"),
                ));
            }
        }
    }
    Ok(())
}

fn parse_json(field: &str, text: &str) -> Result<Value, FieldError> {
    validate::max_bytes(field, text, MAX_INPUT_BYTES)?;
    serde_json::from_str(text).map_err(|e| err(field, format!("is not JSON: {e}")))
}

fn check_approval(a: &pb::ApprovalSpec, field: &str) -> Result<(), FieldError> {
    validate::max_bytes(&format!("{field}.message"), &a.message, 4096)?;
    if a.timeout_ms > MAX_APPROVAL_MS {
        return Err(err(
            format!("{field}.timeout_ms"),
            format!("must be at most 30 days ({MAX_APPROVAL_MS} ms)"),
        ));
    }
    check_people(&format!("{field}.approvers"), &a.approvers)?;
    Ok(())
}

fn task_plan(
    t: &pb::TaskSpec,
    i: usize,
    field: &str,
    index: &HashMap<String, usize>,
) -> Result<TaskPlan, FieldError> {
    use pb::task_spec::Target as T;
    let target = match &t.target {
        Some(T::Agent(a)) => {
            validate::dns_label(&format!("{field}.agent.name"), &a.name)?;
            let version = if a.version.is_empty() {
                None
            } else {
                semver::Version::parse(&a.version).map_err(|e| {
                    err(
                        format!("{field}.agent.version"),
                        format!("{:?} is not a semantic version: {e}", a.version),
                    )
                })?;
                Some(a.version.clone())
            };
            Target::Agent {
                name: a.name.clone(),
                version,
            }
        }
        Some(T::Capability(c)) => {
            validate::token(&format!("{field}.capability"), c, 64, b"._")?;
            Target::Capability(c.clone())
        }
        Some(T::Approval(a)) => {
            check_approval(a, &format!("{field}.approval"))?;
            Target::Approval
        }
        None => {
            return Err(err(
                format!("{field}.agent"),
                "an agent or a capability is required",
            ));
        }
    };
    let input = if t.input.is_empty() {
        Value::Object(Default::default())
    } else {
        parse_json(&format!("{field}.input"), &t.input)?
    };
    let mut depends_on = Vec::new();
    for (j, d) in t.depends_on.iter().enumerate() {
        let dfield = format!("{field}.depends_on[{j}]");
        if !index.contains_key(d) {
            return Err(err(dfield, format!("{d} is not a task of this workflow")));
        }
        if d == &t.id {
            return Err(err(dfield, "a task cannot depend on itself"));
        }
        if depends_on.contains(d) {
            return Err(err(dfield, format!("{d} is listed twice")));
        }
        depends_on.push(d.clone());
    }
    let retry = retry_policy(t.retry.as_ref(), &format!("{field}.retry"))?;
    let mut timeouts = timeouts(t.timeouts.as_ref(), &format!("{field}.timeouts"))?;
    // An approval's input is what its approvers are shown, and its
    // schedule-to-start deadline is how long they have.
    let input = match &t.target {
        Some(T::Approval(a)) => {
            timeouts.schedule_to_start_ms = match a.timeout_ms {
                0 => DEFAULT_APPROVAL_MS,
                ms => ms,
            };
            serde_json::json!({ "message": a.message, "approvers": a.approvers })
        }
        _ => input,
    };
    if !(-1000..=1000).contains(&t.priority) {
        return Err(err(
            format!("{field}.priority"),
            "must be between -1000 and 1000",
        ));
    }
    if t.concurrency_limit > 0 && t.concurrency_key.is_empty() {
        return Err(err(
            format!("{field}.concurrency_key"),
            "is required with concurrency_limit",
        ));
    }
    if t.concurrency_limit > 100_000 {
        return Err(err(
            format!("{field}.concurrency_limit"),
            "must be at most 100000",
        ));
    }
    Ok(TaskPlan {
        key: t.id.clone(),
        target,
        input,
        depends_on,
        retry,
        timeouts,
        priority: t.priority,
        concurrency_key: if t.concurrency_limit > 0 {
            t.concurrency_key.clone()
        } else {
            String::new()
        },
        concurrency_limit: t.concurrency_limit,
        index: i,
    })
}

fn retry_policy(r: Option<&pb::RetryPolicy>, field: &str) -> Result<RetryPolicy, FieldError> {
    let d = RetryPolicy::default();
    let Some(r) = r else { return Ok(d) };
    let max_attempts = if r.max_attempts == 0 {
        d.max_attempts
    } else {
        r.max_attempts
    };
    if max_attempts > 100 {
        return Err(err(format!("{field}.max_attempts"), "must be at most 100"));
    }
    let initial = if r.initial_backoff_ms == 0 {
        d.initial_backoff_ms
    } else {
        r.initial_backoff_ms
    };
    let max = if r.max_backoff_ms == 0 {
        d.max_backoff_ms.max(initial)
    } else {
        r.max_backoff_ms
    };
    if max < initial {
        return Err(err(
            format!("{field}.max_backoff_ms"),
            "must not be below initial_backoff_ms",
        ));
    }
    let multiplier = if r.backoff_multiplier == 0.0 {
        d.multiplier
    } else {
        r.backoff_multiplier
    };
    if !(1.0..=100.0).contains(&multiplier) {
        return Err(err(
            format!("{field}.backoff_multiplier"),
            "must be between 1 and 100",
        ));
    }
    if !(0.0..=1.0).contains(&r.jitter) {
        return Err(err(format!("{field}.jitter"), "must be between 0 and 1"));
    }
    for (i, k) in r.non_retryable_errors.iter().enumerate() {
        validate::token(&format!("{field}.non_retryable_errors[{i}]"), k, 64, b"_.")?;
    }
    Ok(RetryPolicy {
        max_attempts,
        initial_backoff_ms: initial,
        max_backoff_ms: max,
        multiplier,
        jitter: r.jitter,
        non_retryable: r.non_retryable_errors.clone(),
    })
}

fn timeouts(t: Option<&pb::Timeouts>, field: &str) -> Result<Timeouts, FieldError> {
    let d = Timeouts::default();
    let Some(t) = t else { return Ok(d) };
    let pick = |v: u64, default: u64, name: &str| {
        if v > MAX_TIMEOUT_MS {
            Err(err(format!("{field}.{name}"), "must be at most 7 days"))
        } else if v == 0 {
            Ok(default)
        } else {
            Ok(v)
        }
    };
    if t.heartbeat_ms > 0 && t.heartbeat_ms < MIN_HEARTBEAT_MS {
        return Err(err(
            format!("{field}.heartbeat_ms"),
            "must be at least 100 ms (workers heartbeat a lease at a third of it)",
        ));
    }
    Ok(Timeouts {
        schedule_to_start_ms: pick(t.schedule_to_start_ms, 0, "schedule_to_start_ms")?,
        start_to_close_ms: pick(
            t.start_to_close_ms,
            d.start_to_close_ms,
            "start_to_close_ms",
        )?,
        heartbeat_ms: pick(t.heartbeat_ms, d.heartbeat_ms, "heartbeat_ms")?,
    })
}

/// Kahn's algorithm; a leftover names the tasks on a cycle.
fn check_acyclic(tasks: &[TaskPlan], prefix: &str) -> Result<(), FieldError> {
    let index: HashMap<&str, usize> = tasks.iter().map(|t| (t.key.as_str(), t.index)).collect();
    let mut indegree: Vec<usize> = tasks.iter().map(|t| t.depends_on.len()).collect();
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for t in tasks {
        for d in &t.depends_on {
            downstream[index[d.as_str()]].push(t.index);
        }
    }
    let mut queue: VecDeque<usize> = (0..tasks.len()).filter(|i| indegree[*i] == 0).collect();
    let mut seen = 0;
    while let Some(i) = queue.pop_front() {
        seen += 1;
        for &j in &downstream[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                queue.push_back(j);
            }
        }
    }
    if seen == tasks.len() {
        return Ok(());
    }
    let on_cycle: Vec<&str> = tasks
        .iter()
        .filter(|t| indegree[t.index] > 0)
        .map(|t| t.key.as_str())
        .collect();
    let first = tasks
        .iter()
        .find(|t| indegree[t.index] > 0)
        .map(|t| t.index)
        .unwrap_or(0);
    Err(err(
        format!("{prefix}.tasks[{first}].depends_on"),
        format!("dependency cycle among: {}", on_cycle.join(", ")),
    ))
}

/// For each task, the keys of every task upstream of it.
fn upstream_sets(tasks: &[TaskPlan], index: &HashMap<String, usize>) -> Vec<HashSet<String>> {
    fn visit(
        i: usize,
        tasks: &[TaskPlan],
        index: &HashMap<String, usize>,
        memo: &mut Vec<Option<HashSet<String>>>,
    ) -> HashSet<String> {
        if let Some(s) = &memo[i] {
            return s.clone();
        }
        let mut set = HashSet::new();
        for d in &tasks[i].depends_on {
            set.insert(d.clone());
            set.extend(visit(index[d], tasks, index, memo));
        }
        memo[i] = Some(set.clone());
        set
    }
    let mut memo = vec![None; tasks.len()];
    (0..tasks.len())
        .map(|i| visit(i, tasks, index, &mut memo))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, deps: &[&str], input: &str) -> pb::TaskSpec {
        pb::TaskSpec {
            id: id.into(),
            target: Some(pb::task_spec::Target::Agent(pb::AgentRef {
                name: "noop".into(),
                version: String::new(),
            })),
            input: input.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    fn spec(tasks: Vec<pb::TaskSpec>) -> pb::WorkflowSpec {
        pb::WorkflowSpec {
            name: "ci".into(),
            inputs: vec![pb::WorkflowInput {
                name: "repo".into(),
                required: true,
                ..Default::default()
            }],
            tasks,
            ..Default::default()
        }
    }

    fn inputs() -> HashMap<String, String> {
        HashMap::from([("repo".to_owned(), "\"r\"".to_owned())])
    }

    #[track_caller]
    fn field_of(s: pb::WorkflowSpec, i: HashMap<String, String>) -> String {
        plan_run(&s, &i, "spec").unwrap_err().field
    }

    #[test]
    fn valid_dag() {
        let s = spec(vec![
            task("checkout", &[], r#"{"repo": "${inputs.repo}"}"#),
            task(
                "build",
                &["checkout"],
                r#"{"src": "${tasks.checkout.output.path}"}"#,
            ),
            task(
                "test",
                &["build"],
                r#"{"art": "${tasks.checkout.output.path}"}"#,
            ),
        ]);
        let p = plan_run(&s, &inputs(), "spec").unwrap();
        assert_eq!(p.tasks.len(), 3);
        assert_eq!(p.inputs["repo"], serde_json::json!("r"));
    }

    #[test]
    fn each_mistake_is_named() {
        let cyc = spec(vec![task("a", &["b"], ""), task("b", &["a"], "")]);
        assert_eq!(field_of(cyc, inputs()), "spec.tasks[0].depends_on");
        let unknown = spec(vec![task("a", &["zz"], "")]);
        assert_eq!(field_of(unknown, inputs()), "spec.tasks[0].depends_on[0]");
        let not_upstream = spec(vec![
            task("a", &[], ""),
            task("b", &[], r#"{"x": "${tasks.a.output}"}"#),
        ]);
        assert_eq!(field_of(not_upstream, inputs()), "spec.tasks[1].input");
        let bad_template = spec(vec![task("a", &[], r#"{"x": "${inputs.repo"}"#)]);
        assert_eq!(field_of(bad_template, inputs()), "spec.tasks[0].input");
        let undeclared = spec(vec![task("a", &[], r#"{"x": "${inputs.branch}"}"#)]);
        assert_eq!(field_of(undeclared, inputs()), "spec.tasks[0].input");
        let not_json = spec(vec![task("a", &[], "{nope")]);
        assert_eq!(field_of(not_json, inputs()), "spec.tasks[0].input");
        let dup = spec(vec![task("a", &[], ""), task("a", &[], "")]);
        assert_eq!(field_of(dup, inputs()), "spec.tasks[1].id");
        assert_eq!(
            field_of(spec(vec![task("a", &[], "")]), HashMap::new()),
            "inputs[repo]"
        );
        let mut extra = inputs();
        extra.insert("other".into(), "1".into());
        assert_eq!(
            field_of(spec(vec![task("a", &[], "")]), extra),
            "inputs[other]"
        );
        let mut bad_retry = task("a", &[], "");
        bad_retry.retry = Some(pb::RetryPolicy {
            jitter: 2.0,
            ..Default::default()
        });
        assert_eq!(
            field_of(spec(vec![bad_retry]), inputs()),
            "spec.tasks[0].retry.jitter"
        );
        let mut no_target = task("a", &[], "");
        no_target.target = None;
        assert_eq!(
            field_of(spec(vec![no_target]), inputs()),
            "spec.tasks[0].agent"
        );
    }
}
