//! `devcycle audit`: the audit log of mutating calls.

use clap::Args;
use devcycle::proto::auth::v1 as pb;
use serde_json::{Value, json};

use crate::connect::Clients;
use crate::output::{Render, or_dash, print_list, time};
use crate::page;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[arg(long)]
    actor: Option<String>,
    /// Full method, e.g. /devcycle.scheduler.v1.Scheduler/CancelRun.
    #[arg(long)]
    method: Option<String>,
    /// At most this many (newest first); 0 lists all.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

impl Render for pb::AuditEvent {
    fn columns() -> &'static [&'static str] {
        &["TIME", "ACTOR", "METHOD", "TARGET", "STATUS", "ADDRESS"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            time(&self.time),
            self.actor.clone(),
            self.method
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
            or_dash(&self.target),
            self.status_code.clone(),
            self.client_address.clone(),
        ]
    }
    fn json(&self) -> Value {
        json!({"id": self.id, "time": time(&self.time), "actor": self.actor, "method": self.method,
            "target": self.target, "status": self.status_code, "client_address": self.client_address})
    }
}

pub async fn run(args: AuditArgs, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut audit = clients.audit()?;
    let (actor, method) = (
        args.actor.unwrap_or_default(),
        args.method.unwrap_or_default(),
    );
    let limit = (args.limit > 0).then_some(args.limit as usize);
    let events = page::all(limit, async |page_token, page_size| {
        let req = pb::ListAuditEventsRequest {
            actor: actor.clone(),
            method: method.clone(),
            page_size,
            page_token,
            ..Default::default()
        };
        audit.list_audit_events(req).await
    })
    .await?;
    print_list(&events, as_json);
    Ok(())
}
