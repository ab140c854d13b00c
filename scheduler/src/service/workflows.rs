//! Workflow definitions: stored specs that runs are started from.

use devcycle::authz::Caller;
use devcycle::page;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::time::now_ms;
use devcycle::validate;
use prost::Message;

use super::SchedulerService;
use super::access::scopes;
use crate::error::{Error, Result};
use crate::model::WorkflowRow;
use crate::spec;

pub(super) async fn put_workflow(
    svc: &SchedulerService,
    caller: &Caller,
    r: pb::PutWorkflowRequest,
) -> Result<pb::PutWorkflowResponse> {
    let spec = validate::present("spec", r.spec)?;
    spec::check_spec(&spec, "spec")?;
    let any_owner = scopes(caller).write.is_none();
    let w = svc
        .store
        .put_workflow(
            &spec.name,
            spec.encode_to_vec(),
            now_ms(),
            &caller.actor(),
            any_owner,
        )
        .await?;
    Ok(pb::PutWorkflowResponse {
        workflow: Some(workflow_pb(w)?),
    })
}

pub(super) async fn get_workflow(
    svc: &SchedulerService,
    r: pb::GetWorkflowRequest,
) -> Result<pb::GetWorkflowResponse> {
    let name = &r.name;
    validate::dns_label("name", name)?;
    let w = svc
        .store
        .get_workflow(name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("workflow {name} does not exist")))?;
    Ok(pb::GetWorkflowResponse {
        workflow: Some(workflow_pb(w)?),
    })
}

pub(super) async fn list_workflows(
    svc: &SchedulerService,
    r: pb::ListWorkflowsRequest,
) -> Result<pb::ListWorkflowsResponse> {
    let size = page::page_size(r.page_size)?;
    let after = page::decode_token(&r.page_token)?;
    let mut rows = svc.store.list_workflows(after.as_deref(), size + 1).await?;
    let next_page_token = page::finish(&mut rows, size, |w| w.name.clone());
    Ok(pb::ListWorkflowsResponse {
        workflows: rows.into_iter().map(workflow_pb).collect::<Result<_>>()?,
        next_page_token,
    })
}

fn workflow_pb(w: WorkflowRow) -> Result<pb::Workflow> {
    Ok(pb::Workflow {
        spec: Some(
            pb::WorkflowSpec::decode(w.spec.as_slice())
                .map_err(|e| Error::Corrupt(format!("stored workflow {}: {e}", w.name)))?,
        ),
        revision: w.revision,
        create_time: Some(devcycle::time::to_timestamp(w.create_time)),
        owner: w.owner,
    })
}
