//! Runs the statements of `sql.rs` on either engine. Parameters travel
//! as [`Arg`]s and rows come back as any [`Record`], so the store is written
//! once; the engines differ only in how a write transaction begins and how a
//! commit is announced to other replicas ([`Tx::begin`], [`Tx::notify`]).

use devcycle::db::Database;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments, Encode, FromRow, Postgres, SqlSafeStr, Sqlite, Transaction, Type};

use crate::error::Result;

/// PostgreSQL channel announcing new revisions to other replicas.
pub const CHANNEL: &str = "devcycle_registry";
/// Advisory lock key serializing registry writes.
const WRITE_LOCK: i64 = 0x6465_7663_7265_6701;

/// One statement parameter, in placeholder order.
#[derive(Debug, Clone)]
pub enum Arg {
    Int(i64),
    Text(String),
    OptText(Option<String>),
}

pub type Args = Vec<Arg>;

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(v.to_owned())
    }
}

impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(v.clone())
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}

impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::OptText(v.map(str::to_owned))
    }
}

/// Encodes `args` for one engine.
fn encode<A>(args: Args) -> Result<A>
where
    A: Arguments,
    i64: for<'q> Encode<'q, A::Database> + Type<A::Database>,
    String: for<'q> Encode<'q, A::Database> + Type<A::Database>,
    Option<String>: for<'q> Encode<'q, A::Database> + Type<A::Database>,
{
    let mut out = A::default();
    for a in args {
        match a {
            Arg::Int(v) => out.add(v),
            Arg::Text(v) => out.add(v),
            Arg::OptText(v) => out.add(v),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(out)
}

/// A row type both engines decode.
pub trait Record:
    for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin
{
}

impl<T> Record for T where
    T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin
{
}

/// A write transaction holding the registry's write lock.
pub enum Tx {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

impl Tx {
    /// Backend-specific: PostgreSQL serializes writers with an advisory
    /// transaction lock, SQLite with `BEGIN IMMEDIATE`.
    pub async fn begin(db: &Database) -> Result<Tx> {
        Ok(match db {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                Tx::Postgres(tx)
            }
            Database::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    /// Backend-specific: announces `revision` to other replicas on commit.
    /// One process owns a SQLite database, so its local watchers are all
    /// there is.
    pub async fn notify(&mut self, revision: i64) -> Result<()> {
        if let Tx::Postgres(tx) = self {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(revision.to_string())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    pub async fn commit(self) -> Result<()> {
        match self {
            Tx::Postgres(tx) => tx.commit().await?,
            Tx::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// Where a statement runs: the pool (one-statement reads) or a transaction.
pub enum On<'a> {
    Pool(&'a Database),
    Tx(&'a mut Tx),
}

impl On<'_> {
    pub async fn all<R: Record>(self, sql: impl SqlSafeStr, args: Args) -> Result<Vec<R>> {
        self.fetch_all(sql, args, true).await
    }

    /// [`On::all`] for statements with optional filters (`$1 = '' OR col =
    /// $1`): PostgreSQL plans them on each execution, because a cached
    /// generic plan cannot use the filtered column's index.
    pub async fn list<R: Record>(self, sql: impl SqlSafeStr, args: Args) -> Result<Vec<R>> {
        self.fetch_all(sql, args, false).await
    }

    async fn fetch_all<R: Record>(
        self,
        sql: impl SqlSafeStr,
        args: Args,
        cached: bool,
    ) -> Result<Vec<R>> {
        Ok(match self {
            On::Pool(Database::Postgres(p)) => {
                pg_as(sql, args)?.persistent(cached).fetch_all(p).await?
            }
            On::Pool(Database::Sqlite(p)) => lite_as(sql, args)?.fetch_all(p).await?,
            On::Tx(Tx::Postgres(tx)) => {
                pg_as(sql, args)?
                    .persistent(cached)
                    .fetch_all(&mut **tx)
                    .await?
            }
            On::Tx(Tx::Sqlite(tx)) => lite_as(sql, args)?.fetch_all(&mut **tx).await?,
        })
    }

    pub async fn optional<R: Record>(self, sql: impl SqlSafeStr, args: Args) -> Result<Option<R>> {
        Ok(match self {
            On::Pool(Database::Postgres(p)) => pg_as(sql, args)?.fetch_optional(p).await?,
            On::Pool(Database::Sqlite(p)) => lite_as(sql, args)?.fetch_optional(p).await?,
            On::Tx(Tx::Postgres(tx)) => pg_as(sql, args)?.fetch_optional(&mut **tx).await?,
            On::Tx(Tx::Sqlite(tx)) => lite_as(sql, args)?.fetch_optional(&mut **tx).await?,
        })
    }

    /// The one row a statement always returns.
    pub async fn one<R: Record>(self, sql: impl SqlSafeStr, args: Args) -> Result<R> {
        Ok(self
            .optional(sql, args)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?)
    }

    /// The first column of the one row a statement always returns.
    pub async fn scalar<T>(self, sql: impl SqlSafeStr, args: Args) -> Result<T>
    where
        (T,): Record,
    {
        Ok(self.one::<(T,)>(sql, args).await?.0)
    }

    /// Runs a statement; returns how many rows it changed.
    pub async fn execute(self, sql: impl SqlSafeStr, args: Args) -> Result<u64> {
        Ok(match self {
            On::Pool(Database::Postgres(p)) => pg(sql, args)?.execute(p).await?.rows_affected(),
            On::Pool(Database::Sqlite(p)) => lite(sql, args)?.execute(p).await?.rows_affected(),
            On::Tx(Tx::Postgres(tx)) => pg(sql, args)?.execute(&mut **tx).await?.rows_affected(),
            On::Tx(Tx::Sqlite(tx)) => lite(sql, args)?.execute(&mut **tx).await?.rows_affected(),
        })
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;
type LiteQuery<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;
type PgQueryAs<'q, R> = sqlx::query::QueryAs<'q, Postgres, R, PgArguments>;
type LiteQueryAs<'q, R> = sqlx::query::QueryAs<'q, Sqlite, R, SqliteArguments>;

fn pg<'q>(sql: impl SqlSafeStr, args: Args) -> Result<PgQuery<'q>> {
    Ok(sqlx::query_with(sql, encode(args)?))
}

fn lite<'q>(sql: impl SqlSafeStr, args: Args) -> Result<LiteQuery<'q>> {
    Ok(sqlx::query_with(sql, encode(args)?))
}

fn pg_as<'q, R: Record>(sql: impl SqlSafeStr, args: Args) -> Result<PgQueryAs<'q, R>> {
    Ok(sqlx::query_as_with(sql, encode(args)?))
}

fn lite_as<'q, R: Record>(sql: impl SqlSafeStr, args: Args) -> Result<LiteQueryAs<'q, R>> {
    Ok(sqlx::query_as_with(sql, encode(args)?))
}
