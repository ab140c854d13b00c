//! The gateway's durable state: users, worker join tokens, the audit log.
//! One statement text serves both engines (`$n` placeholders); [`on_db!`]
//! expands each call for the pool at hand.

use devcycle::authz::Roles;
use devcycle::db::{Database, Failure, classify};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Exists,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database: {0}")]
    Other(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match classify(&e) {
            Failure::UniqueViolation => StoreError::Exists,
            Failure::Unavailable => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Other(e.to_string()),
        }
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists => tonic::Status::already_exists("already exists"),
            StoreError::Unavailable(m) => crate::errors::unavailable("database", m),
            StoreError::Other(m) => crate::errors::internal("database", m),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub password_hash: String,
    pub roles: Roles,
    pub totp_secret: Option<String>,
    pub totp_pending: Option<String>,
    pub create_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: String,
    pub time_ms: i64,
    pub actor: String,
    pub method: String,
    pub target: String,
    pub outcome: i32,
    pub status_code: String,
    pub client_address: String,
}

#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub actor: String,
    pub method: String,
    pub after_ms: Option<i64>,
    /// Page cursor: only ids below this one (newest first).
    pub before_id: Option<String>,
    pub limit: usize,
}

macro_rules! on_db {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Database::Postgres($pool) => $body,
            Database::Sqlite($pool) => $body,
        }
    };
}

type UserTuple = (String, String, String, Option<String>, Option<String>, i64);

fn user_of(r: UserTuple) -> UserRow {
    UserRow {
        name: r.0,
        password_hash: r.1,
        roles: Roles::parse_list(&r.2),
        totp_secret: r.3,
        totp_pending: r.4,
        create_ms: r.5,
    }
}

#[derive(Clone)]
pub struct Store {
    db: Database,
}

impl Store {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Refuses, on every service, the certificates of `identity` issued up
    /// to now (see `devcycle::denylist`).
    pub async fn revoke_certificates(
        &self,
        identity: &str,
        longest: std::time::Duration,
    ) -> Result<()> {
        Ok(devcycle::denylist::revoke(&self.db, identity, longest).await?)
    }

    /// When the certificates of `identity` were last revoked, if they were.
    pub async fn revoked_before(&self, identity: &str) -> Result<Option<i64>> {
        let sql = "SELECT revoked_before FROM mesh_revocations WHERE identity = $1";
        Ok(on_db!(&self.db, |p| sqlx::query_scalar::<_, i64>(sql)
            .bind(identity)
            .fetch_optional(p)
            .await?))
    }

    /// Records that `name` used the TOTP code of `step`; false if a code of
    /// that step or a later one was used already (a replay). Atomic, so two
    /// replicas cannot both accept one code.
    pub async fn use_totp_step(&self, name: &str, step: i64) -> Result<bool> {
        let sql = "UPDATE gw_users SET totp_last_step = $2 WHERE name = $1 AND totp_last_step < $2";
        let done = on_db!(&self.db, |p| sqlx::query(sql)
            .bind(name)
            .bind(step)
            .execute(p)
            .await?
            .rows_affected());
        Ok(done == 1)
    }

    pub async fn user_count(&self) -> Result<i64> {
        let sql = "SELECT COUNT(*) FROM gw_users";
        Ok(on_db!(&self.db, |p| sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(p)
            .await?))
    }

