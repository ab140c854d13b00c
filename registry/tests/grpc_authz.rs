//! Authorization by SPIFFE ID: per-method policy and the gateway's
//! forwarded principal.

mod common;

use common::*;
use devcycle::identity::Kind;
use devcycle::proto::registry::v1 as pb;
use devcycle::testkit::expect_err;
use tonic::Code;

#[tokio::test]
async fn identities_are_authorized_per_method() {
    let m = mesh().await;
    let mut worker = m.client(Kind::Worker, "w1");
    expect_err(
        worker.create_agent(agent("x")).await,
        Code::PermissionDenied,
        "CreateAgent",
    );
    worker
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap();

    let w = |id: &str| pb::RegisterWorkerRequest {
        worker: Some(pb::Worker {
            id: id.into(),
            capacity: 2,
            ..Default::default()
        }),
    };
    expect_err(
        worker.register_worker(w("w2")).await,
        Code::PermissionDenied,
        "worker.id",
    );
    worker.register_worker(w("w1")).await.unwrap();
    let mut admin = m.admin();
    expect_err(
        admin.register_worker(w("w1")).await,
        Code::PermissionDenied,
        "RegisterWorker",
    );
    expect_err(
        worker
            .register_worker(pb::RegisterWorkerRequest {
                worker: Some(pb::Worker {
                    id: "w1".into(),
                    capacity: 0,
                    ..Default::default()
                }),
            })
            .await,
        Code::InvalidArgument,
        "worker.capacity",
    );
    let mut scheduler = m.client(Kind::Service, "scheduler");
    expect_err(
        scheduler.deploy(pb::DeployRequest::default()).await,
        Code::PermissionDenied,
        "Deploy",
    );
}

#[tokio::test]
async fn principal_is_trusted_only_from_the_gateway() {
    let m = mesh().await;
    let with_subject = |req: pb::CreateAgentRequest| {
        let mut r = tonic::Request::new(req);
        r.metadata_mut()
            .insert("x-devcycle-subject", "alice".parse().unwrap());
        r
    };
    let mut gateway = m.client(Kind::Service, "gateway");
    gateway
        .create_agent(with_subject(agent("via-gw")))
        .await
        .unwrap();
    let mut user = m.client(Kind::User, "bob");
    user.create_agent(with_subject(agent("direct")))
        .await
        .unwrap();

    let mut watch = m
        .admin()
        .watch(pb::WatchRequest {
            after_revision: Some(0),
            agent: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap().event.unwrap();
    let second = watch.message().await.unwrap().unwrap().event.unwrap();
    assert_eq!(
        (first.agent.as_str(), first.actor.as_str()),
        ("via-gw", "user/alice")
    );
    assert_eq!(
        (second.agent.as_str(), second.actor.as_str()),
        ("direct", "user/bob")
    );
}

#[test]
fn every_registry_method_has_a_policy_entry() {
    let policy = devcycle_registry::policy();
    let methods: Vec<String> = devcycle::proto::all_methods()
        .into_iter()
        .filter(|m| m.starts_with("/devcycle.registry.v1."))
        .collect();
    assert_eq!(methods.len(), 18);
    for m in methods {
        assert!(policy.has_entry(&m), "{m} has no policy entry");
    }
}
