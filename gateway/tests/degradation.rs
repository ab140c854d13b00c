//! Two gateways behind one Redis, and what happens when Redis goes away:
//! revocations stay in force (fail closed), each replica enforces rate
//! limits on its own, logins are UNAVAILABLE, and everything recovers
//! without a restart when Redis returns. The Redis server here is the test's own, so
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
async fn redis_outage_fails_closed_for_revocation_local_for_rate_limits() {
    let port = free_port();
    let redis = Redis::start(port);
    let (mut s, dir) = setup(cache(&redis.url()).await);
    s.per_principal = (0.2, 3);
    let (signer, ca, db_url) = (Arc::clone(&s.signer), Arc::clone(&s.ca), s.db_url.clone());
    let a = start(s, Some(dir)).await;
    let (mut s2, _dir2) = setup(cache(&redis.url()).await);
    s2.signer = signer;
    s2.ca = ca;
    s2.db_url = db_url;
    s2.per_principal = (0.2, 3);
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
    // Rate limits hold, each replica on its own: of 8 more calls by a
    // principal with a burst of 3 at one per 5 s, the first passes and some
    // are refused.
    a.whoami(&live.access_token).await.unwrap();
    let mut refused = 0;
    for _ in 1..8 {
        if let Err(e) = a.whoami(&live.access_token).await {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
            refused += 1;
        }
    }
    assert!(refused > 0, "limits apply while Redis is away");

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
    // Rate limits are shared again: what b admits, a refuses. b spends the
    // burst of a principal a has not seen, and once b has charged Redis, a
    // loads that bucket and refuses its first call.
    let fresh = b.user("fresh", &[pb::Role::Viewer]).await;
    for _ in 0..3 {
        b.whoami(&fresh.access_token).await.unwrap();
    }
    let redis = cache(&format!("redis://127.0.0.1:{port}")).await;
    let charged = devcycle_gateway::cache::Bucket {
        key: "p:fresh".into(),
        interval_us: 5_000_000,
        burst: 3,
    };
    eventually(Duration::from_secs(5), async || {
        let now_us = devcycle::time::now_ms() * 1000;
        let c = devcycle_gateway::cache::Charge {
            bucket: charged.clone(),
            n: 0,
            since_us: now_us,
        };
        // Three charged: the arrival time is 15 s after the first call, and
        // a call is refused while it is over 10 s on.
        redis.charge(&[c], now_us).await.unwrap()[0] > now_us + 12_000_000
    })
    .await;
    let e = a.whoami(&fresh.access_token).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // What was revoked before the outage is still refused.
    let e = a.whoami(&revoked.access_token).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}
