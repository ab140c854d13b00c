//! Database connections and migrations. One migration set per engine
//! (`migrations/postgres`, `migrations/sqlite`), embedded in the binary and
//! applied at start-up; on PostgreSQL sqlx holds an advisory lock while it
//! migrates, so replicas starting together apply each migration once.

pub mod lock;
mod nodelay;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

static PG_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// A connected, migrated database of either engine.
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL must start with sqlite:, postgres:// or postgresql://")]
    Scheme,
    #[error("connecting to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Locked(#[from] lock::LockError),
}

impl Database {
    /// Connects to `url` and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, DbError> {
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Database::Postgres(connect_postgres(url).await?)
        } else if url.starts_with("sqlite:") {
            Database::Sqlite(connect_sqlite(url).await?)
        } else {
            return Err(DbError::Scheme);
        };
        match &db {
            Database::Postgres(pool) => PG_MIGRATOR.run(pool).await?,
            Database::Sqlite(pool) => SQLITE_MIGRATOR.run(pool).await?,
        }
        Ok(db)
    }

    pub fn engine(&self) -> &'static str {
        match self {
            Database::Postgres(_) => "postgres",
            Database::Sqlite(_) => "sqlite",
        }
    }

    pub async fn close(&self) {
        match self {
            Database::Postgres(p) => p.close().await,
            Database::Sqlite(p) => p.close().await,
        }
    }
}

/// Every devcycle query reaches rows by key, through an index. The queue
/// tables go from empty to large in seconds, long before autovacuum first
/// analyzes them, and without statistics PostgreSQL estimates `= ANY` over a
/// batch of keys as most of the table and scans it (20 ms per batch at 90k
/// tasks). So sequential scans are the planner's last resort
/// (`enable_seqscan = off`, which still allows them where no index serves).
/// Plans are cached (the default `plan_cache_mode`): with sequential scans
/// ruled out the generic plans use the same indexes, and planning the
/// batch statements anew on each execution cost 0.2–0.7 ms a statement.
/// The exceptions are list statements with optional filters (`$1 = '' OR
/// col = $1`): a generic plan cannot use the filtered column's index, so
/// they run unprepared (`persistent(false)`) and are planned each time.
/// JIT is off: no devcycle query is large enough to gain from it, and a
/// plan priced with `enable_seqscan = off` looks costly enough to compile.
///
/// Each new connection also turns Nagle's algorithm off ([`nodelay`]).
async fn connect_postgres(url: &str) -> Result<PgPool, DbError> {
    let opts = PgConnectOptions::from_str(url)
        .map_err(DbError::Connect)?
        .options([("enable_seqscan", "off"), ("jit", "off")]);
    let server_port = opts.get_port();
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| Box::pin(nodelay::set(conn, server_port)))
        .connect_with(opts)
        .await
        .map_err(DbError::Connect)
}

/// WAL with `synchronous=NORMAL`: a committed transaction survives a process
/// crash; the last commits may be lost on power loss (docs/design.md).
async fn connect_sqlite(url: &str) -> Result<SqlitePool, DbError> {
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(DbError::Connect)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    if let Some(dir) = opts.get_filename().parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| DbError::Connect(sqlx::Error::Io(e)))?;
    }
    if !url.contains(":memory:") && !url.contains("mode=memory") {
        lock::acquire(opts.get_filename())?;
    }
    SqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(DbError::Connect)
}

/// What a failed statement means to a caller, decided once for every store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    UniqueViolation,
    /// Text the engine cannot store: PostgreSQL refuses NUL bytes in `text`.
    /// The caller's input, so INVALID_ARGUMENT.
    InvalidText,
    /// Busy, pool exhausted, connection lost: worth retrying later.
    Unavailable,
    Other,
}

pub fn classify(e: &sqlx::Error) -> Failure {
    match e {
        sqlx::Error::Database(db) => match db.kind() {
            sqlx::error::ErrorKind::UniqueViolation => Failure::UniqueViolation,
            // character_not_in_repertoire, untranslatable_character
            _ if matches!(db.code().as_deref(), Some("22021" | "22P05")) => Failure::InvalidText,
            _ if db.code().as_deref() == Some("5") || db.code().as_deref() == Some("6") => {
                Failure::Unavailable // SQLITE_BUSY, SQLITE_LOCKED
            }
            _ => Failure::Other,
        },
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Failure::Unavailable,
        _ => Failure::Other,
    }
}
