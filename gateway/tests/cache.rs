//! One conformance suite for every cache: the embedded one and Redis (a real
//! server: `DEVCYCLE_TEST_REDIS_URL`, which the test command provides).

use std::sync::Arc;
use std::time::Duration;

use devcycle_gateway::cache::{
    Bucket, Cache, Charge, MemoryCache, RedisCache, Rotation, SessionRecord,
};
use devcycle_gateway::limits::Limiter;

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

async fn charges_count_admitted_requests_without_refusing(c: Arc<dyn Cache>) {
    let b = Bucket {
        key: "c".into(),
        interval_us: 100_000,
        burst: 2,
    };
    let charge = |n, since_us| Charge {
        bucket: b.clone(),
        n,
        since_us,
    };
    let t0 = devcycle::time::now_ms() * 1000;
    // Reading a bucket never used: full, its arrival time is now.
    assert_eq!(c.charge(&[charge(0, t0)], t0).await.unwrap(), [t0]);
    // Five admitted elsewhere from t0 on, counted 50 ms later: past the
    // burst, not refused, spaced from the first.
    assert_eq!(
        c.charge(&[charge(5, t0)], t0 + 50_000).await.unwrap(),
        [t0 + 500_000]
    );
    // The debt is paid back before anything else is allowed.
    let d = c.rate(std::slice::from_ref(&b), t0 + 50_000).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after_us, 350_000);
    // A read changes nothing.
    assert_eq!(
        c.charge(&[charge(0, t0 + 60_000)], t0 + 60_000)
            .await
            .unwrap(),
        [t0 + 500_000]
    );
}

devcycle::conformance! {
    tests: [
    sessions_rotate_and_detect_reuse,
    idle_sessions_end,
    revocations_last_until_they_expire,
    gcra_allows_the_burst_then_spaces_requests,
    charges_count_admitted_requests_without_refusing
    ],
    memory(run) => { run(Arc::new(MemoryCache::default())).await },
    redis(run) => { run(redis().await).await },
}

/// Two replicas' limiters over one Redis: each decides alone and learns
/// what the other spent when it next charges its own admissions.
#[tokio::test]
async fn replicas_share_rate_limits_through_redis() {
    let cache = redis().await;
    let (a, b) = (Limiter::new(&cache), Limiter::new(&cache));
    let k = |key: &str| Bucket {
        key: key.into(),
        interval_us: 1_000_000,
        burst: 3,
    };
    let t = devcycle::time::now_ms() * 1000;
    for _ in 0..3 {
        a.admit(&[k("one")], t).await.unwrap();
    }
    assert_eq!(a.admit(&[k("one")], t).await, Err(1_000_000));
    a.sync_once().await.unwrap();
    // b has never seen the bucket: it loads what a spent.
    assert!(b.admit(&[k("one")], t).await.is_err());

    // Both admit before either syncs: 4 in a burst of 3.
    for l in [&a, &b] {
        l.admit(&[k("two")], t).await.unwrap();
        l.admit(&[k("two")], t).await.unwrap();
    }
    a.sync_once().await.unwrap();
    b.sync_once().await.unwrap();
    // b charged last, so it knows of all four (the arrival time is 4 s on,
    // the burst 3) and refuses until the overshoot is paid back.
    let later = t + 1_000_000;
    assert_eq!(b.admit(&[k("two")], later).await, Err(1_000_000));
    // a hears of b's two when it next charges: one more gets through first,
    // within the bound (what one replica admits between syncs) ...
    assert_eq!(a.admit(&[k("two")], later).await, Ok(()));
    a.sync_once().await.unwrap();
    // ... and then a knows of all five.
    assert_eq!(a.admit(&[k("two")], later).await, Err(2_000_000));
}
