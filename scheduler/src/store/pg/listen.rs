//! Following other schedulers on a shared PostgreSQL database: their commits
//! arrive as notifications on [`CHANNEL`], tagged with the sender.

use sqlx::postgres::PgPool;

use super::CHANNEL;

/// Follows other schedulers' commits: new claimable tasks wake the engine,
/// new events wake `WatchRun` streams and the relay. Ends with `shutdown`.
pub fn listen(
    pool: PgPool,
    instance: String,
    hub: std::sync::Arc<crate::hub::Hub>,
    engine: crate::engine::Engine,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let listener = async {
                let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = match listener.await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler listener cannot listen; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            };
            // Anything committed while we were not listening.
            let _ = engine.send(crate::engine::Cmd::RemoteReady);
            hub.remote_change();
            loop {
                let n = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = listener.try_recv() => n,
                };
                match n {
                    Ok(Some(n)) => {
                        let Some((from, what)) = n.payload().split_once(':') else {
                            continue;
                        };
                        if from == instance {
                            continue;
                        }
                        if let Some(body) = what.strip_prefix("notice:") {
                            remote_notices(&engine, body);
                            continue;
                        }
                        if what == "ready" {
                            let _ = engine.send(crate::engine::Cmd::RemoteReady);
                        }
                        hub.remote_change();
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    });
}

/// Hands another scheduler's notices to the engine.
fn remote_notices(engine: &crate::engine::Engine, body: &str) {
    use crate::engine::Cmd;
    let Some(n) = crate::store::notice::parse(body) else {
        tracing::warn!("unreadable scheduler notice ignored");
        return;
    };
    let cancels = n.cancels();
    if !cancels.is_empty() {
        let _ = engine.send(Cmd::RemoteCancel(cancels));
    }
    for (worker_id, session) in n.w {
        let _ = engine.send(Cmd::RemoteConnect { worker_id, session });
    }
}
