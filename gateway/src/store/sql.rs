//! Every statement of the gateway's store, one text for both engines
//! (`$n` placeholders work on PostgreSQL and SQLite alike), with the one
//! row mapper and bind helper of each record.

use devcycle::authz::Roles;
use sqlx::{Database, Encode, Type};

use super::{AuditRow, UserRow};

/// The columns of a [`UserRow`], in the order of [`UserColumns`].
macro_rules! user_columns {
    () => {
        "name, password_hash, roles, totp_secret, totp_pending, create_time"
    };
}

/// The columns of an [`AuditRow`], in the order of [`AuditColumns`] and of
/// [`bind_audit`].
macro_rules! audit_columns {
    () => {
        "id, time, actor, method, target, outcome, status_code, client_address"
    };
}

pub const REVOKED_BEFORE: &str = "SELECT revoked_before FROM mesh_revocations WHERE identity = $1";

/// `$1` name, `$2` step: only a later step than the last one used.
pub const USE_TOTP_STEP: &str =
    "UPDATE gw_users SET totp_last_step = $2 WHERE name = $1 AND totp_last_step < $2";

pub const USER_COUNT: &str = "SELECT COUNT(*) FROM gw_users";

pub const INSERT_USER: &str = "INSERT INTO gw_users \
     (name, password_hash, roles, totp_secret, totp_pending, create_time) \
     VALUES ($1, $2, $3, NULL, NULL, $4)";

pub const USER: &str = concat!("SELECT ", user_columns!(), " FROM gw_users WHERE name = $1");

/// `$1` the name to start after, `$2` the limit.
pub const USERS: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM gw_users WHERE name > $1 ORDER BY name LIMIT $2"
);

// Changes of one user: `$1` the name, `$2` the value if there is one.
pub const SET_ROLES: &str = "UPDATE gw_users SET roles = $2 WHERE name = $1";
pub const DELETE_USER: &str = "DELETE FROM gw_users WHERE name = $1";
pub const SET_PASSWORD: &str = "UPDATE gw_users SET password_hash = $2 WHERE name = $1";
pub const SET_TOTP_PENDING: &str = "UPDATE gw_users SET totp_pending = $2 WHERE name = $1";
pub const ENABLE_TOTP: &str = "UPDATE gw_users SET totp_secret = totp_pending, totp_pending = NULL \
     WHERE name = $1 AND totp_pending IS NOT NULL";
pub const DISABLE_TOTP: &str =
    "UPDATE gw_users SET totp_secret = NULL, totp_pending = NULL WHERE name = $1";

pub const INSERT_JOIN_TOKEN: &str = "INSERT INTO gw_join_tokens \
     (token_hash, worker_id, expire_time, created_by) VALUES ($1, $2, $3, $4)";

pub const TAKE_JOIN_TOKEN: &str =
    "DELETE FROM gw_join_tokens WHERE token_hash = $1 RETURNING worker_id, expire_time";

pub const INSERT_AUDIT: &str = concat!(
    "INSERT INTO gw_audit (",
    audit_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
);

/// Newest first; `$1` actor and `$2` method match all when empty, `$3` the
/// earliest time, `$4` the page cursor (ids below it), `$5` the limit.
pub const AUDIT: &str = concat!(
    "SELECT ",
    audit_columns!(),
    " FROM gw_audit WHERE ($1 = '' OR actor = $1) AND ($2 = '' OR method = $2) \
     AND time >= $3 AND id < $4 ORDER BY id DESC LIMIT $5"
);

pub type UserColumns = (String, String, String, Option<String>, Option<String>, i64);

pub fn user_of(r: UserColumns) -> UserRow {
    UserRow {
        name: r.0,
        password_hash: r.1,
        roles: Roles::parse_list(&r.2),
        totp_secret: r.3,
        totp_pending: r.4,
        create_ms: r.5,
    }
}

pub type AuditColumns = (String, i64, String, String, String, i32, String, String);

pub fn audit_of(r: AuditColumns) -> AuditRow {
    AuditRow {
        id: r.0,
        time_ms: r.1,
        actor: r.2,
        method: r.3,
        target: r.4,
        outcome: r.5,
        status_code: r.6,
        client_address: r.7,
    }
}

type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as Database>::Arguments>;

/// Binds `$1`..`$4` of [`INSERT_USER`].
pub fn bind_user<'q, DB>(q: Query<'q, DB>, u: &UserRow) -> Query<'q, DB>
where
    DB: Database,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> String: Encode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Type<DB>,
{
    q.bind(u.name.as_str())
        .bind(u.password_hash.as_str())
        .bind(u.roles.to_list())
        .bind(u.create_ms)
}

/// Binds `$1`..`$8` of [`INSERT_AUDIT`].
pub fn bind_audit<'q, DB>(q: Query<'q, DB>, r: &AuditRow) -> Query<'q, DB>
where
    DB: Database,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Type<DB>,
    for<'a> i32: Encode<'a, DB> + Type<DB>,
{
    q.bind(r.id.as_str())
        .bind(r.time_ms)
        .bind(r.actor.as_str())
        .bind(r.method.as_str())
        .bind(r.target.as_str())
        .bind(r.outcome)
        .bind(r.status_code.as_str())
        .bind(r.client_address.as_str())
}
