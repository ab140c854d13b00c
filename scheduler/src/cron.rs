//! Cron expressions in a time zone: the ticks they name, and what a
//! schedule whose tick is due does about the ticks it missed. Pure: the
//! caller passes the time.

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use devcycle::validate::FieldError;

pub use self::zone::Zone;

mod zone;

/// Ticks counted as missed in one pass at most: counting is a walk over
/// them, and an every-second schedule down for a week has 600,000.
pub const MAX_COUNTED: u64 = 10_000;

/// A parsed cron expression and the zone its fields are read in.
#[derive(Debug, Clone)]
pub struct Spec {
    cron: Cron,
    tz: Zone,
}

/// Parses `cron` (5 fields, or 6 with seconds first) and `time_zone` (an
/// IANA name; empty is UTC). Errors name `{prefix}.cron` or
/// `{prefix}.time_zone`.
pub fn parse(cron: &str, time_zone: &str, prefix: &str) -> Result<Spec, FieldError> {
    let field = format!("{prefix}.cron");
    if cron.trim().is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    if cron.len() > 256 {
        return Err(FieldError::new(field, "is longer than 256 bytes"));
    }
    let parsed = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(cron)
        .map_err(|e| FieldError::new(&field, format!("{cron:?} is not a cron expression: {e}")))?;
    let tz = if time_zone.is_empty() {
        Zone::utc()
    } else {
        Zone::named(time_zone).map_err(|why| {
            FieldError::new(
                format!("{prefix}.time_zone"),
                format!("{time_zone:?} {why}"),
            )
        })?
    };
    let spec = Spec { cron: parsed, tz };
    // A pattern can parse and still name no time (February 30th).
    if spec.next_after(0).is_none() {
        return Err(FieldError::new(field, format!("{cron:?} names no time")));
    }
    Ok(spec)
}

impl Spec {
    /// The first tick strictly after `after_ms` (ms since the epoch).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let at = self.local(after_ms)?;
        let next = self.cron.find_next_occurrence(&at, false).ok()?;
        Some(next.timestamp_millis())
    }

    /// The last tick at or before `at_ms`.
    fn last_at_or_before(&self, at_ms: i64) -> Option<i64> {
        let at = self.local(at_ms)?;
        let prev = self.cron.find_previous_occurrence(&at, true).ok()?;
        Some(prev.timestamp_millis())
    }

    /// `ms` in the zone, truncated to the second: ticks are whole seconds,
    /// and the search keeps any fraction it is given.
    fn local(&self, ms: i64) -> Option<DateTime<Zone>> {
        let secs = ms.div_euclid(1000);
        Some(DateTime::<Utc>::from_timestamp(secs, 0)?.with_timezone(&self.tz))
    }
}

/// What a schedule whose next tick (`next_fire`) is at or before `now` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The latest tick at or before `now`: the only one that may fire.
    pub latest: i64,
    /// Whether it fires: it is within the catch-up window.
    pub fire: bool,
    /// Ticks passed over (all before `latest`, and `latest` too when it
    /// does not fire), at most [`MAX_COUNTED`].
    pub missed: u64,
    /// The schedule's next tick after this pass; `None` when the
    /// expression names no later time.
    pub next: Option<i64>,
}

