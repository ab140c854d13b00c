//! SQLite connections: opened with the scheduler's settings, owned by
//! threads, and read through cached statements.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::{Connection, Params};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A thread owning one connection, running jobs in order.
pub(crate) struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Worker {
    pub(crate) fn spawn(name: &str, path: &Path) -> Result<Self> {
        Self::spawn_with(name, path, |_| Ok(()))
    }

    /// [`Self::spawn`], with `setup` run on the connection first.
    pub(crate) fn spawn_with(
        name: &str,
        path: &Path,
        setup: impl FnOnce(&Connection) -> Result<()>,
    ) -> Result<Self> {
        let mut conn = open(path)?;
        setup(&conn)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| Error::Unavailable(format!("cannot start the {name} thread: {e}")))?;
        Ok(Self { jobs: tx })
    }

    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }
}

pub(crate) fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "normal")?;
    conn.pragma_update(None, "foreign_keys", "on")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Moves WAL pages into the database every half second, so that the WAL
/// stays small and no commit has to.
pub(crate) fn spawn_checkpointer(path: &Path, stop: Arc<AtomicBool>) -> Result<()> {
    let conn = open(path)?;
    std::thread::Builder::new()
        .name("sched-sqlite-checkpoint".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "sqlite checkpoint failed");
                }
            }
        })
        .map_err(|e| Error::Unavailable(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(())
}

/// The rows of a cached statement, each mapped by `f`.
pub(crate) fn all<T>(
    conn: &Connection,
    sql: &str,
    p: impl Params,
    f: impl Fn(&rusqlite::Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(p)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(f(r)?);
    }
    Ok(out)
}

/// The first row of a cached statement, mapped by `f`.
pub(crate) fn first<T>(
    conn: &Connection,
    sql: &str,
    p: impl Params,
    f: impl Fn(&rusqlite::Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(p)?;
    rows.next()?.map(f).transpose()
}
