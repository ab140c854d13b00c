//! The registry store's conformance suite: every test runs against
//! PostgreSQL and SQLite, each on a fresh database.

use std::collections::BTreeMap;
use std::sync::Arc;

use devcycle::db::Database;
use devcycle::testkit::{fresh_postgres, fresh_sqlite};
use devcycle_registry::Error;
use devcycle_registry::model::*;
use devcycle_registry::store::{NewDeployment, RegistryStore, open};

type Store = Arc<dyn RegistryStore>;

devcycle::conformance! {
    tests: [
    agents_crud,
    versions_are_immutable,
    deployments_compare_and_set,
    discovery,
    delete_refused_while_depended_on,
    worker_liveness,
    events_are_gapless_and_filterable,
    concurrent_creates
    ],
    postgres(run) => {
        let db = Database::open(&fresh_postgres().await).await.unwrap();
        run(open(&db).await.unwrap(), &db).await
    },
    sqlite(run) => {
        let (_dir, url) = fresh_sqlite();
        let db = Database::open(&url).await.unwrap();
        run(open(&db).await.unwrap(), &db).await
    },
}

fn fields(name: &str, owner: &str, labels: &[(&str, &str)]) -> AgentFields {
    AgentFields {
        name: name.into(),
        owner: owner.into(),
        description: String::new(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn version(agent: &str, v: &str, caps: &[&str], deps: &[(&str, &str)]) -> AgentVersion {
    AgentVersion {
        agent: agent.into(),
        version: semver::Version::parse(v).unwrap(),
        spec: VersionSpec {
            runtime: Runtime::Builtin {
                name: "noop".into(),
            },
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            input_schema: String::new(),
            output_schema: String::new(),
            dependencies: deps
                .iter()
                .map(|(a, r)| Dependency {
                    agent: a.to_string(),
                    requirement: r.to_string(),
                })
                .collect(),
            limits: Limits::default(),
            description: String::new(),
        },
        publish_time: 1000,
        published_by: "user/test".into(),
    }
}

async fn deploy(s: &Store, agent: &str, v: &str) -> Deployment {
    let live = s.get_agent(agent).await.unwrap().unwrap().live_version;
    let d = NewDeployment {
        agent: agent.into(),
        version: v.into(),
        previous_version: live.clone(),
        kind: DeployKind::Deploy,
    };
    s.record_deployment(&d, live.as_deref(), "user/test", 2000)
        .await
        .unwrap()
}

async fn agents_crud(s: Store, _db: &Database) {
    let a = s
        .create_agent(&fields("lint", "team-a", &[("lang", "rust")]), "user/x", 10)
        .await
        .unwrap();
    assert_eq!(a.live_version, None);
    assert!(matches!(
        s.create_agent(&fields("lint", "team-b", &[]), "user/x", 11)
            .await,
        Err(Error::AlreadyExists(_))
    ));
    assert_eq!(s.get_agent("lint").await.unwrap().unwrap().owner, "team-a");
    assert!(s.get_agent("nope").await.unwrap().is_none());
    for n in ["b1", "b2", "b3"] {
        s.create_agent(&fields(n, "team-b", &[]), "user/x", 12)
            .await
            .unwrap();
    }
    let page = s.list_agents(None, None, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["b1", "b2"]
    );
    let page = s.list_agents(None, Some("b2"), 10).await.unwrap();
    assert_eq!(
        page.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["b3", "lint"]
    );
    assert_eq!(
        s.list_agents(Some("team-a"), None, 10).await.unwrap().len(),
        1
    );

    let patch = AgentPatch {
        labels: Some(BTreeMap::from([("tier".into(), "1".into())])),
        ..Default::default()
    };
    let a = s.update_agent("lint", &patch, "user/x", 20).await.unwrap();
    assert_eq!(a.owner, "team-a");
    assert_eq!(a.labels.get("tier").map(String::as_str), Some("1"));
    assert!(!a.labels.contains_key("lang"));
    assert_eq!(s.get_agent("lint").await.unwrap().unwrap().update_time, 20);
    assert!(matches!(
        s.update_agent("nope", &patch, "user/x", 21).await,
        Err(Error::NotFound(_))
    ));
    s.delete_agent("b1", "user/x", 30).await.unwrap();
    assert!(s.get_agent("b1").await.unwrap().is_none());
    assert!(matches!(
        s.delete_agent("b1", "user/x", 31).await,
        Err(Error::NotFound(_))
    ));
}

async fn versions_are_immutable(s: Store, _db: &Database) {
    s.create_agent(&fields("test", "o", &[]), "user/x", 1)
        .await
        .unwrap();
    s.create_agent(&fields("build", "o", &[]), "user/x", 1)
        .await
        .unwrap();
    let v = version("test", "1.0.0", &["test.run"], &[("build", "^1")]);
    s.publish_version(&v, "user/x").await.unwrap();
    let mut again = v.clone();
    again.spec.capabilities = vec!["other".into()];
    assert!(matches!(
        s.publish_version(&again, "user/x").await,
        Err(Error::AlreadyExists(_))
    ));
    assert_eq!(s.get_version("test", "1.0.0").await.unwrap().unwrap(), v);
    assert!(matches!(
        s.publish_version(&version("ghost", "1.0.0", &[], &[]), "user/x")
            .await,
        Err(Error::NotFound(_))
    ));
    match s
        .publish_version(
            &version("test", "1.1.0", &[], &[("missing", "*")]),
            "user/x",
        )
        .await
    {
        Err(Error::FailedPrecondition(m)) => assert!(m.contains("dependencies[0].agent"), "{m}"),
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
    assert!(
        s.get_version("test", "1.1.0").await.unwrap().is_none(),
        "nothing half-written"
    );
    s.publish_version(&version("test", "2.0.0-rc.1", &[], &[]), "user/x")
        .await
        .unwrap();
    let mut all: Vec<String> = s
        .list_versions("test")
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.version.to_string())
        .collect();
    all.sort();
    assert_eq!(all, ["1.0.0", "2.0.0-rc.1"]);
}

async fn deployments_compare_and_set(s: Store, _db: &Database) {
    s.create_agent(&fields("rev", "o", &[]), "user/x", 1)
        .await
        .unwrap();
    for v in ["1.0.0", "1.1.0"] {
        s.publish_version(&version("rev", v, &[], &[]), "user/x")
            .await
            .unwrap();
    }
    let d1 = deploy(&s, "rev", "1.0.0").await;
    assert_eq!(d1.previous_version, None);
    let d2 = deploy(&s, "rev", "1.1.0").await;
    assert_eq!(d2.previous_version.as_deref(), Some("1.0.0"));
    assert!(d2.revision > d1.revision);
    assert_eq!(
        s.get_agent("rev")
            .await
            .unwrap()
            .unwrap()
            .live_version
            .as_deref(),
        Some("1.1.0")
    );

    // A writer that read an older live version changes nothing.
    let stale = NewDeployment {
        agent: "rev".into(),
        version: "1.0.0".into(),
        previous_version: Some("1.0.0".into()),
        kind: DeployKind::Deploy,
    };
    assert!(matches!(
        s.record_deployment(&stale, Some("1.0.0"), "user/x", 3)
            .await,
        Err(Error::Aborted(_))
    ));
    let missing = NewDeployment {
        version: "9.9.9".into(),
        ..stale.clone()
    };
    assert!(matches!(
        s.record_deployment(&missing, Some("1.1.0"), "user/x", 3)
            .await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(s.current_deployment("rev").await.unwrap().unwrap(), d2);
    assert_eq!(
        s.last_deployment_of("rev", "1.0.0").await.unwrap().unwrap(),
        d1
    );
    let history = s.list_deployments("rev", None, 10).await.unwrap();
    assert_eq!(history, vec![d2.clone(), d1.clone()]);
    let older = s.list_deployments("rev", Some(d2.id), 10).await.unwrap();
    assert_eq!(older, vec![d1]);
}

async fn discovery(s: Store, _db: &Database) {
    for (name, team) in [
        ("a-review", "x"),
        ("b-review", "y"),
        ("c-lint", "x"),
        ("d-review", "x"),
    ] {
        s.create_agent(&fields(name, "o", &[("team", team)]), "user/x", 1)
            .await
            .unwrap();
    }
    for name in ["a-review", "b-review", "d-review"] {
        s.publish_version(&version(name, "1.0.0", &["code.review"], &[]), "user/x")
            .await
            .unwrap();
    }
    s.publish_version(&version("c-lint", "1.0.0", &["code.lint"], &[]), "user/x")
        .await
        .unwrap();
    // Only live versions are discoverable.
    assert!(
        s.find_agents(Some("code.review"), &[], None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    for name in ["a-review", "b-review", "c-lint", "d-review"] {
        deploy(&s, name, "1.0.0").await;
    }
    let names =
        |v: Vec<(Agent, AgentVersion)>| v.into_iter().map(|(a, _)| a.name).collect::<Vec<_>>();
    assert_eq!(
        names(
            s.find_agents(Some("code.review"), &[], None, 10)
                .await
                .unwrap()
        ),
        ["a-review", "b-review", "d-review"]
    );
    let team_x = [("team".to_owned(), "x".to_owned())];
    assert_eq!(
        names(
            s.find_agents(Some("code.review"), &team_x, None, 10)
                .await
                .unwrap()
        ),
        ["a-review", "d-review"]
    );
    assert_eq!(
        names(
            s.find_agents(None, &team_x, Some("a-review"), 1)
                .await
                .unwrap()
        ),
        ["c-lint"]
    );
    let found = s
        .find_agents(Some("code.lint"), &[], None, 10)
        .await
        .unwrap();
    assert_eq!(found[0].1.spec.capabilities, ["code.lint"]);
}

async fn delete_refused_while_depended_on(s: Store, _db: &Database) {
    s.create_agent(&fields("base", "o", &[]), "user/x", 1)
        .await
        .unwrap();
    s.create_agent(&fields("top", "o", &[]), "user/x", 1)
        .await
        .unwrap();
    s.publish_version(&version("base", "1.0.0", &[], &[]), "user/x")
        .await
        .unwrap();
    s.publish_version(&version("top", "1.0.0", &[], &[("base", "^1")]), "user/x")
        .await
        .unwrap();
    deploy(&s, "base", "1.0.0").await;
    // A published but not live dependent does not block.
    s.delete_agent("top", "user/x", 2).await.unwrap();
    s.create_agent(&fields("top", "o", &[]), "user/x", 3)
        .await
        .unwrap();
    s.publish_version(&version("top", "1.0.0", &[], &[("base", "^1")]), "user/x")
        .await
        .unwrap();
    deploy(&s, "top", "1.0.0").await;
    let deps = s.live_dependents("base").await.unwrap();
    assert_eq!(deps.len(), 1);
    assert_eq!(
        (deps[0].agent.as_str(), deps[0].requirement.as_str()),
        ("top", "^1")
    );
    match s.delete_agent("base", "user/x", 4).await {
        Err(Error::FailedPrecondition(m)) => assert!(m.contains("top"), "{m}"),
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
    s.delete_agent("top", "user/x", 5).await.unwrap();
    s.delete_agent("base", "user/x", 6).await.unwrap();
}

fn worker(id: &str, agents: &[&str], now: i64) -> Worker {
    Worker {
        id: id.into(),
        agents: agents.iter().map(|a| a.to_string()).collect(),
        capacity: 4,
        in_flight: 0,
        address: "127.0.0.1:7403".into(),
        labels: BTreeMap::new(),
        state: WorkerState::Up,
        register_time: now,
        last_heartbeat: now,
    }
}

async fn worker_liveness(s: Store, _db: &Database) {
    s.register_worker(&worker("w1", &["lint"], 100), "worker/w1")
        .await
        .unwrap();
    s.register_worker(&worker("w2", &[], 100), "worker/w2")
        .await
        .unwrap();
    s.register_worker(&worker("w3", &["test"], 100), "worker/w3")
        .await
        .unwrap();
    let ids = |v: Vec<Worker>| v.into_iter().map(|w| w.id).collect::<Vec<_>>();
    // w2 serves any agent.
    assert_eq!(
        ids(s.list_workers(Some("lint"), None, 10).await.unwrap()),
        ["w1", "w2"]
    );
    assert_eq!(
        ids(s.list_workers(None, Some("w1"), 1).await.unwrap()),
        ["w2"]
    );

    let w = s.heartbeat("w1", 3, false, 200).await.unwrap().unwrap();
    assert_eq!(
        (w.in_flight, w.state, w.last_heartbeat),
        (3, WorkerState::Up, 200)
    );
    assert!(
        s.heartbeat("nobody", 0, false, 200)
            .await
            .unwrap()
            .is_none()
    );

    // w2 and w3 last beat at 100: stale before 150.
    assert_eq!(s.mark_down(150, 300).await.unwrap(), ["w2", "w3"]);
    assert!(
        s.mark_down(150, 301).await.unwrap().is_empty(),
        "marked once"
    );
    let all = s.list_workers(None, None, 10).await.unwrap();
    let state = |id: &str| all.iter().find(|w| w.id == id).unwrap().state;
    assert_eq!(
        (state("w1"), state("w2")),
        (WorkerState::Up, WorkerState::Down)
    );

    let before = s.head_revision().await.unwrap();
    let w = s.heartbeat("w2", 0, true, 400).await.unwrap().unwrap();
    assert_eq!(w.state, WorkerState::Draining);
    let events = s.events_after(before, None, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind, events[0].worker_id.as_str()),
        (EventKind::WorkerDraining, "w2")
    );

    assert!(s.deregister_worker("w3", "user/x", 500).await.unwrap());
    assert!(!s.deregister_worker("w3", "user/x", 501).await.unwrap());
    assert_eq!(
        ids(s.list_workers(None, None, 10).await.unwrap()),
        ["w1", "w2"]
    );
}

async fn events_are_gapless_and_filterable(s: Store, _db: &Database) {
    let mut revisions = s.revisions();
    let start = *revisions.borrow_and_update();
    s.create_agent(&fields("e1", "o", &[]), "user/x", 1)
        .await
        .unwrap();
    assert!(revisions.has_changed().unwrap(), "commit announced");
    s.create_agent(&fields("e2", "o", &[]), "user/x", 1)
        .await
        .unwrap();
    s.publish_version(&version("e1", "1.0.0", &[], &[]), "user/y")
        .await
        .unwrap();
    deploy(&s, "e1", "1.0.0").await;
    let all = s.events_after(start, None, 100).await.unwrap();
    let revs: Vec<i64> = all.iter().map(|e| e.revision).collect();
    assert_eq!(revs, (start + 1..=start + 4).collect::<Vec<_>>());
    let kinds: Vec<EventKind> = all.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::AgentCreated,
            EventKind::AgentCreated,
            EventKind::VersionPublished,
            EventKind::Deployed
        ]
    );
    assert_eq!(all[2].actor, "user/y");
    assert_eq!(s.head_revision().await.unwrap(), start + 4);
    let e1 = s.events_after(start, Some("e1"), 100).await.unwrap();
    assert_eq!(e1.len(), 3);
    let tail = s.events_after(start + 2, None, 1).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].revision, start + 3);
}

async fn concurrent_creates(s: Store, _db: &Database) {
    let start = s.head_revision().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            // Half race for one name, half create their own.
            let name = if i % 2 == 0 {
                "contended".to_owned()
            } else {
                format!("own-{i}")
            };
            s.create_agent(&fields(&name, "o", &[]), "user/x", i).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::AlreadyExists(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(ok, 9, "one contended create and eight own creates succeed");
    let events = s.events_after(start, None, 100).await.unwrap();
    let revs: Vec<i64> = events.iter().map(|e| e.revision).collect();
    assert_eq!(
        revs,
        (start + 1..=start + 9).collect::<Vec<_>>(),
        "gapless under concurrency"
    );
}
