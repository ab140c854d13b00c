//! Request rate limits without a round trip on the request path.
//!
//! Each replica decides locally, with GCRA over its own copy of every bucket
//! it has seen. With a shared cache (Redis), a bucket's first request on a
//! replica loads the shared state (one round trip, then warm for
//! [`IDLE_US`]), and a background task charges what the replica admitted to
//! the shared bucket every `sync`, taking back the shared arrival time, so
//! every replica learns what the others spent.
//!
//! Invariants: a local arrival time is never behind the shared one last
//! seen; everything admitted is charged once (or counted as not shared when
//! the cache is unreachable). The price of the missing round trip is a
//! bounded overshoot: what other replicas admitted is seen up to one `sync`
//! late, so a bucket can exceed its limit by at most what each other replica
//! admits in one `sync` (never more than its burst). Over longer windows the
//! rate is exact: overshoot is charged and paid back. While the cache is
//! unreachable each replica enforces the limits on its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::cache::{Bucket, Cache, CacheError, Charge, gcra};

/// A bucket unused this long on a replica is forgotten there.
pub const IDLE_US: i64 = 60_000_000;
/// How often idle buckets are looked for.
const SWEEP_US: i64 = 1_000_000;

pub struct Limiter {
    state: Mutex<State>,
    /// The cache shared with other replicas; `None` in one process.
    shared: Option<Arc<dyn Cache>>,
    last_warning_us: AtomicI64,
}

#[derive(Default)]
struct State {
    buckets: HashMap<String, Local>,
    /// Keys with admissions not yet charged, so a sync costs what changed,
    /// not every bucket known.
    dirty: Vec<String>,
    last_sweep_us: i64,
}

/// This replica's view of one bucket.
struct Local {
    /// The theoretical arrival time: shared state plus local admissions.
    tat: i64,
    bucket: Bucket,
    /// Admitted here since the last charge, the first at `since_us`.
    pending: u32,
    since_us: i64,
    last_us: i64,
}

impl Local {
    fn new(bucket: &Bucket, tat: i64, now_us: i64) -> Self {
        Self {
            tat,
            bucket: bucket.clone(),
            pending: 0,
            since_us: now_us,
            last_us: now_us,
        }
    }
}

/// What [`Limiter::check`] found.
enum Decision {
    Allowed,
    Wait(i64),
    /// Some bucket is not known here yet.
    Cold,
}

