//! Certificates revoked before they expire. The gateway writes a row per
//! identity to `mesh_revocations` (a user demoted, deleted, or logged out:
//! every certificate of `user/<name>` issued up to then is refused), and
//! every service holding the mesh database polls the table and refuses such
//! peers in its authorization layer. Rows go once every certificate they
//! cover has expired.
//!
//! Issue times have the certificate's one-second granularity: a certificate
//! issued in the same second as a revocation is refused too (fail closed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::db::Database;
use crate::identity::SpiffeId;

/// How often services re-read the deny list.
pub const POLL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Denylist {
    /// Identity path (`user/dana`) → certificates issued up to this time
    /// (ms since the epoch) are revoked.
    before: ArcSwap<HashMap<String, i64>>,
}

impl Denylist {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether a certificate of `peer` issued at `issued_ms` is revoked.
    pub fn revoked(&self, peer: &SpiffeId, issued_ms: i64) -> bool {
        let map = self.before.load();
        !map.is_empty()
            && map
                .get(&peer.path())
                .is_some_and(|before| issued_ms <= *before)
    }

    pub fn replace(&self, rows: HashMap<String, i64>) {
        self.before.store(Arc::new(rows));
    }

    /// Reads the table once.
    pub async fn load(&self, db: &Database) -> Result<(), sqlx::Error> {
        let now = crate::time::now_ms();
        let rows: Vec<(String, i64)> =
            match db {
                Database::Postgres(p) => sqlx::query_as(
                    "SELECT identity, revoked_before FROM mesh_revocations WHERE expire_time > $1",
                )
                .bind(now)
                .fetch_all(p)
                .await?,
                Database::Sqlite(p) => sqlx::query_as(
                    "SELECT identity, revoked_before FROM mesh_revocations WHERE expire_time > ?1",
                )
                .bind(now)
                .fetch_all(p)
                .await?,
            };
        self.replace(rows.into_iter().collect());
        Ok(())
    }

    /// Loads the list now (so a service never serves before knowing it),
    /// then every [`POLL`] until `stop`. While the database is unreachable
    /// the last list stays in force.
    pub async fn follow(db: Database, stop: CancellationToken) -> Result<Arc<Self>, sqlx::Error> {
        let list = Self::new();
        list.load(&db).await?;
        let l = Arc::clone(&list);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(POLL) => {}
                }
                if let Err(e) = l.load(&db).await {
                    tracing::warn!(error = %e, "cannot read the certificate deny list; keeping the last one");
                }
            }
        });
        Ok(list)
    }
}

/// Revokes every certificate of `identity` (`user/dana`) issued up to now;
/// the row lasts `longest` (the longest such a certificate can live).
pub async fn revoke(db: &Database, identity: &str, longest: Duration) -> Result<(), sqlx::Error> {
    let now = crate::time::now_ms();
    let until = now + longest.as_millis() as i64;
    let sql = "INSERT INTO mesh_revocations (identity, revoked_before, expire_time) VALUES ($1, $2, $3) \
               ON CONFLICT (identity) DO UPDATE SET revoked_before = excluded.revoked_before, \
               expire_time = excluded.expire_time";
    match db {
        Database::Postgres(p) => {
            sqlx::query(sql)
                .bind(identity)
                .bind(now)
                .bind(until)
                .execute(p)
                .await?;
        }
        Database::Sqlite(p) => {
            sqlx::query(sqlx::AssertSqlSafe(sql.replace('$', "?")))
                .bind(identity)
                .bind(now)
                .bind(until)
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Kind;

    #[test]
    fn revokes_what_was_issued_before() {
        let list = Denylist::default();
        let dana = SpiffeId::new("t.local", Kind::User, "dana").unwrap();
        let eve = SpiffeId::new("t.local", Kind::User, "eve").unwrap();
        assert!(!list.revoked(&dana, 100));
        list.replace([("user/dana".to_owned(), 1000)].into());
        assert!(list.revoked(&dana, 999));
        assert!(list.revoked(&dana, 1000), "the same instant is refused");
        assert!(!list.revoked(&dana, 1001), "a later certificate is fine");
        assert!(!list.revoked(&eve, 10));
    }
}
