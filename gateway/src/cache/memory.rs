//! The embedded cache of `devcycle up`: one process, so plain memory.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    Bucket, Cache, CacheError, Charge, RateDecision, Rotation, SessionRecord, charged, gcra,
};

/// Buckets are swept of idle entries when there are more than this many.
const SWEEP_AT: usize = 100_000;

#[derive(Default)]
pub struct MemoryCache {
    state: Mutex<State>,
    rates: Mutex<HashMap<String, i64>>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Live>,
    by_user: HashMap<String, HashSet<String>>,
    revoked: HashMap<String, i64>,
}

struct Live {
    record: SessionRecord,
    idle_ms: i64,
    used: HashSet<String>,
}

impl Live {
    fn alive(&self, now_ms: i64) -> bool {
        now_ms < self.record.expire_ms && now_ms < self.record.last_used_ms + self.idle_ms
    }
}

impl State {
    fn remove(&mut self, id: &str) -> Option<Live> {
        let live = self.sessions.remove(id)?;
        if let Some(set) = self.by_user.get_mut(&live.record.user) {
            set.remove(id);
            if set.is_empty() {
                self.by_user.remove(&live.record.user);
            }
        }
        Some(live)
    }

    /// The live session `id`, dropping it if it has timed out.
    fn live(&mut self, id: &str, now_ms: i64) -> Option<&mut Live> {
        if self.sessions.get(id).is_some_and(|l| !l.alive(now_ms)) {
            self.remove(id);
        }
        self.sessions.get_mut(id)
    }
}

fn now_ms() -> i64 {
    devcycle::time::now_ms()
}

#[async_trait]
impl Cache for MemoryCache {
    async fn put_session(&self, s: &SessionRecord, idle_ms: i64) -> Result<(), CacheError> {
        let mut st = self.state.lock();
        if st.sessions.len() >= SWEEP_AT {
            let now = now_ms();
            let dead: Vec<String> = st
                .sessions
                .iter()
                .filter(|(_, l)| !l.alive(now))
                .map(|(id, _)| id.clone())
                .collect();
            for id in dead {
                st.remove(&id);
            }
        }
        st.by_user
            .entry(s.user.clone())
            .or_default()
            .insert(s.id.clone());
        st.sessions.insert(
            s.id.clone(),
            Live {
                record: s.clone(),
                idle_ms,
                used: HashSet::new(),
            },
        );
        Ok(())
    }

    async fn rotate(
        &self,
        id: &str,
        presented: &str,
        next: &str,
        now_ms: i64,
        idle_ms: i64,
    ) -> Result<Rotation, CacheError> {
        let mut st = self.state.lock();
        let Some(live) = st.live(id, now_ms) else {
            return Ok(Rotation::Unknown);
        };
        if live.record.refresh == presented {
            live.used.insert(presented.to_owned());
            live.record.refresh = next.to_owned();
            live.record.last_used_ms = now_ms;
            live.idle_ms = idle_ms;
            return Ok(Rotation::Rotated(live.record.clone()));
        }
        if live.used.contains(presented) {
            st.remove(id);
            return Ok(Rotation::Reused);
        }
        Ok(Rotation::Unknown)
    }

    async fn session(&self, id: &str) -> Result<Option<SessionRecord>, CacheError> {
        Ok(self
            .state
            .lock()
            .live(id, now_ms())
            .map(|l| l.record.clone()))
    }

    async fn sessions_of(&self, user: &str) -> Result<Vec<SessionRecord>, CacheError> {
        let mut st = self.state.lock();
        let ids: Vec<String> = st
            .by_user
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let now = now_ms();
        let mut out: Vec<SessionRecord> = ids
            .iter()
            .filter_map(|id| st.live(id, now).map(|l| l.record.clone()))
            .collect();
        out.sort_by(|a, b| a.create_ms.cmp(&b.create_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn end_session(&self, id: &str) -> Result<Option<SessionRecord>, CacheError> {
        let mut st = self.state.lock();
        let alive = st.live(id, now_ms()).is_some();
        Ok(st.remove(id).filter(|_| alive).map(|l| l.record))
    }

    async fn revoke(&self, entry: &str, until_ms: i64) -> Result<(), CacheError> {
        let mut st = self.state.lock();
        let now = now_ms();
        st.revoked.retain(|_, until| *until > now);
        let e = st.revoked.entry(entry.to_owned()).or_insert(until_ms);
        *e = (*e).max(until_ms);
        Ok(())
    }

    async fn revocations(&self, now_ms: i64) -> Result<Vec<(String, i64)>, CacheError> {
        Ok(self
            .state
            .lock()
            .revoked
            .iter()
            .filter(|(_, until)| **until > now_ms)
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }

    async fn rate(&self, buckets: &[Bucket], now_us: i64) -> Result<RateDecision, CacheError> {
        let mut rates = self.rates.lock();
        if rates.len() > SWEEP_AT {
            rates.retain(|_, tat| *tat > now_us);
        }
        let mut next = Vec::with_capacity(buckets.len());
        let mut wait = 0;
        for b in buckets {
            match gcra(rates.get(&b.key).copied(), now_us, b) {
                Ok(t) => next.push(t),
                Err(w) => wait = wait.max(w),
            }
        }
        if wait > 0 {
            return Ok(RateDecision {
                allowed: false,
                retry_after_us: wait,
            });
        }
        for (b, t) in buckets.iter().zip(next) {
            rates.insert(b.key.clone(), t);
        }
        Ok(RateDecision {
            allowed: true,
            retry_after_us: 0,
        })
    }

    async fn charge(&self, charges: &[Charge], now_us: i64) -> Result<Vec<i64>, CacheError> {
        let mut rates = self.rates.lock();
        Ok(charges
            .iter()
            .map(|c| {
                let tat = charged(rates.get(&c.bucket.key).copied(), now_us, c);
                if c.n > 0 {
                    rates.insert(c.bucket.key.clone(), tat);
                }
                tat
            })
            .collect())
    }
}
