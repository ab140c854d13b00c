//! The gateway's one error type, and the one place gRPC codes are chosen.
//! Failures that are not the caller's (a broken dependency, a bug) carry
//! their detail to the gateway's log only; the caller gets the code and a
//! generic message naming the part that failed.

use std::borrow::Cow;

use devcycle::validate::FieldError;
use tonic::Status;

use crate::cache::CacheError;
use crate::jwt::TokenError;
use crate::store::StoreError;

/// A caller-facing message: literals without allocating.
pub type Message = Cow<'static, str>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    Unauthenticated(Message),
    #[error("{0}")]
    PermissionDenied(Message),
    #[error("{0}")]
    NotFound(Message),
    #[error("{0}")]
    AlreadyExists(Message),
    #[error("{0}")]
    FailedPrecondition(Message),
    /// The request body ended in an error (usually the client went away).
    #[error("{0}")]
    Cancelled(String),
    #[error("{0}")]
    Unimplemented(String),
    /// A request message larger than `max` bytes.
    #[error("request: larger than {max} bytes")]
    TooLarge { max: usize },
    /// A rate limit of `what`; allowed again after `wait_us`.
    #[error("{what}: rate limit exceeded")]
    RateLimited { what: &'static str, wait_us: i64 },
    /// Not ready yet or unreachable; the caller may retry. The message is
    /// the caller's to read.
    #[error("{0}")]
    Unavailable(Message),
    /// A dependency (`part`) down or overloaded: logged, UNAVAILABLE.
    #[error("{part} unavailable: {detail}")]
    Dependency { part: &'static str, detail: String },
    /// A bug or a broken dependency (`part`): logged, INTERNAL.
    #[error("{part} failed: {detail}")]
    Internal { part: &'static str, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn unauthenticated(m: impl Into<Message>) -> Self {
        Self::Unauthenticated(m.into())
    }

    pub fn permission_denied(m: impl Into<Message>) -> Self {
        Self::PermissionDenied(m.into())
    }

    pub fn not_found(m: impl Into<Message>) -> Self {
        Self::NotFound(m.into())
    }

    pub fn failed_precondition(m: impl Into<Message>) -> Self {
        Self::FailedPrecondition(m.into())
    }

    pub fn unavailable(m: impl Into<Message>) -> Self {
        Self::Unavailable(m.into())
    }

    /// An invalid field, named with the reason.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid(FieldError::new(field, reason))
    }

    pub fn internal(part: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Internal {
            part,
            detail: detail.to_string(),
        }
    }
}

/// The session store (the cache) failed.
impl From<CacheError> for Error {
    fn from(e: CacheError) -> Self {
        Self::Dependency {
            part: "session store",
            detail: e.0,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists => Self::AlreadyExists("already exists".into()),
            StoreError::Unavailable(detail) => Self::Dependency {
                part: "database",
                detail,
            },
            StoreError::Other(detail) => Self::Internal {
                part: "database",
                detail,
            },
        }
    }
}

/// A token that does not verify, presented in `field`.
pub fn bad_token(field: &'static str, e: TokenError) -> Error {
    Error::Unauthenticated(format!("{field}: {}", e.0).into())
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(f) => Status::invalid_argument(f.to_string()),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::Cancelled(m) => Status::cancelled(m),
            Error::Unimplemented(m) => Status::unimplemented(m),
            e @ Error::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
            Error::RateLimited { what, wait_us } => rate_limited(what, wait_us),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Dependency { part, detail } => {
                tracing::warn!(part, error = %detail, "dependency unavailable");
                Status::unavailable(format!("{part} is unavailable; retry later"))
            }
            Error::Internal { part, detail } => {
                tracing::error!(part, error = %detail, "internal error");
                Status::internal(format!("{part} failed; the gateway's log has the detail"))
            }
        }
    }
}

/// RESOURCE_EXHAUSTED with the wait in metadata: `retry-after` (seconds,
/// rounded up, as in HTTP) and `retry-after-ms`.
fn rate_limited(what: &str, wait_us: i64) -> Status {
    let ms = (wait_us + 999) / 1000;
    let mut s =
        Status::resource_exhausted(format!("{what}: rate limit exceeded; retry in {ms} ms"));
    let md = s.metadata_mut();
    if let Ok(v) = ((ms + 999) / 1000).to_string().parse() {
        md.insert("retry-after", v);
    }
    if let Ok(v) = ms.to_string().parse() {
        md.insert("retry-after-ms", v);
    }
    s
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn details_stay_out_of_the_status() {
        let detail = "connection to 10.1.2.3:6379 refused (/etc/devcycle/redis.conf)";
        for s in [
            Status::from(Error::internal("database", detail)),
            Status::from(Error::from(StoreError::Unavailable(detail.into()))),
            Status::from(Error::from(StoreError::Other(detail.into()))),
        ] {
            assert!(!s.message().contains("10.1.2.3"), "{}", s.message());
            assert!(s.message().starts_with("database"), "{}", s.message());
        }
        let s = Status::from(Error::from(CacheError(detail.into())));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "session store is unavailable; retry later");
    }

    #[test]
    fn rate_limits_carry_the_wait() {
        let s = Status::from(Error::RateLimited {
            what: "requests",
            wait_us: 1_500_001,
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "requests: rate limit exceeded; retry in 1501 ms"
        );
        assert_eq!(s.metadata().get("retry-after").unwrap(), "2");
        assert_eq!(s.metadata().get("retry-after-ms").unwrap(), "1501");
        let s = Status::from(Error::TooLarge { max: 10 });
        assert_eq!(s.message(), "request: larger than 10 bytes");
    }
}
