//! `devcycle login`, `logout` and `whoami`: identity at the gateway. The
//! `sessions`, `user` and `audit` commands are in `crate::cmd`.

use std::io::BufRead;

use anyhow::Context;
use clap::Args;
use devcycle::authz::Role;
use devcycle::config::Config;
use devcycle::proto::auth::v1 as pb;
use serde_json::json;

use crate::connect::{Clients, gateway_ca, gateway_channel};
use crate::credentials::Credentials;
use crate::output;

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

pub fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<String> {
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

pub fn role(name: &str) -> anyhow::Result<i32> {
    Role::parse(name).map(Role::to_proto).ok_or_else(|| {
        anyhow::anyhow!("unknown role {name:?}: admin, maintainer, developer, viewer or worker")
    })
}

pub fn role_name(r: i32) -> String {
    match Role::from_proto(r) {
        Some(role) => role.as_str().to_owned(),
        None if r == pb::Role::Unspecified as i32 => "unspecified".to_owned(),
        None => r.to_string(),
    }
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
