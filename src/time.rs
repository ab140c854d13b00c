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

/// Converts a wire timestamp; `None` when absent, when `nanos` is outside
/// `0..1e9`, or when the instant does not fit in milliseconds.
pub fn from_timestamp(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    let t = ts?;
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    t.seconds
        .checked_mul(1000)?
        .checked_add(i64::from(t.nanos / 1_000_000))
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

    #[test]
    fn out_of_range_is_none() {
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(from_timestamp(Some(&ts(i64::MAX, 0))), None);
        assert_eq!(from_timestamp(Some(&ts(i64::MIN, 0))), None);
        assert_eq!(from_timestamp(Some(&ts(1, -1))), None);
        assert_eq!(from_timestamp(Some(&ts(1, 1_000_000_000))), None);
        assert_eq!(from_timestamp(None), None);
    }
}
