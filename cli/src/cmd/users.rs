//! `devcycle user ...`: users of the gateway (admins).

use clap::Subcommand;
use devcycle::proto::auth::v1 as pb;
use serde_json::{Value, json};

use crate::connect::Clients;
use crate::login::{read_password, role, role_name};
use crate::output::{Render, print_list};
use crate::page;

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Creates a user (admins only); the password is read from stdin.
    Create {
        name: String,
        /// admin, maintainer, developer, viewer or worker; repeatable.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    List,
}

impl Render for pb::User {
    fn columns() -> &'static [&'static str] {
        &["USER", "ROLES", "TOTP"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            roles(self).join(","),
            if self.totp_enabled { "yes" } else { "no" }.into(),
        ]
    }
    fn json(&self) -> Value {
        json!({"name": self.name, "roles": roles(self), "totp": self.totp_enabled})
    }
}

fn roles(u: &pb::User) -> Vec<String> {
    u.roles.iter().map(|r| role_name(*r)).collect()
}

pub async fn run(cmd: UserCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut auth = clients.auth()?;
    match cmd {
        UserCmd::Create { name, roles } => {
            let password = read_password(true, "")?;
            let roles = roles
                .iter()
                .map(|r| role(r))
                .collect::<anyhow::Result<_>>()?;
            auth.create_user(pb::CreateUserRequest {
                name: name.clone(),
                password,
                roles,
            })
            .await?;
            println!("created {name}");
        }
        UserCmd::List => {
            let users = page::all(None, async |page_token, page_size| {
                let req = pb::ListUsersRequest {
                    page_size,
                    page_token,
                };
                auth.list_users(req).await
            })
            .await?;
            print_list(&users, as_json);
        }
    }
    Ok(())
}
