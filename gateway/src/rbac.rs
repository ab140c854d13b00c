//! Role-based access at the gateway: one entry per full method name of every
//! contract, fail-closed (a method without an entry is denied; a test checks
//! that every method in the descriptor set has one). Each entry also says
//! whether the call changes state (and is audited) and where in the request
//! the audited target is.
//!
//! Ownership ("a developer sees only their own runs") is data-dependent and
//! enforced by the owning service from the forwarded principal.

use std::collections::HashMap;
use std::sync::OnceLock;

pub use devcycle::authz::Roles;

const MAINT: Roles = Roles::ADMIN.or(Roles::MAINTAINER);
const DEV: Roles = MAINT.or(Roles::DEVELOPER);
/// Every human role.
const READ: Roles = DEV.or(Roles::VIEWER);
/// Anyone signed in, workers included (their own identity and sessions).
const SELF: Roles = READ.or(Roles::WORKER);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed (login, refresh, keys, health; IssueCertificate
    /// checks its own credentials).
    Public,
    /// A token with one of these roles. `Roles::NONE` denies every caller:
    /// the method exists only for mTLS identities inside the mesh.
    Roles(Roles),
    /// An admin, or the one-time bootstrap token while there are no users.
    AdminOrBootstrap,
}

/// Where the audited target is: a path of field numbers to a string.
pub type TargetPath = &'static [u32];

#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub access: Access,
    pub mutating: bool,
    /// Alternatives tried in order.
    pub target: &'static [TargetPath],
}

const fn read(roles: Roles) -> Rule {
    Rule {
        access: Access::Roles(roles),
        mutating: false,
        target: &[],
    }
}
const fn write(roles: Roles, target: &'static [TargetPath]) -> Rule {
    Rule {
        access: Access::Roles(roles),
        mutating: true,
        target,
    }
}
const PUBLIC: Rule = Rule {
    access: Access::Public,
    mutating: false,
    target: &[],
};
const MESH_ONLY: Rule = read(Roles::NONE);

const REGISTRY: &str = "/devcycle.registry.v1.AgentRegistry/";
const SCHEDULER: &str = "/devcycle.scheduler.v1.Scheduler/";
const EXECUTOR: &str = "/devcycle.executor.v1.Executor/";
const MESSAGES: &str = "/devcycle.messages.v1.Messages/";
const AUTH: &str = "/devcycle.auth.v1.Auth/";
const AUDIT: &str = "/devcycle.auth.v1.Audit/";

