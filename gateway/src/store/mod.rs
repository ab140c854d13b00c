//! The gateway's durable state: users, worker join tokens, the audit log.
//! The statements are in [`sql`], one text for both engines; [`on_db!`]
//! expands each call for the pool at hand.

mod sql;

use devcycle::authz::Roles;
use devcycle::db::{Database, Failure, classify};

use self::sql::{AuditColumns, UserColumns, audit_of, bind_audit, bind_user, user_of};

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
        Ok(on_db!(&self.db, |p| sqlx::query_scalar::<_, i64>(
            sql::REVOKED_BEFORE
        )
        .bind(identity)
        .fetch_optional(p)
        .await?))
    }

    /// Records that `name` used the TOTP code of `step`; false if a code of
    /// that step or a later one was used already (a replay). Atomic, so two
    /// replicas cannot both accept one code.
    pub async fn use_totp_step(&self, name: &str, step: i64) -> Result<bool> {
        let done = on_db!(&self.db, |p| sqlx::query(sql::USE_TOTP_STEP)
            .bind(name)
            .bind(step)
            .execute(p)
            .await?
            .rows_affected());
        Ok(done == 1)
    }

    pub async fn user_count(&self) -> Result<i64> {
        Ok(on_db!(&self.db, |p| sqlx::query_scalar::<_, i64>(
            sql::USER_COUNT
        )
        .fetch_one(p)
        .await?))
    }

    pub async fn create_user(&self, u: &UserRow) -> Result<()> {
        on_db!(&self.db, |p| bind_user(sqlx::query(sql::INSERT_USER), u)
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    pub async fn user(&self, name: &str) -> Result<Option<UserRow>> {
        let row: Option<UserColumns> = on_db!(&self.db, |p| sqlx::query_as(sql::USER)
            .bind(name)
            .fetch_optional(p)
            .await?);
        Ok(row.map(user_of))
    }

    /// Users by name after `after`, at most `limit`.
    pub async fn users(&self, after: &str, limit: usize) -> Result<Vec<UserRow>> {
        let rows: Vec<UserColumns> = on_db!(&self.db, |p| sqlx::query_as(sql::USERS)
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
        self.change(sql::SET_ROLES, name, Some(&joined)).await
    }

    pub async fn delete_user(&self, name: &str) -> Result<bool> {
        self.change(sql::DELETE_USER, name, None).await
    }

    pub async fn set_password(&self, name: &str, hash: &str) -> Result<bool> {
        self.change(sql::SET_PASSWORD, name, Some(hash)).await
    }

    pub async fn set_totp_pending(&self, name: &str, secret: &str) -> Result<bool> {
        self.change(sql::SET_TOTP_PENDING, name, Some(secret)).await
    }

    /// Makes the pending secret the enrolled one.
    pub async fn enable_totp(&self, name: &str) -> Result<bool> {
        self.change(sql::ENABLE_TOTP, name, None).await
    }

    pub async fn disable_totp(&self, name: &str) -> Result<bool> {
        self.change(sql::DISABLE_TOTP, name, None).await
    }

    pub async fn create_join_token(
        &self,
        hash: &str,
        worker_id: &str,
        expire_ms: i64,
        created_by: &str,
    ) -> Result<()> {
        on_db!(&self.db, |p| sqlx::query(sql::INSERT_JOIN_TOKEN)
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
        let row: Option<(String, i64)> = on_db!(&self.db, |p| sqlx::query_as(sql::TAKE_JOIN_TOKEN)
            .bind(hash)
            .fetch_optional(p)
            .await?);
        Ok(row.filter(|(_, exp)| *exp > now_ms).map(|(w, _)| w))
    }

    pub async fn insert_audit(&self, rows: &[AuditRow]) -> Result<()> {
        on_db!(&self.db, |p| {
            let mut tx = p.begin().await?;
            for r in rows {
                bind_audit(sqlx::query(sql::INSERT_AUDIT), r)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Audit events, newest first.
    pub async fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRow>> {
        let rows: Vec<AuditColumns> = on_db!(&self.db, |p| sqlx::query_as(sql::AUDIT)
            // Optional filters: planned per execution, so the actor's index serves.
            .persistent(false)
            .bind(&f.actor)
            .bind(&f.method)
            .bind(f.after_ms.unwrap_or(i64::MIN))
            .bind(f.before_id.as_deref().unwrap_or("~"))
            .bind(f.limit as i64)
            .fetch_all(p)
            .await?);
        Ok(rows.into_iter().map(audit_of).collect())
    }
}