/// The ticks due at `now` of a schedule next due at `next_fire`: only the
/// latest may still fire, and only within `catchup_ms` of it. Ticks are
/// walked forward from `next_fire`, the way they were scheduled, so a tick
/// moved by a daylight-saving gap is found where it was put.
pub fn due(spec: &Spec, next_fire: i64, now: i64, catchup_ms: i64) -> Due {
    let mut latest = next_fire;
    let mut passed = 0;
    while let Some(t) = spec.next_after(latest).filter(|t| *t <= now) {
        passed += 1;
        if passed >= MAX_COUNTED {
            // Too many to walk: jump to the last one.
            latest = spec.last_at_or_before(now).filter(|l| *l > t).unwrap_or(t);
            break;
        }
        latest = t;
    }
    let fire = now - latest <= catchup_ms;
    Due {
        latest,
        fire,
        missed: if fire {
            passed
        } else {
            (passed + 1).min(MAX_COUNTED)
        },
        next: spec.next_after(now),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    /// A UTC time in ms.
    fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn five_and_six_fields_and_nicknames() {
        let every_minute = parse("* * * * *", "", "s").unwrap();
        let t = ms(2026, 12, 7, 10, 0, 30);
        assert_eq!(every_minute.next_after(t), Some(ms(2026, 12, 7, 10, 1, 0)));
        let every_second = parse("* * * * * *", "", "s").unwrap();
        assert_eq!(every_second.next_after(t), Some(t + 1000));
        // Mid-second times round up to the next whole second.
        assert_eq!(every_second.next_after(t + 1), Some(t + 1000));
        let daily = parse("@daily", "", "s").unwrap();
        assert_eq!(daily.next_after(t), Some(ms(2026, 12, 8, 0, 0, 0)));
        let mondays = parse("0 9 * * MON", "", "s").unwrap();
        // 2026-12-07 is a Monday, and its 09:00 has passed at 10:00.
        assert_eq!(mondays.next_after(t), Some(ms(2026, 12, 14, 9, 0, 0)));
    }

    #[test]
    fn fields_are_read_in_the_time_zone() {
        let paris = parse("0 9 * * *", "Europe/Paris", "s").unwrap();
        let t = ms(2026, 12, 7, 0, 0, 0);
        // 09:00 in Paris in winter is 08:00 UTC.
        assert_eq!(paris.next_after(t), Some(ms(2026, 12, 7, 8, 0, 0)));
        let t = ms(2026, 7, 1, 0, 0, 0);
        assert_eq!(paris.next_after(t), Some(ms(2026, 7, 1, 7, 0, 0)));
    }

    #[test]
    fn a_local_time_skipped_by_daylight_saving_fires_once_after_it() {
        // 2026-03-29 02:30 does not exist in Paris (02:00 → 03:00).
        let s = parse("30 2 * * *", "Europe/Paris", "s").unwrap();
        let t = ms(2026, 3, 28, 12, 0, 0);
        let next = s.next_after(t).unwrap();
        assert!(next > ms(2026, 3, 29, 0, 0, 0));
        assert!(next < ms(2026, 3, 30, 0, 0, 0));
        // Due, that tick fires: it is not lost to the gap.
        let d = due(&s, next, next + 100, 60_000);
        assert_eq!((d.latest, d.fire, d.missed), (next, true, 0));
    }

    #[test]
    fn a_local_time_that_occurs_twice_fires_once() {
        // 2026-10-25 02:30 happens at 00:30 and at 01:30 UTC in Paris.
        let s = parse("30 2 * * *", "Europe/Paris", "s").unwrap();
        let first = s.next_after(ms(2026, 10, 24, 12, 0, 0)).unwrap();
        assert_eq!(first, ms(2026, 10, 25, 0, 30, 0));
        assert_eq!(s.next_after(first), Some(ms(2026, 10, 26, 1, 30, 0)));
    }

    #[test]
    fn bad_input_names_its_field() {
        for bad in ["", "* * *", "61 * * * *", "* * * * * * * *", "nonsense"] {
            let e = parse(bad, "", "schedule").unwrap_err();
            assert_eq!(e.field, "schedule.cron", "{bad:?}");
        }
        let e = parse("* * * * *", "Mars/Olympus", "schedule").unwrap_err();
        assert_eq!(e.field, "schedule.time_zone");
        let e = parse("0 0 30 2 *", "", "schedule").unwrap_err();
        assert_eq!(e.field, "schedule.cron");
        assert!(e.reason.contains("names no time"), "{}", e.reason);
    }

    #[test]
    fn an_on_time_tick_fires() {
        let s = parse("* * * * *", "", "s").unwrap();
        let tick = ms(2026, 12, 7, 10, 0, 0);
        let d = due(&s, tick, tick + 250, 60_000);
        assert_eq!(
            d,
            Due {
                latest: tick,
                fire: true,
                missed: 0,
                next: Some(tick + 60_000)
            }
        );
    }

    #[test]
    fn after_an_outage_only_the_latest_tick_fires_within_the_window() {
        let s = parse("* * * * *", "", "s").unwrap();
        let first = ms(2026, 12, 7, 10, 0, 0);
        // Down from 10:00 to 10:05:10: ticks 10:00..10:04 are missed,
        // 10:05 is 10 s old and fires.
        let now = first + 5 * 60_000 + 10_000;
        let d = due(&s, first, now, 60_000);
        assert_eq!((d.latest, d.fire), (first + 5 * 60_000, true));
        assert_eq!(d.missed, 5);
        assert_eq!(d.next, Some(first + 6 * 60_000));
        // With a 5 s window even 10:05 is too old.
        let d = due(&s, first, now, 5_000);
        assert!(!d.fire);
        assert_eq!(d.missed, 6);
    }

    #[test]
    fn missed_ticks_are_counted_up_to_a_bound() {
        let s = parse("* * * * * *", "", "s").unwrap();
        let first = ms(2026, 12, 7, 0, 0, 0);
        let now = first + 86_400_000 + 500;
        let d = due(&s, first, now, 0);
        assert_eq!(d.missed, MAX_COUNTED);
        assert_eq!((d.latest, d.fire), (first + 86_400_000, false));
        assert_eq!(d.next, Some(first + 86_401_000));
    }
}
