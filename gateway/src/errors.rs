//! Statuses for failures that are not the caller's. The detail (addresses,
//! driver messages, file paths) goes to the gateway's log; the caller gets
//! the code and a generic message naming only the part that failed.

use std::fmt::Display;

use tonic::Status;

/// A bug or a broken dependency: INTERNAL, detail logged.
pub fn internal(part: &'static str, e: impl Display) -> Status {
    tracing::error!(part, error = %e, "internal error");
    Status::internal(format!("{part} failed; the gateway's log has the detail"))
}

/// A dependency down or overloaded: UNAVAILABLE (the caller may retry),
/// detail logged.
pub fn unavailable(part: &'static str, e: impl Display) -> Status {
    tracing::warn!(part, error = %e, "dependency unavailable");
    Status::unavailable(format!("{part} is unavailable; retry later"))
}

/// The session store (the cache) failed.
pub fn session_store(e: impl Display) -> Status {
    unavailable("session store", e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_stay_out_of_the_status() {
        let detail = "connection to 10.1.2.3:6379 refused (/etc/devcycle/redis.conf)";
        for s in [
            internal("database", detail),
            unavailable("database", detail),
        ] {
            assert!(!s.message().contains("10.1.2.3"), "{}", s.message());
            assert!(s.message().starts_with("database"), "{}", s.message());
        }
        assert_eq!(session_store(detail).code(), tonic::Code::Unavailable);
    }
}
