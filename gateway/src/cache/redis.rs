//! The cache in Redis, shared by every gateway replica. Multi-step updates
//! are Lua scripts, so each is atomic. While Redis is unreachable every call
//! fails at once (no queueing behind a dead connection); the client keeps
//! reconnecting in the background and recovers without a restart.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::sorted_sets::Ordering;

use super::{Bucket, Cache, CacheError, Charge, RateDecision, Rotation, SessionRecord};

pub struct RedisCache {
    client: Client,
    /// Prepended to every key, so several meshes (or tests) share a server.
    prefix: String,
    /// Sent by digest (EVALSHA), loaded again if the server lost them.
    rotate: Script,
    gcra: Script,
    charge: Script,
}

const ROTATE: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'refresh')
if not cur then return 0 end
local now = tonumber(ARGV[3])
if cur == ARGV[1] then
  local ttl = math.min(tonumber(ARGV[4]), tonumber(redis.call('HGET', KEYS[1], 'expire')) - now)
  if ttl <= 0 then redis.call('DEL', KEYS[1], KEYS[2]) return 0 end
  redis.call('HSET', KEYS[1], 'refresh', ARGV[2], 'last', ARGV[3], 'idle', ARGV[4])
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  return 1
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 2
end
return 3
"#;

/// GCRA over every key: ARGV = now, then (interval, burst) per key. Returns
/// 0 when allowed (and counted in every bucket), else the wait in µs.
const GCRA: &str = r#"
local now = tonumber(ARGV[1])
local next = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local t = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local n = tat + t
  local allow_at = n - t * burst
  if now < allow_at then
    if allow_at - now > wait then wait = allow_at - now end
  else
    next[i] = n
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.0f', next[i]), 'PX', math.floor((next[i] - now) / 1000) + 1)
end
return 0
"#;

/// Counts admitted requests (`Charge`, see `cache::charged`): ARGV = now,
/// then (interval, n, since) per key. Returns each key's arrival time after.
const CHARGE: &str = r#"
local now = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local t = tonumber(ARGV[3 * i - 1])
  local n = tonumber(ARGV[3 * i])
  local since = tonumber(ARGV[3 * i + 1])
  local tat = tonumber(redis.call('GET', key)) or since
  tat = math.max(tat, math.min(since, now))
  tat = math.max(tat + t * n, now)
  if n > 0 then
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1)
  end
  out[i] = tat
end
return out
"#;

fn err(e: fred::error::Error) -> CacheError {
    CacheError(e.to_string())
}

