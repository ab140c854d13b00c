//! The registry's storage: one trait, implemented for PostgreSQL and SQLite
//! by the same statements (`sql.rs`, run by `sql_store.rs`), checked by one conformance suite
//! (`tests/conformance.rs`).
//!
//! Every mutation is one transaction that also appends its event to
//! `registry_events`. Mutations are serialized (an advisory transaction lock
//! on PostgreSQL, `BEGIN IMMEDIATE` on SQLite), which makes revisions gapless
//! and ordered by commit: a watcher that has seen revision N has seen every
//! change up to N. Registry writes are rare, so the serialization costs
//! nothing that matters.

mod exec;
mod listen;
mod rows;
mod sql;
mod sql_store;

use async_trait::async_trait;
use devcycle::db::Database;
use tokio::sync::watch;

use crate::error::Result;
use crate::model::*;

pub use sql_store::SqlStore;

/// A deployment to record.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub agent: String,
    pub version: String,
    pub previous_version: Option<String>,
    pub kind: DeployKind,
}

/// A live agent version that depends on another agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependent {
    pub agent: String,
    pub version: String,
    pub requirement: String,
}

#[async_trait]
pub trait RegistryStore: Send + Sync + 'static {
    /// ALREADY_EXISTS if the name is taken.
    async fn create_agent(&self, agent: &AgentFields, actor: &str, now: i64) -> Result<Agent>;
    async fn get_agent(&self, name: &str) -> Result<Option<Agent>>;
    /// Ordered by name, names greater than `after`.
    async fn list_agents(
        &self,
        owner: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Agent>>;
    async fn update_agent(
        &self,
        name: &str,
        patch: &AgentPatch,
        actor: &str,
        now: i64,
    ) -> Result<Agent>;
    /// FAILED_PRECONDITION while the live version of another agent depends on it.
    async fn delete_agent(&self, name: &str, actor: &str, now: i64) -> Result<()>;

    /// ALREADY_EXISTS if that version was published before; FAILED_PRECONDITION
    /// if a dependency names an agent that does not exist.
    async fn publish_version(&self, version: &AgentVersion, actor: &str) -> Result<()>;
    async fn get_version(&self, agent: &str, version: &str) -> Result<Option<AgentVersion>>;
    /// Every version of an agent, in no particular order.
    async fn list_versions(&self, agent: &str) -> Result<Vec<AgentVersion>>;

    /// Records a deployment and makes its version live, if the live version
    /// is still `expected_live` (ABORTED otherwise).
    async fn record_deployment(
        &self,
        deployment: &NewDeployment,
        expected_live: Option<&str>,
        actor: &str,
        now: i64,
    ) -> Result<Deployment>;
    /// The deployment that made the current live version live.
    async fn current_deployment(&self, agent: &str) -> Result<Option<Deployment>>;
    /// The latest deployment of one version.
    async fn last_deployment_of(&self, agent: &str, version: &str) -> Result<Option<Deployment>>;
    /// Live agents whose live version depends on `agent`.
    async fn live_dependents(&self, agent: &str) -> Result<Vec<Dependent>>;
    /// Newest first, ids below `before`.
    async fn list_deployments(
        &self,
        agent: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Deployment>>;

    /// Agents with a live version that has `capability` (if given) and every
    /// label; ordered by name, names greater than `after`.
    async fn find_agents(
        &self,
        capability: Option<&str>,
        labels: &[(String, String)],
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Agent, AgentVersion)>>;

    /// Registers or re-registers a worker as UP.
    async fn register_worker(&self, worker: &Worker, actor: &str) -> Result<Worker>;
    /// `None` if the worker is not registered.
    async fn heartbeat(
        &self,
        id: &str,
        in_flight: u32,
        draining: bool,
        now: i64,
    ) -> Result<Option<Worker>>;
    /// False if the worker was not registered.
    async fn deregister_worker(&self, id: &str, actor: &str, now: i64) -> Result<bool>;
    /// Workers serving `agent` (or any agent), ordered by id, ids above `after`.
    async fn list_workers(
        &self,
        agent: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Worker>>;
    /// Marks DOWN every worker not heard from since `stale_before`; returns their ids.
    async fn mark_down(&self, stale_before: i64, now: i64) -> Result<Vec<String>>;

    /// Events with a revision above `after`, oldest first.
    async fn events_after(
        &self,
        after: i64,
        agent: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>>;
    async fn head_revision(&self) -> Result<i64>;
    /// The latest revision known to be committed; changes when one is.
    fn revisions(&self) -> watch::Receiver<i64>;
}

/// The store for a database of either engine.
pub async fn open(db: &Database) -> Result<std::sync::Arc<dyn RegistryStore>> {
    Ok(std::sync::Arc::new(SqlStore::new(db).await?))
}
