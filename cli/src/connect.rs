//! How client commands reach the mesh: over mTLS, as the identity whose
//! certificate is in the data directory (`devcycle up` creates it).

use std::sync::Arc;

use anyhow::Context;
use devcycle::config::Config;
use devcycle::tls::MeshTls;
use tonic::transport::Channel;

pub struct Clients {
    config: Config,
    tls: Arc<MeshTls>,
}

impl Clients {
    pub fn new(config: Config) -> anyhow::Result<Self> {
        devcycle::tls::install_default_provider();
        let id = config.client_identity()?;
        let files = config.identity_files(&id);
        let tls = MeshTls::from_files(files.clone(), &config.trust_domain).with_context(|| {
            format!(
                "no client certificate for {id} at {} (start the mesh with `devcycle up`, or set tls.dir)",
                files.cert.display()
            )
        })?;
        Ok(Self { config, tls })
    }

    pub fn registry(
        &self,
    ) -> anyhow::Result<
        devcycle::proto::registry::v1::agent_registry_client::AgentRegistryClient<Channel>,
    > {
        let ch = devcycle::client::channel(
            &self.tls,
            &self.config.client.registry,
            self.config.service_id("registry"),
        )?;
        Ok(devcycle::proto::registry::v1::agent_registry_client::AgentRegistryClient::new(ch))
    }
}

impl Clients {
    pub fn scheduler(
        &self,
    ) -> anyhow::Result<devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient<Channel>>
    {
        let ch = devcycle::client::channel(
            &self.tls,
            &self.config.client.scheduler,
            self.config.service_id("scheduler"),
        )?;
        Ok(
            devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient::new(ch)
                .max_decoding_message_size(16 * 1024 * 1024),
        )
    }
}

impl Clients {
    /// The executor at `client.executor`, whatever its worker id.
    pub fn executor(
        &self,
    ) -> anyhow::Result<devcycle::proto::executor::v1::executor_client::ExecutorClient<Channel>>
    {
        let ch = devcycle::client::channel_any(&self.tls, &self.config.client.executor)?;
        Ok(devcycle::proto::executor::v1::executor_client::ExecutorClient::new(ch))
    }
}
