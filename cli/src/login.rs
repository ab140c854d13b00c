//! `devcycle login`, `logout`, `whoami`, `sessions`, `user` and `audit`:
//! identity at the gateway.

use std::io::BufRead;

use anyhow::Context;
use clap::{Args, Subcommand};
use devcycle::authz::Role;
use devcycle::config::Config;
use devcycle::proto::auth::v1 as pb;
use serde_json::json;

use crate::connect::{Clients, gateway_ca, gateway_channel};
use crate::credentials::Credentials;
use crate::output;
use crate::page::paginate;

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[arg(long, default_value = "admin")]
    username: String,
    /// Read the password from the first line of stdin instead of a prompt.
    #[arg(long)]
    password_stdin: bool,
    /// The 6-digit code when TOTP is enabled.
    #[arg(long)]
    totp: Option<String>,
    /// A name for this device in `devcycle sessions`.
    #[arg(long)]
    device: Option<String>,
    /// The one-time token printed by `devcycle up`: creates this user as the
    /// first admin, with the given password, then logs in.
    #[arg(long)]
    bootstrap: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCmd {
    /// Your sessions, one per device.
    List,
    /// Ends one session.
    Revoke { session_id: String },
    /// Ends every session but this one.
    RevokeAll,
}

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

fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<String> {
    let p = if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        rpassword::prompt_password(prompt).context("reading the password")?
    };
    anyhow::ensure!(!p.is_empty(), "empty password");
    Ok(p)
}

fn role(name: &str) -> anyhow::Result<i32> {
    Role::parse(name).map(Role::to_proto).ok_or_else(|| {
        anyhow::anyhow!("unknown role {name:?}: admin, maintainer, developer, viewer or worker")
    })
}

fn role_name(r: i32) -> String {
    Role::from_proto(r).map_or_else(|| r.to_string(), |r| r.as_str().to_owned())
}

pub async fn login(config: &Config, args: LoginArgs) -> anyhow::Result<()> {
    devcycle::tls::install_default_provider();
    let ch = gateway_channel(&config.client.gateway, &gateway_ca(config)?)?;
    let mut auth = pb::auth_client::AuthClient::new(ch);
    let password = read_password(args.password_stdin, "password: ")?;
    if let Some(token) = &args.bootstrap {
        let mut req = tonic::Request::new(pb::CreateUserRequest {
            name: args.username.clone(),
            password: password.clone(),
            roles: vec![pb::Role::Admin as i32],
        });
        req.metadata_mut()
            .insert("authorization", format!("Bootstrap {token}").parse()?);
        auth.create_user(req).await?;
        eprintln!("created admin {}", args.username);
    }
    let device = args
        .device
        .unwrap_or_else(|| std::env::var("HOSTNAME").unwrap_or_else(|_| "cli".into()));
    let r = auth
        .login(pb::LoginRequest {
            username: args.username.clone(),
            password,
            totp_code: args.totp.unwrap_or_default(),
            device,
        })
        .await?
        .into_inner();
    Credentials {
        gateway: config.client.gateway.clone(),
        user: args.username.clone(),
        session_id: r.session_id,
        access_token: r.access_token,
        refresh_token: r.refresh_token,
        access_expires_at: devcycle::time::now_ms() / 1000 + i64::from(r.access_expires_in_s),
    }
    .save(config)?;
    println!(
        "logged in to {} as {}",
        config.client.gateway, args.username
    );
    Ok(())
}

pub async fn logout(config: Config) -> anyhow::Result<()> {
    if Credentials::load(&config)?.is_none() {
        println!("not logged in");
        return Ok(());
    }
    let clients = Clients::new(config.clone()).await?;
    let told = clients.auth()?.logout(pb::LogoutRequest {}).await;
    Credentials::remove(&config)?;
    told.context("credentials removed here, but the gateway could not revoke the session")?;
    println!("logged out");
    Ok(())
}

