//! One conformance suite for every cache: the embedded one and Redis (a real
//! server: `DEVCYCLE_TEST_REDIS_URL`, which the test command provides).

use std::sync::Arc;
use std::time::Duration;

use devcycle_gateway::cache::{Bucket, Cache, MemoryCache, RedisCache, Rotation, SessionRecord};

pub fn redis_url() -> String {
    std::env::var("DEVCYCLE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn redis() -> Arc<dyn Cache> {
    let prefix = format!("dctest:{}:", uuid::Uuid::new_v4().simple());
    let c = RedisCache::new(&redis_url(), &prefix).unwrap();
    assert!(
        c.wait_connected(Duration::from_secs(5)).await,
        "Redis at {} is unreachable; run scripts/test.sh, which starts one",
        redis_url()
    );
    Arc::new(c)
}

fn session(id: &str, user: &str, now: i64) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        user: user.into(),
        device: "laptop".into(),
        client_address: "10.0.0.1".into(),
        create_ms: now,
        last_used_ms: now,
        expire_ms: now + 60_000,
        refresh: "r0".into(),
    }
}

async fn sessions_rotate_and_detect_reuse(c: Arc<dyn Cache>) {
    let now = devcycle::time::now_ms();
    c.put_session(&session("s1", "ann", now), 30_000)
        .await
        .unwrap();
    c.put_session(&session("s2", "ann", now + 1), 30_000)
        .await
        .unwrap();
    c.put_session(&session("s3", "bob", now), 30_000)
        .await
        .unwrap();
    let mine = c.sessions_of("ann").await.unwrap();
    assert_eq!(
        mine.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["s1", "s2"]
    );
    assert_eq!(mine[0].device, "laptop");

    let r = c.rotate("s1", "r0", "r1", now + 10, 30_000).await.unwrap();
    let Rotation::Rotated(s) = r else {
        panic!("{r:?}")
    };
    assert_eq!((s.refresh.as_str(), s.last_used_ms), ("r1", now + 10));
    assert_eq!(
        c.rotate("s1", "nope", "r2", now + 20, 30_000)
            .await
            .unwrap(),
        Rotation::Unknown
    );
    assert_eq!(
        c.rotate("s1", "r0", "r2", now + 20, 30_000).await.unwrap(),
        Rotation::Reused
    );
    // Reuse ended the session: even the current token is dead.
    assert_eq!(
        c.rotate("s1", "r1", "r2", now + 30, 30_000).await.unwrap(),
        Rotation::Unknown
    );
    assert!(c.session("s1").await.unwrap().is_none());
    assert_eq!(c.sessions_of("ann").await.unwrap().len(), 1);

    let ended = c.end_session("s2").await.unwrap().unwrap();
    assert_eq!(ended.user, "ann");
    assert!(c.end_session("s2").await.unwrap().is_none());
    assert!(c.sessions_of("ann").await.unwrap().is_empty());
    assert_eq!(c.sessions_of("bob").await.unwrap().len(), 1);
}

async fn idle_sessions_end(c: Arc<dyn Cache>) {
    let now = devcycle::time::now_ms();
    c.put_session(&session("idle", "cy", now), 200)
        .await
        .unwrap();
    assert!(c.session("idle").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(c.session("idle").await.unwrap().is_none());
    assert_eq!(
        c.rotate("idle", "r0", "r1", devcycle::time::now_ms(), 200)
            .await
            .unwrap(),
        Rotation::Unknown
    );
}

async fn revocations_last_until_they_expire(c: Arc<dyn Cache>) {
    let now = devcycle::time::now_ms();
    c.revoke("j:a", now + 60_000).await.unwrap();
    c.revoke("s:b", now + 300).await.unwrap();
    let mut r = c.revocations(now).await.unwrap();
    r.sort();
    assert_eq!(
        r,
        vec![
            ("j:a".to_owned(), now + 60_000),
            ("s:b".to_owned(), now + 300)
        ]
    );
    let r = c.revocations(now + 1_000).await.unwrap();
    assert_eq!(r, vec![("j:a".to_owned(), now + 60_000)]);
}

async fn gcra_allows_the_burst_then_spaces_requests(c: Arc<dyn Cache>) {
    let b = |k: &str| Bucket {
        key: k.into(),
        interval_us: 100_000,
        burst: 3,
    };
    let t0 = devcycle::time::now_ms() * 1000;
    for i in 0..3 {
        assert!(c.rate(&[b("x")], t0).await.unwrap().allowed, "burst {i}");
    }
    let d = c.rate(&[b("x")], t0).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after_us, 100_000);
    assert!(c.rate(&[b("x")], t0 + 100_000).await.unwrap().allowed);
    // All-or-nothing over several buckets: a denial counts in none.
    assert!(
        !c.rate(&[b("y"), b("x")], t0 + 100_000)
            .await
            .unwrap()
            .allowed
    );
    for _ in 0..3 {
        assert!(c.rate(&[b("y")], t0 + 100_000).await.unwrap().allowed);
    }
}

devcycle::conformance! {
    tests: [
    sessions_rotate_and_detect_reuse,
    idle_sessions_end,
    revocations_last_until_they_expire,
    gcra_allows_the_burst_then_spaces_requests
    ],
    memory(run) => { run(Arc::new(MemoryCache::default())).await },
    redis(run) => { run(redis().await).await },
}
