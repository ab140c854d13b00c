//! `devcycle sessions ...`: your sessions at the gateway.

use clap::Subcommand;
use devcycle::proto::auth::v1 as pb;
use serde_json::{Value, json};

use crate::connect::Clients;
use crate::output::{Render, or_dash, print_list, time};

#[derive(Debug, Subcommand)]
pub enum SessionsCmd {
    /// Your sessions, one per device.
    List,
    /// Ends one session.
    Revoke { session_id: String },
    /// Ends every session but this one.
    RevokeAll,
}

impl Render for pb::Session {
    fn columns() -> &'static [&'static str] {
        &["SESSION", "DEVICE", "ADDRESS", "LAST USED", "EXPIRES"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            format!("{}{}", self.id, if self.current { " *" } else { "" }),
            self.device.clone(),
            or_dash(&self.client_address),
            time(&self.last_used_time),
            time(&self.expire_time),
        ]
    }
    fn json(&self) -> Value {
        json!({"id": self.id, "device": self.device, "client_address": self.client_address,
            "created": time(&self.create_time), "last_used": time(&self.last_used_time),
            "expires": time(&self.expire_time), "current": self.current})
    }
}

pub async fn run(cmd: SessionsCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut auth = clients.auth()?;
    match cmd {
        SessionsCmd::List => {
            let r = auth.list_sessions(pb::ListSessionsRequest {}).await?;
            print_list(&r.into_inner().sessions, as_json);
        }
        SessionsCmd::Revoke { session_id } => {
            auth.revoke_session(pb::RevokeSessionRequest { session_id })
                .await?;
            println!("revoked");
        }
        SessionsCmd::RevokeAll => {
            let n = auth
                .revoke_all_sessions(pb::RevokeAllSessionsRequest { keep_current: true })
                .await?
                .into_inner()
                .revoked;
            println!("revoked {n} sessions");
        }
    }
    Ok(())
}