impl RedisCache {
    /// A client for `url` that connects in the background and keeps
    /// reconnecting; calls fail fast while it is disconnected.
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let mut config = Config::from_url(url)?;
        config.fail_fast = false;
        let client = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_constant(0, 250))
            .with_performance_config(|p| p.default_command_timeout = Duration::from_millis(500))
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(1);
                c.internal_command_timeout = Duration::from_secs(1);
                c.max_command_attempts = 1;
            })
            .build()?;
        // The connection task runs on its own; dropping its handle detaches it.
        drop(client.connect());
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
            rotate: Script::from_lua(ROTATE),
            gcra: Script::from_lua(GCRA),
            charge: Script::from_lua(CHARGE),
        })
    }

    /// Waits up to `timeout` for the first connection.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.client.wait_for_connect())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn up(&self) -> Result<(), CacheError> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(CacheError("not connected to Redis".into()))
        }
    }

    fn session_key(&self, id: &str) -> String {
        format!("{}s:{id}", self.prefix)
    }
    fn used_key(&self, id: &str) -> String {
        format!("{}s:{id}:used", self.prefix)
    }
    fn user_key(&self, user: &str) -> String {
        format!("{}u:{user}", self.prefix)
    }
    fn revoked_key(&self) -> String {
        format!("{}revoked", self.prefix)
    }
    fn rate_key(&self, b: &Bucket) -> String {
        format!("{}r:{}", self.prefix, b.key)
    }

    async fn load(&self, id: &str) -> Result<Option<SessionRecord>, CacheError> {
        let h: HashMap<String, String> = self
            .client
            .hgetall(self.session_key(id))
            .await
            .map_err(err)?;
        if h.is_empty() {
            return Ok(None);
        }
        let s = |k: &str| h.get(k).cloned().unwrap_or_default();
        let n = |k: &str| h.get(k).and_then(|v| v.parse().ok()).unwrap_or(0i64);
        Ok(Some(SessionRecord {
            id: id.to_owned(),
            user: s("user"),
            device: s("device"),
            client_address: s("addr"),
            create_ms: n("created"),
            last_used_ms: n("last"),
            expire_ms: n("expire"),
            refresh: s("refresh"),
        }))
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn put_session(&self, s: &SessionRecord, idle_ms: i64) -> Result<(), CacheError> {
        self.up()?;
        let key = self.session_key(&s.id);
        let fields: Vec<(&str, String)> = vec![
            ("user", s.user.clone()),
            ("device", s.device.clone()),
            ("addr", s.client_address.clone()),
            ("created", s.create_ms.to_string()),
            ("last", s.last_used_ms.to_string()),
            ("expire", s.expire_ms.to_string()),
            ("idle", idle_ms.to_string()),
            ("refresh", s.refresh.clone()),
        ];
        let ttl = idle_ms.min(s.expire_ms - s.last_used_ms).max(1);
        let _: () = self.client.hset(&key, fields).await.map_err(err)?;
        let _: i64 = self.client.pexpire(&key, ttl, None).await.map_err(err)?;
        let user = self.user_key(&s.user);
        let _: i64 = self.client.sadd(&user, s.id.as_str()).await.map_err(err)?;
        // Every session has the same absolute lifetime, so the newest one
        // ends last: the index lives as long as it.
        let _: i64 = self
            .client
            .pexpire(&user, (s.expire_ms - s.last_used_ms).max(1), None)
            .await
            .map_err(err)?;
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
        self.up()?;
        let keys = vec![self.session_key(id), self.used_key(id)];
        let args = vec![
            presented.to_owned(),
            next.to_owned(),
            now_ms.to_string(),
            idle_ms.to_string(),
        ];
        let r: i64 = self
            .rotate
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(err)?;
        match r {
            1 => match self.load(id).await? {
                Some(s) => Ok(Rotation::Rotated(s)),
                None => Ok(Rotation::Unknown),
            },
            2 => Ok(Rotation::Reused),
            _ => Ok(Rotation::Unknown),
        }
    }

    async fn session(&self, id: &str) -> Result<Option<SessionRecord>, CacheError> {
        self.up()?;
        self.load(id).await
    }

    async fn sessions_of(&self, user: &str) -> Result<Vec<SessionRecord>, CacheError> {
        self.up()?;
        let ids: Vec<String> = self
            .client
            .smembers(self.user_key(user))
            .await
            .map_err(err)?;
        let mut out = Vec::new();
        for id in ids {
            match self.load(&id).await? {
                Some(s) => out.push(s),
                None => {
                    let _: i64 = self
                        .client
                        .srem(self.user_key(user), id.as_str())
                        .await
                        .map_err(err)?;
                }
            }
        }
        out.sort_by(|a, b| a.create_ms.cmp(&b.create_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn end_session(&self, id: &str) -> Result<Option<SessionRecord>, CacheError> {
        self.up()?;
        let s = self.load(id).await?;
        let _: i64 = self
            .client
            .del(vec![self.session_key(id), self.used_key(id)])
            .await
            .map_err(err)?;
        if let Some(s) = &s {
            let _: i64 = self
                .client
                .srem(self.user_key(&s.user), id)
                .await
                .map_err(err)?;
        }
        Ok(s)
    }

    async fn revoke(&self, entry: &str, until_ms: i64) -> Result<(), CacheError> {
        self.up()?;
        let key = self.revoked_key();
        let _: i64 = self
            .client
            .zadd(
                &key,
                None,
                Some(Ordering::GreaterThan),
                false,
                false,
                (until_ms as f64, entry),
            )
            .await
            .map_err(err)?;
        let _: i64 = self
            .client
            .zremrangebyscore(&key, "-inf", devcycle::time::now_ms() as f64)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn revocations(&self, now_ms: i64) -> Result<Vec<(String, i64)>, CacheError> {
        self.up()?;
        let v: Vec<(String, f64)> = self
            .client
            .zrangebyscore(self.revoked_key(), format!("({now_ms}"), "+inf", true, None)
            .await
            .map_err(err)?;
        Ok(v.into_iter().map(|(k, s)| (k, s as i64)).collect())
    }

    fn shared(&self) -> bool {
        true
    }

    async fn charge(&self, charges: &[Charge], now_us: i64) -> Result<Vec<i64>, CacheError> {
        self.up()?;
        let keys: Vec<String> = charges.iter().map(|c| self.rate_key(&c.bucket)).collect();
        let mut args = vec![now_us.to_string()];
        for c in charges {
            args.push(c.bucket.interval_us.to_string());
            args.push(c.n.to_string());
            args.push(c.since_us.to_string());
        }
        self.charge
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(err)
    }

    async fn rate(&self, buckets: &[Bucket], now_us: i64) -> Result<RateDecision, CacheError> {
        self.up()?;
        let keys: Vec<String> = buckets.iter().map(|b| self.rate_key(b)).collect();
        let mut args = vec![now_us.to_string()];
        for b in buckets {
            args.push(b.interval_us.to_string());
            args.push(b.burst.max(1).to_string());
        }
        let wait: i64 = self
            .gcra
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(err)?;
        Ok(RateDecision {
            allowed: wait <= 0,
            retry_after_us: wait.max(0),
        })
    }
}
