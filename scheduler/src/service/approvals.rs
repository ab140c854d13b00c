//! Approval tasks: a person's decision, taken only from the approvers the
//! task names.

use devcycle::authz::{Caller, Role, Roles};
use devcycle::proto::scheduler::v1 as pb;
use devcycle::validate;
use serde_json::Value;

use super::{SchedulerService, check_id};
use crate::error::{Error, Result};
use crate::model::{APPROVAL_AGENT, Decision, TaskRow};
use crate::store::Op;
use crate::wire;

pub(super) async fn decide_approval(
    svc: &SchedulerService,
    caller: &Caller,
    r: pb::DecideApprovalRequest,
) -> Result<pb::DecideApprovalResponse> {
    let id = &r.task_id;
    check_id("task_id", id)?;
    validate::max_bytes("comment", &r.comment, 4096)?;
    let task =
        |t: Option<TaskRow>| t.ok_or_else(|| Error::NotFound(format!("task {id} does not exist")));
    let t = task(svc.store.get_task(id).await?)?;
    if t.agent != APPROVAL_AGENT {
        return Err(Error::FailedPrecondition(format!(
            "task_id: task {id} is not an approval"
        )));
    }
    check_approver(caller, &t)?;
    let decision = Decision {
        approve: r.approve,
        by: caller.actor(),
        comment: r.comment,
    };
    svc.op(Op::Decide {
        task_id: id.clone(),
        decision,
    })
    .await?;
    let t = task(svc.store.get_task(id).await?)?;
    Ok(pb::DecideApprovalResponse {
        task: Some(wire::task(&t)),
    })
}

/// The approvers an approval task names: `user/<name>` or `role/<role>`.
fn approvers(t: &TaskRow) -> Vec<String> {
    let input: Value = serde_json::from_str(&t.input).unwrap_or_default();
    input["approvers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Admins always may decide; otherwise the caller must be a named user or
/// hold a named role (maintainers when none is named). A user certificate
/// without a forwarded principal carries no roles; it counts as a
/// maintainer (the least of the roles such certificates are issued to).
fn check_approver(caller: &Caller, t: &TaskRow) -> Result<()> {
    let roles = match &caller.principal {
        Some(p) => p.roles,
        None => Roles::MAINTAINER,
    };
    if roles.contains(Role::Admin) {
        return Ok(());
    }
    let named = approvers(t);
    let me = caller.actor();
    let allowed = if named.is_empty() {
        roles.contains(Role::Maintainer)
    } else {
        named.iter().any(|a| {
            *a == me
                || a.strip_prefix("role/")
                    .and_then(Role::parse)
                    .is_some_and(|r| roles.contains(r))
        })
    };
    if allowed {
        return Ok(());
    }
    let who = if named.is_empty() {
        "maintainers and admins".to_owned()
    } else {
        format!("{} and admins", named.join(", "))
    };
    Err(Error::PermissionDenied(format!(
        "task {} may be decided only by {who}",
        t.id
    )))
}
