//! How client commands reach the mesh: through the gateway with the tokens
//! of `devcycle login` (the default), or directly over mTLS with the
//! certificate of `client.identity` when `client.direct` is set.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use devcycle::config::Config;
use devcycle::proto::auth::v1 as auth_pb;
use devcycle::tls::{MeshConnector, MeshTls};
use parking_lot::RwLock;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::credentials::Credentials;

/// Adds the current access token, if any, to every call.
#[derive(Clone, Default)]
pub struct Bearer(Arc<RwLock<Option<MetadataValue<Ascii>>>>);

impl Bearer {
    fn set(&self, token: &str) -> anyhow::Result<()> {
        *self.0.write() = Some(format!("Bearer {token}").parse()?);
        Ok(())
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = self.0.read().clone() {
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

/// A channel of a client command.
pub type Conn = InterceptedService<Channel, Bearer>;

enum Mode {
    Direct(Arc<MeshTls>),
    Gateway(Channel),
}

pub struct Clients {
    config: Config,
    mode: Mode,
    bearer: Bearer,
}

/// A channel to the gateway at `addr`, trusting the CA in `ca_pem`.
pub fn gateway_channel(addr: &str, ca_pem: &str) -> anyhow::Result<Channel> {
    let tls = devcycle::tls::public_client_config(ca_pem)?;
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_with_connector_lazy(MeshConnector::with_config(tls)))
}

/// The CA bundle that the gateway's certificate chains to.
pub fn gateway_ca(config: &Config) -> anyhow::Result<String> {
    let path = config.tls_dir().join("ca.pem");
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: the mesh CA, to trust the gateway (start the mesh with `devcycle up`, or set tls.dir)",
            path.display()
        )
    })
}

impl Clients {
    /// Clients as configured; through the gateway this needs a login, and
    /// refreshes the access token when it is about to expire.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        devcycle::tls::install_default_provider();
        if config.client.direct {
            return Self::direct(config);
        }
        let ch = gateway_channel(&config.client.gateway, &gateway_ca(&config)?)?;
        let bearer = Bearer::default();
        let creds = Credentials::load(&config)?.ok_or_else(|| {
            anyhow::anyhow!(
                "not logged in: run `devcycle login` (or set client.direct = true to use your mTLS certificate)"
            )
        })?;
        let creds = fresh(&config, ch.clone(), creds).await?;
        bearer.set(&creds.access_token)?;
        spawn_refresher(config.clone(), ch.clone(), bearer.clone(), creds);
        Ok(Self {
            config,
            mode: Mode::Gateway(ch),
            bearer,
        })
    }

    /// Clients over mTLS as `client.identity`, whose certificate is in the
    /// data directory (`devcycle up` creates it).
    pub fn direct(config: Config) -> anyhow::Result<Self> {
        devcycle::tls::install_default_provider();
        let id = config.client_identity()?;
        let files = config.identity_files(&id);
        let tls = MeshTls::from_files(files.clone(), &config.trust_domain).with_context(|| {
            format!(
                "no client certificate for {id} at {} (start the mesh with `devcycle up`, or set tls.dir)",
                files.cert.display()
            )
        })?;
        Ok(Self {
            config,
            mode: Mode::Direct(tls),
            bearer: Bearer::default(),
        })
    }

    fn conn(&self, service: &str, addr: &str) -> anyhow::Result<Conn> {
        let ch = match &self.mode {
            Mode::Gateway(ch) => ch.clone(),
            Mode::Direct(tls) => {
                devcycle::client::channel(tls, addr, self.config.service_id(service))?
            }
        };
        Ok(InterceptedService::new(ch, self.bearer.clone()))
    }

    pub fn registry(
        &self,
    ) -> anyhow::Result<
        devcycle::proto::registry::v1::agent_registry_client::AgentRegistryClient<Conn>,
    > {
        let ch = self.conn("registry", &self.config.client.registry)?;
        Ok(devcycle::proto::registry::v1::agent_registry_client::AgentRegistryClient::new(ch))
    }

    pub fn scheduler(
        &self,
    ) -> anyhow::Result<devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient<Conn>>
    {
        let ch = self.conn("scheduler", &self.config.client.scheduler)?;
        Ok(
            devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient::new(ch)
                .max_decoding_message_size(16 * 1024 * 1024),
        )
    }

    /// Messages are served by the scheduler.
    pub fn messages(
        &self,
    ) -> anyhow::Result<devcycle::proto::messages::v1::messages_client::MessagesClient<Conn>> {
        let ch = self.conn("scheduler", &self.config.client.scheduler)?;
        Ok(
            devcycle::proto::messages::v1::messages_client::MessagesClient::new(ch)
                .max_decoding_message_size(16 * 1024 * 1024),
        )
    }

    pub fn auth(&self) -> anyhow::Result<auth_pb::auth_client::AuthClient<Conn>> {
        let ch = self.conn("gateway", &self.config.client.gateway)?;
        Ok(auth_pb::auth_client::AuthClient::new(ch))
    }

    pub fn audit(&self) -> anyhow::Result<auth_pb::audit_client::AuditClient<Conn>> {
        let ch = self.conn("gateway", &self.config.client.gateway)?;
        Ok(auth_pb::audit_client::AuditClient::new(ch))
    }

    /// The executor at `client.executor`, whatever its worker id (mTLS only:
    /// an executor's control plane is not behind the gateway).
    pub fn executor(
        &self,
    ) -> anyhow::Result<devcycle::proto::executor::v1::executor_client::ExecutorClient<Conn>> {
        let Mode::Direct(tls) = &self.mode else {
            anyhow::bail!(
                "executor commands talk to an executor directly: set client.direct = true (mTLS)"
            );
        };
        let ch = devcycle::client::channel_any(tls, &self.config.client.executor)?;
        Ok(
            devcycle::proto::executor::v1::executor_client::ExecutorClient::new(
                InterceptedService::new(ch, self.bearer.clone()),
            ),
        )
    }
}

/// Credentials whose access token has at least a minute left, refreshed
/// (and saved) if needed.
async fn fresh(config: &Config, ch: Channel, creds: Credentials) -> anyhow::Result<Credentials> {
    if creds.access_expires_at - devcycle::time::now_ms() / 1000 > 60 {
        return Ok(creds);
    }
    let r = auth_pb::auth_client::AuthClient::new(ch)
        .refresh(auth_pb::RefreshRequest {
            refresh_token: creds.refresh_token.clone(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("session expired ({}): run `devcycle login`", e.message()))?
        .into_inner();
    let creds = Credentials {
        access_token: r.access_token,
        refresh_token: r.refresh_token,
        access_expires_at: devcycle::time::now_ms() / 1000 + i64::from(r.access_expires_in_s),
        ..creds
    };
    creds.save(config)?;
    Ok(creds)
}

/// Keeps a long command (`--follow`) logged in past the access token's life.
fn spawn_refresher(config: Config, ch: Channel, bearer: Bearer, mut creds: Credentials) {
    tokio::spawn(async move {
        loop {
            let left = creds.access_expires_at - devcycle::time::now_ms() / 1000;
            tokio::time::sleep(Duration::from_secs((left - 60).max(5) as u64)).await;
            match fresh(&config, ch.clone(), creds.clone()).await {
                Ok(c) => {
                    if bearer.set(&c.access_token).is_err() {
                        return;
                    }
                    creds = c;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot refresh the access token");
                    return;
                }
            }
        }
    });
}
