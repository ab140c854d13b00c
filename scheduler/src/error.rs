//! The scheduler's one error type, and the one place gRPC codes are chosen.
//!
//! Errors are cheap to clone: one failed batch answers every caller and
//! worker stream it carried, so the sources that are not `Clone` are shared.

use std::sync::Arc;

use devcycle::db::{Failure, classify};
use devcycle::validate::FieldError;
use tonic::Status;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
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
    /// The caller did not do its part in time (a worker's hello).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A newer stream of the same worker took over this one.
    #[error("{0}")]
    Superseded(String),
    /// A worker stream sent nothing for too long and is taken for dead.
    #[error("no message for {silent_ms} ms; heartbeat every {heartbeat_ms} ms")]
    WorkerSilent { silent_ms: u128, heartbeat_ms: u128 },
    #[error("database: {0}")]
    Database(#[source] Arc<sqlx::Error>),
    #[error("sqlite: {0}")]
    Sqlite(#[source] Arc<rusqlite::Error>),
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
            _ => Error::Database(Arc::new(e)),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sqlite(Arc::new(e))
    }
}

impl Error {
    /// Worth retrying the whole batch: a lost race or a deadlock victim.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Conflict(_) => true,
            Error::Database(e) => match &**e {
                // serialization_failure, deadlock_detected
                sqlx::Error::Database(db) => {
                    matches!(db.code().as_deref(), Some("40001") | Some("40P01"))
                }
                _ => false,
            },
            Error::Sqlite(e) => match &**e {
                rusqlite::Error::SqliteFailure(e, _) => matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ),
                _ => false,
            },
            _ => false,
        }
    }

    /// The error as told to callers whose batch failed: nothing was
    /// recorded, so a fault of ours is for them a reason to retry later.
    pub(crate) fn retry_later(self) -> Self {
        match self {
            Error::Database(_) | Error::Sqlite(_) | Error::Corrupt(_) => {
                Error::Unavailable("internal error".into())
            }
            other => other,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(f) => Status::invalid_argument(f.to_string()),
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Conflict(m) | Error::Superseded(m) => Status::aborted(m),
            Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            Error::Unavailable(m) => {
                tracing::warn!(error = %m, "scheduler dependency unavailable");
                Status::unavailable(m)
            }
            e @ (Error::ShuttingDown | Error::WorkerSilent { .. }) => {
                Status::unavailable(e.to_string())
            }
            e @ (Error::Database(_) | Error::Sqlite(_) | Error::Corrupt(_)) => {
                tracing::error!(error = %e, "scheduler internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// Answers with the error mapped to its status.
pub(crate) fn respond<T>(r: Result<T>) -> Result<tonic::Response<T>, Status> {
    r.map(tonic::Response::new).map_err(Status::from)
}

/// Rejections as callers see them.
impl From<crate::machine::Reject> for Error {
    fn from(r: crate::machine::Reject) -> Self {
        use crate::machine::Reject;
        match r {
            Reject::NotFound(m) => Error::NotFound(m),
            Reject::Stale(m) | Reject::State(m) => Error::FailedPrecondition(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Status};

    use super::Error;
    use crate::machine::Reject;

    fn status(e: Error) -> (Code, String) {
        let s = Status::from(e);
        (s.code(), s.message().to_owned())
    }

    #[test]
    fn codes_and_messages_callers_see() {
        let silent = Error::WorkerSilent {
            silent_ms: 3000,
            heartbeat_ms: 1000,
        };
        assert_eq!(
            status(silent),
            (
                Code::Unavailable,
                "no message for 3000 ms; heartbeat every 1000 ms".into()
            )
        );
        assert_eq!(
            status(Error::Superseded("replaced".into())),
            (Code::Aborted, "replaced".into())
        );
        assert_eq!(
            status(Error::ShuttingDown),
            (Code::Unavailable, "the scheduler is shutting down".into())
        );
        assert_eq!(
            status(Reject::Stale("lease gone".into()).into()),
            (Code::FailedPrecondition, "lease gone".into())
        );
        assert_eq!(
            status(Reject::NotFound("task t does not exist".into()).into()),
            (Code::NotFound, "task t does not exist".into())
        );
    }

    /// A batch that failed on our side tells its callers to retry; what
    /// they sent wrong is still theirs to fix.
    #[test]
    fn failed_batches_tell_callers_to_retry() {
        let internal = Error::Corrupt("run state x".into()).retry_later();
        assert_eq!(
            status(internal),
            (Code::Unavailable, "internal error".into())
        );
        let invalid = Error::from(devcycle::validate::FieldError::new("request", "bad"));
        assert_eq!(
            status(invalid.retry_later()),
            (Code::InvalidArgument, "request: bad".into())
        );
    }
}
