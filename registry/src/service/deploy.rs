//! Deploy and rollback: both check that the target's dependencies resolve
//! against what is live, then compare-and-set the live version.

use devcycle::authz::Caller;
use devcycle::proto::registry::v1 as pb;
use devcycle::time::now_ms;
use devcycle::validate;

use super::Registry;
use crate::error::{Error, Result};
use crate::model::*;
use crate::resolve::{ConflictKind, Resolution, resolve};
use crate::store::NewDeployment;

impl Registry {
    pub(super) async fn check_deployable(&self, v: &AgentVersion) -> Result<()> {
        let resolution = resolve(self.store.as_ref(), v).await?;
        if resolution.compatible() {
            Ok(())
        } else {
            Err(Error::FailedPrecondition(format!(
                "{}@{} cannot go live: {}",
                v.agent,
                v.version,
                resolution.summary()
            )))
        }
    }

    pub(super) async fn deploy_inner(
        &self,
        caller: &Caller,
        r: pb::DeployRequest,
    ) -> Result<pb::DeployResponse> {
        let agent = self.agent(&r.agent, "agent").await?;
        validate::required("version", &r.version)?;
        let target = self.version_or_live(&r.agent, &r.version).await?;
        let version = target.version.to_string();
        if agent.live_version.as_deref() == Some(version.as_str())
            && let Some(current) = self.store.current_deployment(&r.agent).await?
        {
            return Ok(pb::DeployResponse {
                deployment: Some(current.into()),
            });
        }
        self.check_deployable(&target).await?;
        let d = NewDeployment {
            agent: r.agent.clone(),
            version,
            previous_version: agent.live_version.clone(),
            kind: DeployKind::Deploy,
        };
        let done = self
            .store
            .record_deployment(&d, agent.live_version.as_deref(), &caller.actor(), now_ms())
            .await?;
        Ok(pb::DeployResponse {
            deployment: Some(done.into()),
        })
    }

    /// Back to what was live before the current deployment. Rolling back a
    /// rollback continues down the history rather than toggling.
    pub(super) async fn rollback_inner(
        &self,
        caller: &Caller,
        r: pb::RollbackRequest,
    ) -> Result<pb::RollbackResponse> {
        let agent = self.agent(&r.agent, "agent").await?;
        let current = self.store.current_deployment(&r.agent).await?;
        let Some(target) = current.and_then(|c| c.previous_version) else {
            return Err(Error::FailedPrecondition(format!(
                "agent {} has no previous version to roll back to",
                r.agent
            )));
        };
        let version = self.version_or_live(&r.agent, &target).await?;
        self.check_deployable(&version).await?;
        let previous = self
            .store
            .last_deployment_of(&r.agent, &target)
            .await?
            .and_then(|d| d.previous_version);
        let d = NewDeployment {
            agent: r.agent.clone(),
            version: target,
            previous_version: previous,
            kind: DeployKind::Rollback,
        };
        let done = self
            .store
            .record_deployment(&d, agent.live_version.as_deref(), &caller.actor(), now_ms())
            .await?;
        Ok(pb::RollbackResponse {
            deployment: Some(done.into()),
        })
    }
}

pub(super) fn resolution_to_pb(r: Resolution) -> pb::CheckCompatibilityResponse {
    pb::CheckCompatibilityResponse {
        compatible: r.compatible(),
        resolved: r
            .resolved
            .into_iter()
            .map(|d| pb::ResolvedDependency {
                agent: d.agent,
                requirement: d.requirement,
                version: d.version,
                depth: d.depth as i32,
            })
            .collect(),
        conflicts: r
            .conflicts
            .into_iter()
            .map(|c| pb::Conflict {
                kind: match c.kind {
                    ConflictKind::UnknownAgent => pb::ConflictKind::UnknownAgent,
                    ConflictKind::NotDeployed => pb::ConflictKind::NotDeployed,
                    ConflictKind::VersionMismatch => pb::ConflictKind::VersionMismatch,
                    ConflictKind::Cycle => pb::ConflictKind::Cycle,
                } as i32,
                path: c.path,
                agent: c.agent,
                requirement: c.requirement,
                live_version: c.live_version.unwrap_or_default(),
                message: c.message,
            })
            .collect(),
    }
}