    pub async fn create_user(&self, u: &UserRow) -> Result<()> {
        let sql = "INSERT INTO gw_users (name, password_hash, roles, totp_secret, totp_pending, create_time) \
                   VALUES ($1, $2, $3, NULL, NULL, $4)";
        on_db!(&self.db, |p| sqlx::query(sql)
            .bind(&u.name)
            .bind(&u.password_hash)
            .bind(u.roles.to_list())
            .bind(u.create_ms)
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    pub async fn user(&self, name: &str) -> Result<Option<UserRow>> {
        let sql = "SELECT name, password_hash, roles, totp_secret, totp_pending, create_time \
                   FROM gw_users WHERE name = $1";
        let row: Option<UserTuple> = on_db!(&self.db, |p| sqlx::query_as(sql)
            .bind(name)
            .fetch_optional(p)
            .await?);
        Ok(row.map(user_of))
    }

    /// Users by name after `after`, at most `limit`.
    pub async fn users(&self, after: &str, limit: usize) -> Result<Vec<UserRow>> {
        let sql = "SELECT name, password_hash, roles, totp_secret, totp_pending, create_time \
                   FROM gw_users WHERE name > $1 ORDER BY name LIMIT $2";
        let rows: Vec<UserTuple> = on_db!(&self.db, |p| sqlx::query_as(sql)
            .bind(after)
            .bind(limit as i64)
            .fetch_all(p)
            .await?);
        Ok(rows.into_iter().map(user_of).collect())
    }

    /// Runs an UPDATE or DELETE of one user; whether the user existed.
    async fn change(&self, sql: &'static str, name: &str, value: Option<&str>) -> Result<bool> {
        let n = on_db!(&self.db, |p| {
            let q = sqlx::query(sql).bind(name);
            let q = match value {
                Some(v) => q.bind(v),
                None => q,
            };
            q.execute(p).await?.rows_affected()
        });
        Ok(n > 0)
    }

    pub async fn set_roles(&self, name: &str, roles: Roles) -> Result<bool> {
        let joined = roles.to_list();
        self.change(
            "UPDATE gw_users SET roles = $2 WHERE name = $1",
            name,
            Some(&joined),
        )
        .await
    }

    pub async fn delete_user(&self, name: &str) -> Result<bool> {
        self.change("DELETE FROM gw_users WHERE name = $1", name, None)
            .await
    }

    pub async fn set_password(&self, name: &str, hash: &str) -> Result<bool> {
        self.change(
            "UPDATE gw_users SET password_hash = $2 WHERE name = $1",
            name,
            Some(hash),
        )
        .await
    }

    pub async fn set_totp_pending(&self, name: &str, secret: &str) -> Result<bool> {
        self.change(
            "UPDATE gw_users SET totp_pending = $2 WHERE name = $1",
            name,
            Some(secret),
        )
        .await
    }

    /// Makes the pending secret the enrolled one.
    pub async fn enable_totp(&self, name: &str) -> Result<bool> {
        self.change(
            "UPDATE gw_users SET totp_secret = totp_pending, totp_pending = NULL \
             WHERE name = $1 AND totp_pending IS NOT NULL",
            name,
            None,
        )
        .await
    }

    pub async fn disable_totp(&self, name: &str) -> Result<bool> {
        self.change(
            "UPDATE gw_users SET totp_secret = NULL, totp_pending = NULL WHERE name = $1",
            name,
            None,
        )
        .await
    }

    pub async fn create_join_token(
        &self,
        hash: &str,
        worker_id: &str,
        expire_ms: i64,
        created_by: &str,
    ) -> Result<()> {
        let sql = "INSERT INTO gw_join_tokens (token_hash, worker_id, expire_time, created_by) \
                   VALUES ($1, $2, $3, $4)";
        on_db!(&self.db, |p| sqlx::query(sql)
            .bind(hash)
            .bind(worker_id)
            .bind(expire_ms)
            .bind(created_by)
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Consumes a join token: its worker id if it existed and had not
    /// expired. A token works once.
    pub async fn take_join_token(&self, hash: &str, now_ms: i64) -> Result<Option<String>> {
        let sql =
            "DELETE FROM gw_join_tokens WHERE token_hash = $1 RETURNING worker_id, expire_time";
        let row: Option<(String, i64)> = on_db!(&self.db, |p| sqlx::query_as(sql)
            .bind(hash)
            .fetch_optional(p)
            .await?);
        Ok(row.filter(|(_, exp)| *exp > now_ms).map(|(w, _)| w))
    }

    pub async fn insert_audit(&self, rows: &[AuditRow]) -> Result<()> {
        let sql = "INSERT INTO gw_audit (id, time, actor, method, target, outcome, status_code, client_address) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        on_db!(&self.db, |p| {
            let mut tx = p.begin().await?;
            for r in rows {
                sqlx::query(sql)
                    .bind(&r.id)
                    .bind(r.time_ms)
                    .bind(&r.actor)
                    .bind(&r.method)
                    .bind(&r.target)
                    .bind(r.outcome)
                    .bind(&r.status_code)
                    .bind(&r.client_address)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Audit events, newest first.
    pub async fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRow>> {
        let sql = "SELECT id, time, actor, method, target, outcome, status_code, client_address \
                   FROM gw_audit WHERE ($1 = '' OR actor = $1) AND ($2 = '' OR method = $2) \
                   AND time >= $3 AND id < $4 ORDER BY id DESC LIMIT $5";
        type R = (String, i64, String, String, String, i32, String, String);
        let rows: Vec<R> = on_db!(&self.db, |p| sqlx::query_as(sql)
            .bind(&f.actor)
            .bind(&f.method)
            .bind(f.after_ms.unwrap_or(i64::MIN))
            .bind(f.before_id.as_deref().unwrap_or("~"))
            .bind(f.limit as i64)
            .fetch_all(p)
            .await?);
        Ok(rows
            .into_iter()
            .map(|r| AuditRow {
                id: r.0,
                time_ms: r.1,
                actor: r.2,
                method: r.3,
                target: r.4,
                outcome: r.5,
                status_code: r.6,
                client_address: r.7,
            })
            .collect())
    }
}
