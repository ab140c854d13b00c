//! Time as the stores keep it: milliseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn to_timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Converts a wire timestamp; `None` stays `None`.
pub fn from_timestamp(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_including_negative() {
        for ms in [0, 1, 999, 1000, 1_700_000_000_123, -1, -1001] {
            assert_eq!(from_timestamp(Some(&to_timestamp(ms))), Some(ms));
        }
    }
}
