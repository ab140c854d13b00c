//! Two gateways behind one Redis, and what happens when Redis goes away:
//! revocations stay in force (fail closed), rate limits are not enforced
//! (fail open), logins are UNAVAILABLE, and everything recovers without a
//! restart when Redis returns. The Redis server here is the test's own, so
//! it can be stopped.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use devcycle::proto::auth::v1 as pb;
use devcycle_gateway::cache::{Cache, RedisCache};
use tonic::Code;

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn cache(url: &str) -> Arc<dyn Cache> {
    let c = RedisCache::new(url, "dc:").unwrap();
    assert!(c.wait_connected(Duration::from_secs(5)).await);
    Arc::new(c)
}

/// Polls `f` until it holds, for at most `within`.
async fn eventually<F: AsyncFnMut() -> bool>(within: Duration, mut f: F) -> Duration {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < within, "not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_for_revocation_open_for_rate_limits() {
    let port = free_port();
    let redis = Redis::start(port);
    let (mut s, dir) = setup(cache(&redis.url()).await);
    s.per_principal = (1.0, 3);
    let (signer, ca, db_url) = (Arc::clone(&s.signer), Arc::clone(&s.ca), s.db_url.clone());
    let a = start(s, Some(dir)).await;
    let (mut s2, _dir2) = setup(cache(&redis.url()).await);
    s2.signer = signer;
    s2.ca = ca;
    s2.db_url = db_url;
    s2.per_principal = (1.0, 3);
    let b = start(s2, None).await;

    // Each phase has its own principal, so that one phase's calls (a poll
    // runs as often as the machine allows) never spend another's burst. The
    // admin makes exactly three calls here: its whole burst.
    let t1 = a.user("watcher", &[pb::Role::Viewer]).await;
    let live = a.user("live", &[pb::Role::Viewer]).await;
    let revoked = a.user("revoked", &[pb::Role::Viewer]).await;

    // A logout on one replica is honoured by the other within a second.
    assert_eq!(b.whoami(&t1.access_token).await.unwrap().subject, "watcher");
    a.auth()
        .logout(bearer(pb::LogoutRequest {}, &t1.access_token))
        .await
        .unwrap();
    // Revocation is checked before rate limits: a limited poll just retries.
    let took = eventually(Duration::from_secs(1), async || {
        matches!(b.whoami( &t1.access_token).await, Err(e) if e.code() == Code::Unauthenticated)
    })
    .await;
    let e = b.whoami(&t1.access_token).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?} after {took:?}");

    // Redis goes away.
    b.auth()
        .logout(bearer(pb::LogoutRequest {}, &revoked.access_token))
        .await
        .unwrap();
    // Both replicas know of the revocation before the outage.
    for gw in [&a, &b] {
        eventually(Duration::from_secs(5), async || {
            matches!(gw.whoami(&revoked.access_token).await, Err(e) if e.code() == Code::Unauthenticated)
        })
        .await;
    }
    drop(redis);
    tokio::time::sleep(Duration::from_millis(300)).await;

    for gw in [&a, &b] {
        // Revoked tokens stay refused.
        let e = gw.whoami(&revoked.access_token).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let e = gw.whoami(&t1.access_token).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    // Rate limits fail open: far past the burst of 3, every call passes.
    for _ in 0..8 {
        a.whoami(&live.access_token).await.unwrap();
    }
    // Logins and refreshes need the session store.
    let e = a
        .auth()
        .login(pb::LoginRequest {
            username: "admin".into(),
            password: ADMIN_PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = a
        .auth()
        .logout(bearer(pb::LogoutRequest {}, &live.access_token))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::Unavailable,
        "a logout that cannot be shared is not claimed: {e:?}"
    );

    // Redis returns (empty: no persistence here): both recover, no restart.
    let _redis = Redis::start(port);
    eventually(Duration::from_secs(10), async || {
        a.auth()
            .login(pb::LoginRequest {
                username: "admin".into(),
                password: ADMIN_PASSWORD.into(),
                ..Default::default()
            })
            .await
            .is_ok()
    })
    .await;
    let fresh = b.admin().await;
    // Rate limits are enforced again.
    let mut limited = false;
    for _ in 0..6 {
        if let Err(e) = b.whoami(&fresh.access_token).await {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
            limited = true;
        }
    }
    assert!(limited, "rate limits apply again");
    // What was revoked before the outage is still refused.
    let e = a.whoami(&revoked.access_token).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}
