//! Shared by the gRPC test files: a registry on a fresh SQLite database
//! behind mTLS, clients by identity, and request builders.
// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use devcycle::db::Database;
use devcycle::identity::Kind;
use devcycle::proto::registry::v1 as pb;
use devcycle::proto::registry::v1::agent_registry_client::AgentRegistryClient;
use devcycle::testkit::{TestPki, fresh_sqlite};
use devcycle::tls::MeshTls;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub struct Mesh {
    pub pki: TestPki,
    pub addr: String,
    pub stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn mesh_with(heartbeat: Duration, missed: u32) -> Mesh {
    let pki = TestPki::new();
    let (dir, url) = fresh_sqlite();
    let stop = CancellationToken::new();
    let opts = devcycle_registry::Options {
        endpoint: devcycle::server::Endpoint {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tls: pki.identity(Kind::Service, "registry"),
            gateway: TestPki::id(Kind::Service, "gateway"),
            health_grace: Duration::ZERO,
            drain: Duration::from_secs(1),
        },
        db: Database::open(&url).await.unwrap(),
        heartbeat_interval: heartbeat,
        missed_heartbeats: missed,
    };
    let running = devcycle_registry::start(opts, stop.clone()).await.unwrap();
    Mesh {
        pki,
        addr: running.addr.to_string(),
        stop,
        _dir: dir,
    }
}

pub async fn mesh() -> Mesh {
    mesh_with(Duration::from_secs(5), 3).await
}

impl Mesh {
    pub fn client_as(&self, tls: &Arc<MeshTls>) -> AgentRegistryClient<Channel> {
        let ch = devcycle::client::channel(tls, &self.addr, TestPki::id(Kind::Service, "registry"))
            .unwrap();
        AgentRegistryClient::new(ch)
    }
    pub fn client(&self, kind: Kind, name: &str) -> AgentRegistryClient<Channel> {
        self.client_as(&self.pki.identity(kind, name))
    }
    pub fn admin(&self) -> AgentRegistryClient<Channel> {
        self.client(Kind::User, "admin")
    }
}

pub fn agent(name: &str) -> pb::CreateAgentRequest {
    pb::CreateAgentRequest {
        agent: Some(pb::Agent {
            name: name.into(),
            owner: "team".into(),
            ..Default::default()
        }),
    }
}

pub fn builtin() -> Option<pb::Runtime> {
    Some(pb::Runtime {
        kind: Some(pb::runtime::Kind::Builtin(pb::BuiltinRuntime {
            name: "noop".into(),
        })),
    })
}

pub fn version(agent: &str, v: &str, deps: &[(&str, &str)]) -> pb::PublishVersionRequest {
    pb::PublishVersionRequest {
        version: Some(pb::AgentVersion {
            agent: agent.into(),
            version: v.into(),
            runtime: builtin(),
            capabilities: vec!["code.review".into()],
            dependencies: deps
                .iter()
                .map(|(a, r)| pb::Dependency {
                    agent: a.to_string(),
                    requirement: r.to_string(),
                })
                .collect(),
            ..Default::default()
        }),
    }
}
