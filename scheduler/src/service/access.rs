//! Who may see and change which runs.

use devcycle::authz::{Caller, Role, Roles};
use tonic::Request;

use super::SchedulerService;
use crate::error::{Error, Result};

/// Whose runs the caller may see and change: everyone's, except for end
/// users (through the gateway) whose roles include none of admin,
/// maintainer or viewer — they see only runs they submitted.
pub(super) fn owner_scope<T>(req: &Request<T>) -> Option<String> {
    scopes(Caller::of(req).ok()?).read
}

/// Whose runs a caller may see and change: `None` means everyone's, else
/// only those it created. Read and write differ: a viewer sees every run
/// but changes none of another's, even as a developer too. Mesh peers
/// without a forwarded principal (services, and the user certificates only
/// admins and maintainers get) are not scoped.
pub(super) struct Scopes {
    pub(super) read: Option<String>,
    pub(super) write: Option<String>,
}

pub(super) fn scopes(caller: &Caller) -> Scopes {
    let Some(p) = caller.principal.as_ref() else {
        return Scopes {
            read: None,
            write: None,
        };
    };
    let manage = p.roles.intersects(Roles::ADMIN.or(Roles::MAINTAINER));
    Scopes {
        read: (!manage && !p.roles.contains(Role::Viewer)).then(|| caller.actor()),
        write: (!manage).then(|| caller.actor()),
    }
}

pub(super) fn write_scopes<T>(req: &Request<T>) -> Scopes {
    Caller::of(req).map(scopes).unwrap_or(Scopes {
        read: None,
        write: None,
    })
}

impl SchedulerService {
    /// Fails as if the run did not exist when `scope` may not see it.
    pub(super) async fn check_owner(&self, scope: &Option<String>, run_id: &str) -> Result<()> {
        let Some(owner) = scope else {
            return Ok(());
        };
        match self.store.get_run(run_id).await? {
            Some((run, _)) if run.created_by == *owner => Ok(()),
            _ => Err(Error::NotFound(format!("run {run_id} does not exist"))),
        }
    }

    /// Fails unless the caller may change the run: NOT_FOUND when it may not
    /// even see it, PERMISSION_DENIED when it sees it but may not change it.
    pub(super) async fn check_writer(&self, scopes: &Scopes, run_id: &str) -> Result<()> {
        self.check_owner(&scopes.read, run_id).await?;
        let Some(me) = &scopes.write else {
            return Ok(());
        };
        match self.store.get_run(run_id).await? {
            Some((run, _)) if run.created_by == *me => Ok(()),
            Some((run, _)) => Err(Error::PermissionDenied(format!(
                "run {run_id} belongs to {}; only its creator, maintainers and admins may change it",
                run.created_by
            ))),
            None => Err(Error::NotFound(format!("run {run_id} does not exist"))),
        }
    }

    pub(super) async fn check_task_writer(&self, scopes: &Scopes, task_id: &str) -> Result<()> {
        if scopes.read.is_none() && scopes.write.is_none() {
            return Ok(());
        }
        let t = self
            .store
            .get_task(task_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("task {task_id} does not exist")))?;
        self.check_writer(scopes, &t.run_id)
            .await
            .map_err(|e| match e {
                Error::NotFound(_) => Error::NotFound(format!("task {task_id} does not exist")),
                other => other,
            })
    }

    pub(super) async fn check_task_owner(
        &self,
        scope: &Option<String>,
        task_id: &str,
    ) -> Result<()> {
        if scope.is_none() {
            return Ok(());
        }
        let t = self
            .store
            .get_task(task_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("task {task_id} does not exist")))?;
        self.check_owner(scope, &t.run_id)
            .await
            .map_err(|_| Error::NotFound(format!("task {task_id} does not exist")))
    }
}
