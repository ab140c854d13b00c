//! A routed service served by the gateway's own process (`devcycle up`) is
//! called in memory, through the service's own authorization, as the
//! gateway's mesh identity acting for the end user.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use devcycle::identity::Kind;
use devcycle::inproc::LocalService;
use devcycle::proto::registry::v1 as reg;
use devcycle::testkit::{self, TestPki, closed_addr};
use devcycle_gateway::Route;
use devcycle_gateway::cache::MemoryCache;
use tonic::Code;

const SERVICE: &str = "devcycle.registry.v1.AgentRegistry";

/// A stand-in registry that answers GetAgent with who it saw calling, as
/// the service's own authorization layer established it.
fn stand_in() -> LocalService {
    let gateway = TestPki::id(Kind::Service, "gateway");
    testkit::stand_in(SERVICE, "GetAgent", &gateway, |c| {
        format!("seen {} via {}", c.actor(), c.peer)
    })
}

async fn gateway_to(addr: SocketAddr, in_process_calls: bool) -> Gateway {
    let (mut s, dir) = setup(Arc::new(MemoryCache::default()));
    s.routes = vec![Route {
        service: SERVICE,
        addr: addr.to_string(),
        id: TestPki::id(Kind::Service, "registry"),
    }];
    s.in_process_calls = in_process_calls;
    start(s, Some(dir)).await
}

async fn get_agent(gw: &Gateway) -> tonic::Status {
    let admin = gw.admin().await;
    reg::agent_registry_client::AgentRegistryClient::new(gw.channel())
        .get_agent(bearer(
            reg::GetAgentRequest { name: "any".into() },
            &admin.access_token,
        ))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn a_service_in_this_process_is_called_in_memory_as_the_gateway() {
    let addr = closed_addr();
    let _served = devcycle::inproc::register(addr, stand_in());

    let gw = gateway_to(addr, true).await;
    let e = get_agent(&gw).await;
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let gateway = TestPki::id(Kind::Service, "gateway");
    assert_eq!(e.message(), format!("seen user/admin via {gateway}"));

    // Turned off, the same route dials the address, where nothing listens.
    let gw = gateway_to(addr, false).await;
    let e = get_agent(&gw).await;
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}