impl Limiter {
    /// Limits shared through `cache` when other replicas use it too
    /// ([`Cache::shared`]), else decided by this process alone.
    pub fn new(cache: &Arc<dyn Cache>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            shared: cache.shared().then(|| Arc::clone(cache)),
            last_warning_us: AtomicI64::new(0),
        })
    }

    /// Admits one request into every bucket, or refuses it (counted in
    /// none) with how long until it would be allowed, in µs.
    pub async fn admit(&self, buckets: &[Bucket], now_us: i64) -> Result<(), i64> {
        match self.check(buckets, now_us, false) {
            Decision::Allowed => return Ok(()),
            Decision::Wait(us) => return Err(us),
            Decision::Cold => {}
        }
        self.load(buckets, now_us).await;
        match self.check(buckets, now_us, true) {
            Decision::Wait(us) => Err(us),
            _ => Ok(()),
        }
    }

    /// The decision from local state; unknown buckets start full when
    /// `create` or when nothing is shared, else the answer is `Cold`.
    fn check(&self, buckets: &[Bucket], now_us: i64, create: bool) -> Decision {
        let create = create || self.shared.is_none();
        let mut state = self.state.lock();
        let State {
            buckets: map,
            dirty,
            ..
        } = &mut *state;
        let mut wait = 0;
        for b in buckets {
            let tat = match map.get_mut(&b.key) {
                Some(l) => {
                    // The configured rate may have changed under the key.
                    l.bucket.interval_us = b.interval_us;
                    l.bucket.burst = b.burst;
                    Some(l.tat)
                }
                None if create => None,
                None => return Decision::Cold,
            };
            if let Err(w) = gcra(tat, now_us, b) {
                wait = wait.max(w);
            }
        }
        if wait > 0 {
            return Decision::Wait(wait);
        }
        let counted = self.shared.is_some();
        for b in buckets {
            // No key is copied for a bucket already known (the usual case).
            if !map.contains_key(&b.key) {
                map.insert(b.key.clone(), Local::new(b, now_us, now_us));
            }
            let Some(l) = map.get_mut(&b.key) else {
                continue;
            };
            l.tat = l.tat.max(now_us) + b.interval_us;
            l.last_us = now_us;
            if counted {
                if l.pending == 0 {
                    l.since_us = now_us;
                    dirty.push(b.key.clone());
                }
                l.pending += 1;
            }
        }
        Decision::Allowed
    }

    /// Loads the shared state of the buckets not known here (one round
    /// trip). When the cache is unreachable they start full, enforced here
    /// alone until it is back.
    async fn load(&self, buckets: &[Bucket], now_us: i64) {
        let Some(cache) = &self.shared else { return };
        let cold: Vec<Charge> = {
            let map = &self.state.lock().buckets;
            buckets
                .iter()
                .filter(|b| !map.contains_key(&b.key))
                .map(|b| Charge {
                    bucket: b.clone(),
                    n: 0,
                    since_us: now_us,
                })
                .collect()
        };
        let tats = match cache.charge(&cold, now_us).await {
            Ok(t) => t,
            Err(e) => {
                self.not_shared(&e, 1, now_us);
                return;
            }
        };
        let map = &mut self.state.lock().buckets;
        for (c, tat) in cold.iter().zip(tats) {
            let l = map
                .entry(c.bucket.key.clone())
                .or_insert_with(|| Local::new(&c.bucket, tat, now_us));
            l.tat = l.tat.max(tat);
        }
    }

    /// Charges what was admitted since the last call to the shared cache and
    /// takes back the shared arrival times; forgets idle buckets.
    pub async fn sync_once(&self) -> Result<(), CacheError> {
        let now_us = devcycle::time::now_ms() * 1000;
        let charges: Vec<Charge> = {
            let mut state = self.state.lock();
            let State {
                buckets,
                dirty,
                last_sweep_us,
            } = &mut *state;
            if now_us - *last_sweep_us >= SWEEP_US {
                *last_sweep_us = now_us;
                buckets.retain(|_, l| l.pending > 0 || now_us - l.last_us < IDLE_US);
            }
            dirty
                .drain(..)
                .filter_map(|key| {
                    let l = buckets.get_mut(&key)?;
                    Some(Charge {
                        bucket: l.bucket.clone(),
                        n: std::mem::take(&mut l.pending),
                        since_us: l.since_us,
                    })
                })
                .filter(|c| c.n > 0)
                .collect()
        };
        let Some(cache) = &self.shared else {
            return Ok(());
        };
        if charges.is_empty() {
            return Ok(());
        }
        match cache.charge(&charges, now_us).await {
            Ok(tats) => {
                let map = &mut self.state.lock().buckets;
                for (c, tat) in charges.iter().zip(tats) {
                    if let Some(l) = map.get_mut(&c.bucket.key) {
                        l.tat = l.tat.max(tat);
                    }
                }
                Ok(())
            }
            Err(e) => {
                let n = charges.iter().map(|c| u64::from(c.n)).sum();
                self.not_shared(&e, n, now_us);
                Err(e)
            }
        }
    }

    /// Keeps syncing every `every` (sweeping only, in one process) until
    /// `cancel`.
    pub async fn sync(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        let every = if self.shared.is_some() {
            every
        } else {
            Duration::from_micros(SWEEP_US as u64)
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let _ = self.sync_once().await;
        }
    }

    /// Admissions the other replicas will not hear of: counted, and warned
    /// of at most every 10 s.
    fn not_shared(&self, e: &CacheError, n: u64, now_us: i64) {
        metrics::counter!("devcycle_gateway_ratelimit_fail_open_total").increment(n);
        let last = self.last_warning_us.load(Ordering::Relaxed);
        if now_us - last > 10_000_000 {
            self.last_warning_us.store(now_us, Ordering::Relaxed);
            tracing::warn!(error = %e, "rate limits enforced by this replica alone: their shared store is unreachable");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::MemoryCache;

    fn bucket(key: &str) -> Bucket {
        Bucket {
            key: key.into(),
            interval_us: 1_000_000,
            burst: 2,
        }
    }

    #[tokio::test]
    async fn one_process_decides_alone_all_or_nothing() {
        let cache: Arc<dyn Cache> = Arc::new(MemoryCache::default());
        let l = Limiter::new(&cache);
        let (a, b) = ([bucket("a")], [bucket("b")]);
        assert_eq!(l.admit(&a, 0).await, Ok(()));
        assert_eq!(l.admit(&a, 0).await, Ok(()));
        assert_eq!(l.admit(&a, 0).await, Err(1_000_000));
        // A refusal by one bucket counts in none.
        assert_eq!(
            l.admit(&[bucket("b"), bucket("a")], 0).await,
            Err(1_000_000)
        );
        assert_eq!(l.admit(&b, 0).await, Ok(()));
        assert_eq!(l.admit(&b, 0).await, Ok(()));
        assert_eq!(l.admit(&a, 1_000_000).await, Ok(()));
        // Nothing is charged to a cache that is not shared.
        let state = l.state.lock();
        assert!(state.buckets.values().all(|l| l.pending == 0));
        assert!(state.dirty.is_empty());
    }
}
