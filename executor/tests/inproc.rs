//! The executor's scheduler link goes in memory while this process serves
//! the scheduler (`devcycle up`), as the worker's mesh identity, and over
//! the network otherwise.

use std::net::SocketAddr;

use devcycle::client::MeshChannel;
use devcycle::identity::Kind;
use devcycle::inproc::{self, LocalService};
use devcycle::proto::scheduler::v1 as pb;
use devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient;
use devcycle::testkit::{self, TestPki, closed_addr};
use tonic::Code;

const SERVICE: &str = "devcycle.scheduler.v1.Scheduler";

/// A stand-in scheduler that answers GetRun with the caller its own
/// authorization layer saw.
fn stand_in() -> LocalService {
    let worker = TestPki::id(Kind::Worker, "w1");
    testkit::stand_in(SERVICE, "GetRun", &worker, |c| format!("seen {}", c.peer))
}

async fn get_run(addr: SocketAddr, in_process: bool) -> tonic::Status {
    let pki = TestPki::new();
    let tls = pki.identity(Kind::Worker, "w1");
    let channel = MeshChannel::new(
        &tls,
        &addr.to_string(),
        TestPki::id(Kind::Service, "scheduler"),
        in_process,
    )
    .unwrap();
    SchedulerClient::new(channel)
        .get_run(pb::GetRunRequest::default())
        .await
        .expect_err("the stand-in answers NOT_FOUND")
}

#[tokio::test]
async fn in_memory_while_served_here_as_the_worker() {
    let addr = closed_addr();
    let registered = inproc::register(addr, stand_in());
    let s = get_run(addr, true).await;
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    assert_eq!(
        s.message(),
        format!("seen {}", TestPki::id(Kind::Worker, "w1"))
    );

    // Turned off: the network, where nothing listens.
    let s = get_run(addr, false).await;
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");

    // No longer served here: the network again.
    drop(registered);
    let s = get_run(addr, true).await;
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
}