pub async fn whoami(clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let me = clients
        .auth()?
        .who_am_i(pb::WhoAmIRequest {})
        .await?
        .into_inner();
    let roles: Vec<String> = me.roles.iter().map(|r| role_name(*r)).collect();
    if as_json {
        output::json(
            &json!({"subject": me.subject, "roles": roles, "session_id": me.session_id,
            "expire_time": output::time(&me.expire_time)}),
        );
    } else {
        println!(
            "{} ({}) session {}",
            me.subject,
            roles.join(", "),
            me.session_id
        );
    }
    Ok(())
}

pub async fn sessions(cmd: SessionsCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut auth = clients.auth()?;
    match cmd {
        SessionsCmd::List => {
            let list = auth
                .list_sessions(pb::ListSessionsRequest {})
                .await?
                .into_inner()
                .sessions;
            if as_json {
                output::json(&serde_json::Value::Array(
                    list.iter()
                        .map(|s| json!({"id": s.id, "device": s.device, "client_address": s.client_address,
                            "created": output::time(&s.create_time), "last_used": output::time(&s.last_used_time),
                            "expires": output::time(&s.expire_time), "current": s.current}))
                        .collect(),
                ));
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| {
                        vec![
                            format!("{}{}", s.id, if s.current { " *" } else { "" }),
                            s.device.clone(),
                            output::or_dash(&s.client_address),
                            output::time(&s.last_used_time),
                            output::time(&s.expire_time),
                        ]
                    })
                    .collect();
                output::table(
                    &["SESSION", "DEVICE", "ADDRESS", "LAST USED", "EXPIRES"],
                    &rows,
                );
            }
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

pub async fn users(cmd: UserCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
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
            let users = paginate(None, async |page_token, page_size| {
                let r = auth
                    .list_users(pb::ListUsersRequest {
                        page_size,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((r.users, r.next_page_token))
            })
            .await?;
            if as_json {
                output::json(&serde_json::Value::Array(
                    users
                        .iter()
                        .map(|u| json!({"name": u.name, "roles": u.roles.iter().map(|r| role_name(*r)).collect::<Vec<_>>(), "totp": u.totp_enabled}))
                        .collect(),
                ));
            } else {
                let rows: Vec<Vec<String>> = users
                    .iter()
                    .map(|u| {
                        vec![
                            u.name.clone(),
                            u.roles
                                .iter()
                                .map(|r| role_name(*r))
                                .collect::<Vec<_>>()
                                .join(","),
                            if u.totp_enabled { "yes" } else { "no" }.into(),
                        ]
                    })
                    .collect();
                output::table(&["USER", "ROLES", "TOTP"], &rows);
            }
        }
    }
    Ok(())
}

pub async fn audit(args: AuditArgs, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut audit = clients.audit()?;
    let (actor, method) = (
        args.actor.unwrap_or_default(),
        args.method.unwrap_or_default(),
    );
    let limit = (args.limit > 0).then_some(args.limit as usize);
    let events = paginate(limit, async |page_token, page_size| {
        let r = audit
            .list_audit_events(pb::ListAuditEventsRequest {
                actor: actor.clone(),
                method: method.clone(),
                page_size,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok((r.events, r.next_page_token))
    })
    .await?;
    if as_json {
        output::json(&serde_json::Value::Array(
            events
                .iter()
                .map(|e| json!({"id": e.id, "time": output::time(&e.time), "actor": e.actor, "method": e.method,
                    "target": e.target, "status": e.status_code, "client_address": e.client_address}))
                .collect(),
        ));
    } else {
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                vec![
                    output::time(&e.time),
                    e.actor.clone(),
                    e.method.rsplit('/').next().unwrap_or_default().to_owned(),
                    output::or_dash(&e.target),
                    e.status_code.clone(),
                    e.client_address.clone(),
                ]
            })
            .collect();
        output::table(
            &["TIME", "ACTOR", "METHOD", "TARGET", "STATUS", "ADDRESS"],
            &rows,
        );
    }
    Ok(())
}
