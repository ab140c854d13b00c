//! What an operator's tooling relies on: `devcycle migrate` before a
//! rollout, and the plaintext health port that probes without a mesh
//! certificate use.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use common::BIN;

#[test]
fn migrate_applies_once_and_again_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    for _ in 0..2 {
        let out = Command::new(BIN)
            .args(["migrate", "--database-url", &url])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("sqlite database migrated"), "{stdout}");
    }
    let out = Command::new(BIN)
        .args(["migrate", "--database-url", "mysql://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("database_url"),
        "the error names the key: {err}"
    );
}

#[tokio::test]
async fn the_health_port_answers_without_tls_and_turns_not_serving_on_shutdown() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = tempfile::tempdir().unwrap();
    let health_listen = format!("127.0.0.1:{port}");
    let mut mesh = common::up(
        data.path(),
        &[
            ("DEVCYCLE_HEALTH__LISTEN", health_listen.as_str()),
            ("DEVCYCLE_SHUTDOWN__HEALTH_GRACE", "3s"),
        ],
    );

    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .expect("the health port is plaintext gRPC");
    let mut health = HealthClient::new(channel);
    let status = |service: &str| {
        let mut h = health.clone();
        let req = HealthCheckRequest {
            service: service.into(),
        };
        async move { h.check(req).await.map(|r| r.into_inner().status) }
    };
    for service in [
        "",
        "devcycle.registry.v1.AgentRegistry",
        "devcycle.scheduler.v1.Scheduler",
        "devcycle.auth.v1.Auth",
    ] {
        assert_eq!(
            status(service).await.unwrap(),
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    assert_eq!(
        status("no.such.Service").await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    // SIGTERM: NOT_SERVING through the health grace, before the exit.
    nix_kill(mesh.child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if status("").await.ok() == Some(ServingStatus::NotServing as i32) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the process never reported NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = health.check(HealthCheckRequest::default()).await;
    let _ = mesh.child.wait();
}

fn nix_kill(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}
