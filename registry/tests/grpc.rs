//! The registry over the wire, with mTLS: the whole contract and bad input
//! with precise statuses.

mod common;

use common::*;
use devcycle::proto::registry::v1 as pb;
use devcycle::testkit::expect_err;
use tonic::Code;

#[tokio::test]
async fn bad_input_gets_precise_statuses() {
    let m = mesh().await;
    let mut c = m.admin();

    expect_err(
        c.create_agent(agent("Not_A_Label")).await,
        Code::InvalidArgument,
        "agent.name",
    );
    expect_err(
        c.create_agent(pb::CreateAgentRequest { agent: None }).await,
        Code::InvalidArgument,
        "agent",
    );
    let mut no_owner = agent("x");
    no_owner.agent.as_mut().unwrap().owner.clear();
    expect_err(
        c.create_agent(no_owner).await,
        Code::InvalidArgument,
        "agent.owner",
    );
    c.create_agent(agent("rev")).await.unwrap();
    expect_err(
        c.create_agent(agent("rev")).await,
        Code::AlreadyExists,
        "rev",
    );

    expect_err(
        c.publish_version(version("rev", "1.0", &[])).await,
        Code::InvalidArgument,
        "version.version",
    );
    expect_err(
        c.publish_version(version("rev", "1.0.0", &[("ghost", "^1")]))
            .await,
        Code::FailedPrecondition,
        "version.dependencies[0].agent",
    );
    expect_err(
        c.publish_version(version("rev", "1.0.0", &[("rev", "^1")]))
            .await,
        Code::InvalidArgument,
        "version.dependencies[0].agent",
    );
    c.create_agent(agent("dep")).await.unwrap();
    expect_err(
        c.publish_version(version("rev", "1.0.0", &[("dep", "not a req")]))
            .await,
        Code::InvalidArgument,
        "version.dependencies[0].requirement",
    );
    let mut bad_schema = version("rev", "1.0.0", &[]);
    bad_schema.version.as_mut().unwrap().input_schema = r#"{"type": "no-such-type"}"#.into();
    expect_err(
        c.publish_version(bad_schema).await,
        Code::InvalidArgument,
        "version.input_schema",
    );
    let mut not_json = version("rev", "1.0.0", &[]);
    not_json.version.as_mut().unwrap().output_schema = "{".into();
    expect_err(
        c.publish_version(not_json).await,
        Code::InvalidArgument,
        "version.output_schema",
    );
    let mut huge = version("rev", "1.0.0", &[]);
    huge.version.as_mut().unwrap().input_schema =
        format!(r#"{{"description": "{}"}}"#, "x".repeat(70 * 1024));
    expect_err(
        c.publish_version(huge).await,
        Code::InvalidArgument,
        "version.input_schema",
    );
    let mut no_runtime = version("rev", "1.0.0", &[]);
    no_runtime.version.as_mut().unwrap().runtime = None;
    expect_err(
        c.publish_version(no_runtime).await,
        Code::InvalidArgument,
        "version.runtime",
    );
    let mut preload = version("rev", "1.0.0", &[]);
    preload.version.as_mut().unwrap().runtime = Some(pb::Runtime {
        kind: Some(pb::runtime::Kind::Process(pb::ProcessRuntime {
            command: "/bin/true".into(),
            env: [("LD_PRELOAD".to_owned(), "/tmp/x.so".to_owned())].into(),
            ..Default::default()
        })),
    });
    expect_err(
        c.publish_version(preload).await,
        Code::InvalidArgument,
        "version.runtime.process.env[LD_PRELOAD]",
    );
    // Beyond the transport limit: refused before decoding.
    let mut giant = version("rev", "1.0.0", &[]);
    giant.version.as_mut().unwrap().description = "x".repeat(2 * 1024 * 1024);
    let err = c.publish_version(giant).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    // None of the refused publishes left anything behind.
    let versions = c
        .list_versions(pb::ListVersionsRequest {
            agent: "rev".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(versions.versions.is_empty());

    c.publish_version(version("rev", "1.0.0", &[]))
        .await
        .unwrap();
    expect_err(
        c.publish_version(version("rev", "1.0.0", &[])).await,
        Code::AlreadyExists,
        "immutable",
    );
    expect_err(
        c.deploy(pb::DeployRequest {
            agent: "rev".into(),
            version: "9.9.9".into(),
        })
        .await,
        Code::NotFound,
        "version",
    );
    expect_err(
        c.deploy(pb::DeployRequest {
            agent: "nope".into(),
            version: "1.0.0".into(),
        })
        .await,
        Code::NotFound,
        "agent",
    );
    expect_err(
        c.list_agents(pb::ListAgentsRequest {
            page_token: "bogus".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_token",
    );
    expect_err(
        c.list_agents(pb::ListAgentsRequest {
            page_size: -5,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_size",
    );
    // Absurd page sizes are clamped, not refused.
    let all = c
        .list_agents(pb::ListAgentsRequest {
            page_size: i32::MAX,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.agents.len(), 2);
    expect_err(
        c.update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                name: "rev".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        })
        .await,
        Code::InvalidArgument,
        "update_mask.paths[0]",
    );
    expect_err(
        c.rollback(pb::RollbackRequest {
            agent: "rev".into(),
        })
        .await,
        Code::FailedPrecondition,
        "no previous version",
    );
    expect_err(
        c.watch(pb::WatchRequest {
            after_revision: Some(1_000_000),
            agent: String::new(),
        })
        .await,
        Code::FailedPrecondition,
        "after_revision",
    );
}

#[tokio::test]
async fn deploy_rollback_and_compatibility() {
    let m = mesh().await;
    let mut c = m.admin();
    for a in ["build", "test", "ci"] {
        c.create_agent(agent(a)).await.unwrap();
    }
    for v in ["1.0.0", "1.1.0", "2.0.0"] {
        c.publish_version(version("build", v, &[])).await.unwrap();
    }
    c.publish_version(version("test", "1.0.0", &[("build", "^1")]))
        .await
        .unwrap();
    c.publish_version(version(
        "ci",
        "1.0.0",
        &[("test", "^1"), ("build", ">=1.1")],
    ))
    .await
    .unwrap();

    // Nothing is live yet: ci's dependencies are named as not deployed.
    let check = c
        .check_compatibility(pb::CheckCompatibilityRequest {
            agent: "ci".into(),
            version: "1.0.0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!check.compatible);
    assert_eq!(check.conflicts.len(), 2);
    assert!(
        check
            .conflicts
            .iter()
            .all(|c| c.kind == pb::ConflictKind::NotDeployed as i32)
    );
    expect_err(
        c.deploy(pb::DeployRequest {
            agent: "test".into(),
            version: "1.0.0".into(),
        })
        .await,
        Code::FailedPrecondition,
        "build",
    );

    let deploy = |agent: &str, v: &str| pb::DeployRequest {
        agent: agent.into(),
        version: v.into(),
    };
    c.deploy(deploy("build", "1.0.0")).await.unwrap();
    c.deploy(deploy("test", "1.0.0")).await.unwrap();
    // ci needs build >= 1.1 but 1.0.0 is live.
    let err = c.deploy(deploy("ci", "1.0.0")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(">=1.1"), "{err:?}");
    let d = c
        .deploy(deploy("build", "1.1.0"))
        .await
        .unwrap()
        .into_inner()
        .deployment
        .unwrap();
    assert_eq!(d.previous_version, "1.0.0");
    // Deploying what is live is a no-op returning the same deployment.
    let again = c
        .deploy(deploy("build", "1.1.0"))
        .await
        .unwrap()
        .into_inner()
        .deployment
        .unwrap();
    assert_eq!(again.revision, d.revision);
    c.deploy(deploy("ci", "1.0.0")).await.unwrap();
    let check = c
        .check_compatibility(pb::CheckCompatibilityRequest {
            agent: "ci".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(check.compatible, "{check:?}");
    let resolved: Vec<(String, String, i32)> = check
        .resolved
        .into_iter()
        .map(|r| (r.agent, r.version, r.depth))
        .collect();
    assert!(resolved.contains(&("test".into(), "1.0.0".into(), 1)));
    assert!(
        resolved.contains(&("build".into(), "1.1.0".into(), 2)),
        "{resolved:?}"
    );

    // build 2.0.0 would break test (^1) and ci: refused, naming the dependents.
    let err = c.deploy(deploy("build", "2.0.0")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("test@1.0.0 requires build ^1"),
        "{err:?}"
    );

    // Rollback goes down the history: 1.1.0 -> 1.0.0 is refused (ci needs >=1.1).
    let err = c
        .rollback(pb::RollbackRequest {
            agent: "build".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    c.rollback(pb::RollbackRequest { agent: "ci".into() })
        .await
        .unwrap_err();
    let history = c
        .list_deployments(pb::ListDeploymentsRequest {
            agent: "build".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.deployments[0].version, "1.1.0");
    let older = c
        .list_deployments(pb::ListDeploymentsRequest {
            agent: "build".into(),
            page_size: 1,
            page_token: history.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(older.deployments[0].version, "1.0.0");

    // A plain agent: deploy 1 then 2, roll back to 1, then nothing earlier.
    c.create_agent(agent("solo")).await.unwrap();
    for v in ["1.0.0", "2.0.0"] {
        c.publish_version(version("solo", v, &[])).await.unwrap();
        c.deploy(deploy("solo", v)).await.unwrap();
    }
    let rb = c
        .rollback(pb::RollbackRequest {
            agent: "solo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let rb = rb.deployment.unwrap();
    assert_eq!(
        (rb.version.as_str(), rb.kind),
        ("1.0.0", pb::DeploymentKind::Rollback as i32)
    );
    let live = c
        .get_agent(pb::GetAgentRequest {
            name: "solo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.agent.unwrap().live_version, "1.0.0");
    expect_err(
        c.rollback(pb::RollbackRequest {
            agent: "solo".into(),
        })
        .await,
        Code::FailedPrecondition,
        "no previous version",
    );

    let found = c
        .find_agents(pb::FindAgentsRequest {
            capability: "code.review".into(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = found
        .matches
        .iter()
        .map(|m| m.agent.clone().unwrap().name)
        .collect();
    assert_eq!(names, ["build", "ci"]);
    let rest = c
        .find_agents(pb::FindAgentsRequest {
            capability: "code.review".into(),
            page_size: 2,
            page_token: found.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = rest
        .matches
        .iter()
        .map(|m| m.agent.clone().unwrap().name)
        .collect();
    assert_eq!(names, ["solo", "test"]);
    assert!(rest.next_page_token.is_empty());
}

#[tokio::test]
async fn cycles_are_named() {
    let m = mesh().await;
    let mut c = m.admin();
    for a in ["a", "b"] {
        c.create_agent(agent(a)).await.unwrap();
    }
    c.publish_version(version("a", "1.0.0", &[])).await.unwrap();
    c.deploy(pb::DeployRequest {
        agent: "a".into(),
        version: "1.0.0".into(),
    })
    .await
    .unwrap();
    c.publish_version(version("b", "1.0.0", &[("a", "^1")]))
        .await
        .unwrap();
    c.deploy(pb::DeployRequest {
        agent: "b".into(),
        version: "1.0.0".into(),
    })
    .await
    .unwrap();
    c.publish_version(version("a", "1.1.0", &[("b", "^1")]))
        .await
        .unwrap();
    let check = c
        .check_compatibility(pb::CheckCompatibilityRequest {
            agent: "a".into(),
            version: "1.1.0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let cycle = check
        .conflicts
        .iter()
        .find(|c| c.kind == pb::ConflictKind::Cycle as i32)
        .expect("cycle reported");
    assert_eq!(cycle.path, ["a", "b", "a"]);
    expect_err(
        c.deploy(pb::DeployRequest {
            agent: "a".into(),
            version: "1.1.0".into(),
        })
        .await,
        Code::FailedPrecondition,
        "dependency cycle: a -> b -> a",
    );
}
