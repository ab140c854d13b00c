//! Backend-specific: how a PostgreSQL replica learns of other replicas'
//! commits. SQLite has one process per database and needs none of this.

use devcycle::db::Database;
use sqlx::{Pool, Postgres};
use tokio::sync::watch;

use super::exec::{CHANNEL, On};
use super::sql::HEAD_REVISION;
use super::sql_store::advance;

/// Follows other replicas' commits through LISTEN/NOTIFY.
/// After a lost connection it re-reads the head so that nothing committed
/// meanwhile is missed; watchers also re-poll on their own as a safety net.
/// Ends when the pool is closed.
pub(super) fn spawn_listener(pool: Pool<Postgres>, tx: watch::Sender<i64>) {
    tokio::spawn(async move {
        let db = Database::Postgres(pool.clone());
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    if pool.is_closed() {
                        return;
                    }
                    tracing::warn!(error = %e, "registry listener cannot connect; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %e, "registry LISTEN failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            if let Ok(h) = On::Pool(&db).scalar(HEAD_REVISION, vec![]).await {
                advance(&tx, h);
            }
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        if let Ok(rev) = n.payload().parse::<i64>() {
                            advance(&tx, rev);
                        }
                    }
                    // The connection dropped: reconnect and re-read the head.
                    Ok(None) => break,
                    Err(e) => {
                        if pool.is_closed() {
                            return;
                        }
                        tracing::warn!(error = %e, "registry listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    });
}
