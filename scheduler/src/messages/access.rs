//! Who may publish to and read a topic: its owner, maintainers and admins
//! always; others as the topic's lists say (every developer the gateway
//! lets through when a list is empty).

use devcycle::authz::{Caller, Role, Roles};

use super::TopicRow;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub enum Use {
    Publish,
    Subscribe,
}

/// Groups of this prefix are triggers' (see [`super::TriggerRow::group`]).
pub const TRIGGER_GROUPS: &str = "trigger.";

/// Reading, acking or nacking as a trigger's group would decide what the
/// trigger starts: only maintainers and admins may (to replay one).
pub fn check_group(caller: &Caller, group: &str) -> Result<()> {
    if group.starts_with(TRIGGER_GROUPS) && !manages(caller) {
        return Err(Error::PermissionDenied(format!(
            "group: {group} is a trigger's; only maintainers and admins may use it"
        )));
    }
    Ok(())
}

/// Admins and maintainers, and mesh peers without a forwarded principal.
pub fn manages(caller: &Caller) -> bool {
    caller
        .principal
        .as_ref()
        .is_none_or(|p| p.roles.intersects(Roles::ADMIN.or(Roles::MAINTAINER)))
}

pub fn check(caller: &Caller, t: &TopicRow, what: Use) -> Result<()> {
    // A user certificate without a forwarded principal is issued only to
    // maintainers and admins; mesh services act for the mesh itself.
    let roles = match &caller.principal {
        Some(p) => p.roles,
        None => Roles::MAINTAINER,
    };
    let me = caller.actor();
    if roles.intersects(Roles::ADMIN.or(Roles::MAINTAINER)) || me == t.owner {
        return Ok(());
    }
    let (list, verb) = match what {
        Use::Publish => (&t.publishers, "publish to"),
        Use::Subscribe => (&t.subscribers, "read"),
    };
    let allowed = list.is_empty()
        || list.iter().any(|who| {
            *who == me
                || who
                    .strip_prefix("role/")
                    .and_then(Role::parse)
                    .is_some_and(|r| roles.contains(r))
        });
    if allowed {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "only {}, {}, maintainers and admins may {verb} topic {}",
        t.owner,
        list.join(", "),
        t.name
    )))
}
