//! The scheduler's one error type, and the one place gRPC codes are chosen.

use devcycle::db::{Failure, classify};
use devcycle::validate::FieldError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A compare-and-set lost to a concurrent writer; the batch is retried.
    #[error("concurrent change: {0}")]
    Conflict(String),
    /// The registry or the database cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the scheduler is shutting down")]
    ShuttingDown,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match classify(&e) {
            Failure::Unavailable => Error::Unavailable(format!("database unavailable: {e}")),
            // No field is known this deep; the reason is what to fix.
            Failure::InvalidText => Error::Invalid(FieldError::new(
                "request",
                "text fields must not contain NUL bytes",
            )),
            _ => Error::Database(e),
        }
    }
}

impl Error {
    /// Worth retrying the whole batch: a lost race or a deadlock victim.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Conflict(_) => true,
            Error::Database(sqlx::Error::Database(db)) => {
                // serialization_failure, deadlock_detected
                matches!(db.code().as_deref(), Some("40001") | Some("40P01"))
            }
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                )
            }
            _ => false,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(f) => Status::invalid_argument(f.to_string()),
            Error::NotFound(m) => Status::not_found(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Conflict(m) => Status::aborted(m),
            Error::Unavailable(m) => {
                tracing::warn!(error = %m, "scheduler dependency unavailable");
                Status::unavailable(m)
            }
            Error::ShuttingDown => Status::unavailable("the scheduler is shutting down"),
            e @ (Error::Database(_) | Error::Sqlite(_) | Error::Corrupt(_)) => {
                tracing::error!(error = %e, "scheduler internal error");
                Status::internal("internal error")
            }
        }
    }
}
