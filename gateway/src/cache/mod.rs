//! Sessions, revocations and rate limits: shared state of every gateway
//! replica. Redis in a cluster ([`RedisCache`]), memory in `devcycle up`
//! ([`MemoryCache`]); one conformance suite (`tests/cache.rs`) runs against
//! both.

mod memory;
mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use memory::MemoryCache;
pub use redis::RedisCache;

/// One login on one device. Times are milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub user: String,
    pub device: String,
    pub client_address: String,
    pub create_ms: i64,
    pub last_used_ms: i64,
    /// Absolute end, whatever the activity.
    pub expire_ms: i64,
    /// Digest of the one refresh token that may be used next.
    pub refresh: String,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// It was current: `next` replaced it.
    Rotated(SessionRecord),
    /// It had already been rotated away: someone replayed it, so the whole
    /// session has been ended.
    Reused,
    /// No such live session (ended, expired or idle too long).
    Unknown,
}

/// A rate check over several buckets at once: all must allow it, and only
/// then is it counted in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// When denied, how long until it would be allowed.
    pub retry_after_us: i64,
}

/// One GCRA bucket: a request every `interval_us` on average, `burst` at once.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub key: String,
    pub interval_us: i64,
    pub burst: u32,
}

/// Requests a replica has already admitted on its own: `n` of them, the
/// first at `since_us`, to be counted in the shared bucket.
#[derive(Debug, Clone)]
pub struct Charge {
    pub bucket: Bucket,
    pub n: u32,
    pub since_us: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("session store unavailable: {0}")]
pub struct CacheError(pub String);

#[async_trait]
pub trait Cache: Send + Sync + 'static {
    /// Stores a new session that ends after `idle_ms` without use.
    async fn put_session(&self, s: &SessionRecord, idle_ms: i64) -> Result<(), CacheError>;
    /// Swaps the refresh digest `presented` for `next` at `now_ms`.
    async fn rotate(
        &self,
        id: &str,
        presented: &str,
        next: &str,
        now_ms: i64,
        idle_ms: i64,
    ) -> Result<Rotation, CacheError>;
    async fn session(&self, id: &str) -> Result<Option<SessionRecord>, CacheError>;
    async fn sessions_of(&self, user: &str) -> Result<Vec<SessionRecord>, CacheError>;
    /// Ends a session; returns it if it was live.
    async fn end_session(&self, id: &str) -> Result<Option<SessionRecord>, CacheError>;
    /// Records a revocation (`j:<jti>` or `s:<session>`) until `until_ms`.
    async fn revoke(&self, entry: &str, until_ms: i64) -> Result<(), CacheError>;
    /// Every revocation still in force at `now_ms`, with its end.
    async fn revocations(&self, now_ms: i64) -> Result<Vec<(String, i64)>, CacheError>;
    /// GCRA over `buckets` at `now_us`.
    async fn rate(&self, buckets: &[Bucket], now_us: i64) -> Result<RateDecision, CacheError>;
    /// Counts admitted requests in their buckets without refusing any
    /// (`n = 0` only reads) and returns each bucket's theoretical arrival
    /// time afterwards, never before `now_us`.
    async fn charge(&self, charges: &[Charge], now_us: i64) -> Result<Vec<i64>, CacheError>;
    /// Whether other gateway replicas share this cache (then each replica's
    /// local rate limits are reconciled through it).
    fn shared(&self) -> bool {
        false
    }
}

/// The theoretical arrival time after `c`, from the stored one: its requests
/// are spaced from the first, not from when they are counted.
pub fn charged(tat: Option<i64>, now_us: i64, c: &Charge) -> i64 {
    let tat = tat.unwrap_or(c.since_us).max(c.since_us.min(now_us));
    (tat + c.bucket.interval_us * i64::from(c.n)).max(now_us)
}

/// The GCRA step for one bucket: the new theoretical arrival time if allowed,
/// or how long to wait.
pub fn gcra(tat: Option<i64>, now_us: i64, b: &Bucket) -> Result<i64, i64> {
    let tat = tat.unwrap_or(now_us).max(now_us);
    let next = tat + b.interval_us;
    let allow_at = next - b.interval_us * i64::from(b.burst.max(1));
    if now_us < allow_at {
        Err(allow_at - now_us)
    } else {
        Ok(next)
    }
}
