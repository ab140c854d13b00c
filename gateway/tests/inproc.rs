//! A routed service served by the gateway's own process (`devcycle up`) is
//! called in memory, through the service's own authorization, as the
//! gateway's mesh identity acting for the end user.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use devcycle::authz::{AuthzLayer, Caller, Policy};
use devcycle::identity::Kind;
use devcycle::inproc::LocalService;
use devcycle::proto::registry::v1 as reg;
use devcycle::testkit::TestPki;
use devcycle_gateway::Route;
use devcycle_gateway::cache::MemoryCache;
use http::{Request, Response};
use tonic::Code;
use tonic::body::Body;

const SERVICE: &str = "devcycle.registry.v1.AgentRegistry";

/// An address nothing listens on.
fn closed_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A stand-in registry that answers GetAgent with who it saw calling, as
/// the service's own authorization layer established it.
fn stand_in() -> LocalService {
    let gateway = TestPki::id(Kind::Service, "gateway");
    let policy = Policy::for_service(&format!("/{SERVICE}/"), &[("GetAgent", &[&gateway.path()])]);
    let stack = tower::ServiceBuilder::new()
        .layer(AuthzLayer::new(policy, gateway, None))
        .service(tower::service_fn(|req: Request<Body>| async move {
            let caller = req.extensions().get::<Caller>().expect("authorized");
            Ok::<Response<Body>, Infallible>(
                tonic::Status::not_found(format!("seen {} via {}", caller.actor(), caller.peer))
                    .into_http(),
            )
        }));
    LocalService::new(stack)
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
