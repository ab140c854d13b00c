//! The registry's one error type, and the one place gRPC codes are chosen.

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
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A concurrent change won a compare-and-set; retrying may succeed.
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match classify(&e) {
            Failure::Unavailable => Error::Unavailable(e),
            // No field is known this deep; the reason is what to fix.
            Failure::InvalidText => Error::Invalid(FieldError::new(
                "request",
                "text fields must not contain NUL bytes",
            )),
            _ => Error::Database(e),
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
            Error::Aborted(m) => Status::aborted(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Unavailable(e) => {
                tracing::warn!(error = %e, "registry database unavailable");
                Status::unavailable("registry database unavailable, retry later")
            }
            e @ (Error::Database(_) | Error::Corrupt(_)) => {
                tracing::error!(error = %e, "registry internal error");
                Status::internal("internal error")
            }
        }
    }
}
