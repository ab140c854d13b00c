//! The change stream and worker liveness over the wire.

mod common;

use std::time::Duration;

use common::*;
use devcycle::identity::Kind;
use devcycle::proto::registry::v1 as pb;
use devcycle::testkit::expect_err;
use tonic::Code;

#[tokio::test]
async fn watch_replays_resumes_and_follows() {
    let m = mesh().await;
    let mut c = m.admin();
    for a in ["w-a", "w-b", "w-c"] {
        c.create_agent(agent(a)).await.unwrap();
    }
    let mut all = c
        .watch(pb::WatchRequest {
            after_revision: Some(0),
            agent: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            all.message()
                .await
                .unwrap()
                .unwrap()
                .event
                .unwrap()
                .revision,
        );
    }
    assert_eq!(seen, [1, 2, 3]);

    // Resume after revision 1: exactly 2 and 3, then live changes.
    let mut resumed = c
        .watch(pb::WatchRequest {
            after_revision: Some(1),
            agent: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut only_new = c
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut only_b = c
        .watch(pb::WatchRequest {
            after_revision: Some(0),
            agent: "w-b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    c.publish_version(version("w-b", "1.0.0", &[]))
        .await
        .unwrap();
    let revs: Vec<i64> = [
        resumed.message().await.unwrap().unwrap(),
        resumed.message().await.unwrap().unwrap(),
        resumed.message().await.unwrap().unwrap(),
    ]
    .into_iter()
    .map(|r| r.event.unwrap().revision)
    .collect();
    assert_eq!(revs, [2, 3, 4]);
    let next = tokio::time::timeout(Duration::from_secs(2), all.message())
        .await
        .unwrap();
    let e = next.unwrap().unwrap().event.unwrap();
    assert_eq!(
        (e.revision, e.kind),
        (4, pb::EventKind::VersionPublished as i32)
    );
    let e = only_new.message().await.unwrap().unwrap().event.unwrap();
    assert_eq!(e.revision, 4, "unset after_revision starts at the head");
    let b: Vec<i64> = [
        only_b.message().await.unwrap().unwrap(),
        only_b.message().await.unwrap().unwrap(),
    ]
    .into_iter()
    .map(|r| r.event.unwrap().revision)
    .collect();
    assert_eq!(b, [2, 4]);
}

#[tokio::test]
async fn workers_go_down_after_missed_heartbeats() {
    let m = mesh_with(Duration::from_millis(100), 2).await;
    let mut w = m.client(Kind::Worker, "exec-1");
    let reg = w
        .register_worker(pb::RegisterWorkerRequest {
            worker: Some(pb::Worker {
                id: "exec-1".into(),
                agents: vec!["lint".into()],
                capacity: 4,
                address: "127.0.0.1:7403".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reg.heartbeat_interval_ms, 100);
    let mut admin = m.admin();
    let state = |r: pb::ListWorkersResponse| r.workers[0].state;
    let list = pb::ListWorkersRequest {
        agent: "lint".into(),
        ..Default::default()
    };
    assert_eq!(
        state(admin.list_workers(list.clone()).await.unwrap().into_inner()),
        pb::WorkerState::Up as i32
    );

    let mut down = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if state(admin.list_workers(list.clone()).await.unwrap().into_inner())
            == pb::WorkerState::Down as i32
        {
            down = true;
            break;
        }
    }
    assert!(down, "worker marked down after missed heartbeats");
    w.worker_heartbeat(pb::WorkerHeartbeatRequest {
        worker_id: "exec-1".into(),
        in_flight: 1,
        draining: false,
    })
    .await
    .unwrap();
    let r = admin.list_workers(list).await.unwrap().into_inner();
    assert_eq!(
        (r.workers[0].state, r.workers[0].in_flight),
        (pb::WorkerState::Up as i32, 1)
    );
    expect_err(
        m.client(Kind::Worker, "ghost")
            .worker_heartbeat(pb::WorkerHeartbeatRequest {
                worker_id: "ghost".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "worker_id",
    );
}