fn table() -> Vec<(String, Rule)> {
    let svc = |prefix: &str, rules: &[(&str, Rule)]| -> Vec<(String, Rule)> {
        rules
            .iter()
            .map(|(m, r)| (format!("{prefix}{m}"), *r))
            .collect()
    };
    let mut t = Vec::new();
    t.extend(svc(
        REGISTRY,
        &[
            ("CreateAgent", write(MAINT, &[&[1, 1]])),
            ("GetAgent", read(READ)),
            ("ListAgents", read(READ)),
            ("UpdateAgent", write(MAINT, &[&[1, 1]])),
            ("DeleteAgent", write(MAINT, &[&[1]])),
            ("PublishVersion", write(MAINT, &[&[1, 1]])),
            ("GetVersion", read(READ)),
            ("ListVersions", read(READ)),
            ("Deploy", write(MAINT, &[&[1]])),
            ("Rollback", write(MAINT, &[&[1]])),
            ("ListDeployments", read(READ)),
            ("CheckCompatibility", read(READ)),
            ("FindAgents", read(READ)),
            ("RegisterWorker", MESH_ONLY),
            ("WorkerHeartbeat", MESH_ONLY),
            ("DeregisterWorker", write(Roles::ADMIN, &[&[1]])),
            ("ListWorkers", read(READ)),
            ("Watch", read(READ)),
        ],
    ));
    t.extend(svc(
        SCHEDULER,
        &[
            ("PutWorkflow", write(DEV, &[&[1, 1]])),
            ("GetWorkflow", read(READ)),
            ("ListWorkflows", read(READ)),
            ("SubmitRun", write(DEV, &[&[1], &[2, 1]])),
            ("SubmitTask", write(DEV, &[&[1, 1]])),
            ("GetRun", read(READ)),
            ("ListRuns", read(READ)),
            ("CancelRun", write(DEV, &[&[1]])),
            ("WatchRun", read(READ)),
            ("GetTask", read(READ)),
            ("ListTasks", read(READ)),
            ("RetryTask", write(DEV, &[&[1]])),
            ("GetTaskLogs", read(READ)),
            ("ListDeadLetters", read(READ)),
            ("RequeueDeadLetter", write(MAINT, &[&[1]])),
            ("SetAgentRateLimit", write(MAINT, &[&[1]])),
            ("Work", MESH_ONLY),
            // Owners, maintainers and admins change a schedule (the
            // scheduler checks ownership).
            ("CreateSchedule", write(DEV, &[&[1, 1]])),
            ("GetSchedule", read(READ)),
            ("ListSchedules", read(READ)),
            ("PauseSchedule", write(DEV, &[&[1]])),
            ("ResumeSchedule", write(DEV, &[&[1]])),
            ("DeleteSchedule", write(DEV, &[&[1]])),
            // The approval's own list of approvers decides (the scheduler).
            ("DecideApproval", write(READ, &[&[1]])),
        ],
    ));
    t.extend(svc(
        EXECUTOR,
        &[
            ("GetStatus", read(READ)),
            ("ListRunningTasks", read(READ)),
            ("CancelTask", write(MAINT, &[&[1]])),
            ("StreamTaskLogs", read(READ)),
            ("Drain", write(MAINT, &[])),
        ],
    ));
    t.extend(svc(
        MESSAGES,
        &[
            ("CreateTopic", write(MAINT, &[&[1, 1]])),
            ("ListTopics", read(READ)),
            ("Publish", write(DEV, &[&[1]])),
            ("PublishBatch", write(DEV, &[&[1]])),
            ("Subscribe", read(DEV)),
            ("Ack", write(DEV, &[&[1]])),
            ("Nack", write(DEV, &[&[1]])),
            ("ListDeadLetters", read(READ)),
            ("RequeueDeadLetter", write(MAINT, &[&[1]])),
            ("CreateTrigger", write(MAINT, &[&[1, 1]])),
            ("ListTriggers", read(READ)),
            ("DeleteTrigger", write(MAINT, &[&[1]])),
        ],
    ));
    let public_write = |target: &'static [TargetPath]| Rule {
        access: Access::Public,
        mutating: true,
        target,
    };
    t.extend(svc(
        AUTH,
        &[
            ("Login", public_write(&[&[1]])),
            ("Refresh", public_write(&[])),
            ("Logout", write(SELF, &[])),
            ("WhoAmI", read(SELF)),
            ("ListSessions", read(SELF)),
            ("RevokeSession", write(SELF, &[&[1]])),
            ("RevokeAllSessions", write(SELF, &[])),
            ("EnrollTotp", write(SELF, &[])),
            ("VerifyTotp", write(SELF, &[])),
            ("DisableTotp", write(SELF, &[])),
            ("GetJwks", PUBLIC),
            ("IssueCertificate", public_write(&[])),
            ("CreateWorkerJoinToken", write(MAINT, &[&[1]])),
            (
                "CreateUser",
                Rule {
                    access: Access::AdminOrBootstrap,
                    mutating: true,
                    target: &[&[1]],
                },
            ),
            ("ListUsers", read(Roles::ADMIN)),
            ("SetUserRoles", write(Roles::ADMIN, &[&[1]])),
            ("DeleteUser", write(Roles::ADMIN, &[&[1]])),
            ("ChangePassword", write(SELF, &[])),
        ],
    ));
    t.extend(svc(AUDIT, &[("ListAuditEvents", read(MAINT))]));
    t.extend(svc(
        "/grpc.health.v1.Health/",
        &[("Check", PUBLIC), ("Watch", PUBLIC)],
    ));
    for r in ["/grpc.reflection.v1.", "/grpc.reflection.v1alpha."] {
        t.push((
            format!("{r}ServerReflection/ServerReflectionInfo"),
            read(READ),
        ));
    }
    t
}

/// The rule for a full method name; `None` means denied.
pub fn rule(method: &str) -> Option<&'static Rule> {
    static TABLE: OnceLock<HashMap<String, Rule>> = OnceLock::new();
    TABLE
        .get_or_init(|| table().into_iter().collect())
        .get(method)
}

/// Which service owns a method: its path up to and including the last `/`.
pub fn service_of(method: &str) -> &str {
    match method.rfind('/') {
        Some(i) if i > 0 => &method[..=i],
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_method_has_an_entry() {
        let missing: Vec<String> = devcycle::proto::all_methods()
            .into_iter()
            .filter(|m| rule(m).is_none())
            .collect();
        assert!(missing.is_empty(), "methods without a policy: {missing:?}");
    }

    #[test]
    fn fail_closed_and_roles() {
        assert!(rule("/devcycle.scheduler.v1.Scheduler/Nope").is_none());
        let cancel = rule("/devcycle.scheduler.v1.Scheduler/CancelRun").unwrap();
        let Access::Roles(r) = cancel.access else {
            panic!()
        };
        assert!(r.intersects(Roles::of(&["developer"])));
        assert!(!r.intersects(Roles::of(&["viewer", "worker", "root"])));
        let work = rule("/devcycle.scheduler.v1.Scheduler/Work").unwrap();
        assert_eq!(work.access, Access::Roles(Roles::NONE));
        assert_eq!(
            service_of("/devcycle.auth.v1.Auth/Login"),
            "/devcycle.auth.v1.Auth/"
        );
    }
}
