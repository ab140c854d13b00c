//! IANA time zones from the system's tz database (`/usr/share/zoneinfo`,
//! package `tzdata`), as chrono time zones. Read on first use and kept:
//! a compiled-in database would cost every process about 3 MiB of memory
//! (relocated tables), used or not.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use chrono::{FixedOffset, MappedLocalTime, NaiveDate, NaiveDateTime, Offset, TimeZone};
use parking_lot::Mutex;

/// Where zone files are looked for, in order.
const DIRECTORIES: [&str; 3] = ["/usr/share/zoneinfo", "/share/zoneinfo", "/etc/zoneinfo"];

/// A time zone: UTC, or one of the tz database.
#[derive(Clone)]
pub struct Zone {
    name: Arc<str>,
    tz: Arc<tz::TimeZone>,
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Zone {
    pub fn utc() -> Self {
        Self {
            name: "UTC".into(),
            tz: Arc::new(tz::TimeZone::utc()),
        }
    }

    /// The zone named `name` (`Europe/Paris`), or why there is none.
    pub fn named(name: &str) -> Result<Self, String> {
        static CACHE: OnceLock<Mutex<HashMap<String, Zone>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(z) = cache.lock().get(name) {
            return Ok(z.clone());
        }
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b))
            });
        if !valid {
            return Err("is not an IANA time zone name (such as Europe/Paris)".into());
        }
        let Some(bytes) = DIRECTORIES
            .iter()
            .find_map(|dir| std::fs::read(format!("{dir}/{name}")).ok())
        else {
            let missing = !DIRECTORIES.iter().any(|d| std::path::Path::new(d).is_dir());
            return Err(if missing {
                "cannot be read: this host has no time zone database (install tzdata)".into()
            } else {
                "is not an IANA time zone (such as Europe/Paris)".into()
            });
        };
        let tz = tz::TimeZone::from_tz_data(&bytes)
            .map_err(|e| format!("has an unreadable zone file: {e}"))?;
        let zone = Self {
            name: name.into(),
            tz: Arc::new(tz),
        };
        cache.lock().insert(name.to_owned(), zone.clone());
        Ok(zone)
    }

    /// The offset from UTC, in seconds, at Unix time `secs`.
    fn offset_at(&self, secs: i64) -> i32 {
        self.tz
            .find_local_time_type(secs)
            .map(|t| t.ut_offset())
            .unwrap_or(0)
    }

    fn offset(&self, secs: i32) -> ZoneOffset {
        ZoneOffset {
            zone: self.clone(),
            fixed: FixedOffset::east_opt(secs).unwrap_or(FixedOffset::east_opt(0).expect("0")),
        }
    }
}

/// An offset in effect in a zone; it remembers its zone, as chrono needs.
#[derive(Clone)]
pub struct ZoneOffset {
    zone: Zone,
    fixed: FixedOffset,
}

impl fmt::Debug for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.fixed, self.zone)
    }
}

impl fmt::Display for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.fixed, f)
    }
}

impl Offset for ZoneOffset {
    fn fix(&self) -> FixedOffset {
        self.fixed
    }
}

impl TimeZone for Zone {
    type Offset = ZoneOffset;

    fn from_offset(offset: &ZoneOffset) -> Self {
        offset.zone.clone()
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<ZoneOffset> {
        self.offset_from_local_datetime(&local.and_hms_opt(0, 0, 0).expect("midnight"))
    }

    /// The offsets that make `local` a real instant: none in a gap, two
    /// when clocks went back. Offsets in effect a day either side are the
    /// candidates (no zone changes twice within a day).
    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> MappedLocalTime<ZoneOffset> {
        let l = local.and_utc().timestamp();
        let mut found: Vec<(i64, i32)> = Vec::with_capacity(2);
        for probe in [l - 86_400, l, l + 86_400] {
            let o = self.offset_at(probe);
            let utc = l - i64::from(o);
            if self.offset_at(utc) == o && !found.iter().any(|(u, _)| *u == utc) {
                found.push((utc, o));
            }
        }
        found.sort_unstable();
        match found[..] {
            [] => MappedLocalTime::None,
            [(_, o)] => MappedLocalTime::Single(self.offset(o)),
            [(_, a), .., (_, b)] => MappedLocalTime::Ambiguous(self.offset(a), self.offset(b)),
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> ZoneOffset {
        self.offset_from_utc_datetime(&utc.and_hms_opt(0, 0, 0).expect("midnight"))
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> ZoneOffset {
        self.offset(self.offset_at(utc.and_utc().timestamp()))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Timelike};

    use super::*;

    #[test]
    fn offsets_gaps_and_folds() {
        let paris = Zone::named("Europe/Paris").unwrap();
        let at = |y, mo, d, h, mi| {
            NaiveDate::from_ymd_opt(y, mo, d)
                .unwrap()
                .and_hms_opt(h, mi, 0)
                .unwrap()
        };
        let winter = paris.from_local_datetime(&at(2026, 12, 7, 9, 0)).unwrap();
        assert_eq!(winter.offset().fix().local_minus_utc(), 3600);
        assert_eq!(winter.naive_utc().hour(), 8);
        // 02:30 on 2026-03-29 does not exist; 02:30 on 2026-10-25 twice.
        assert!(matches!(
            paris.from_local_datetime(&at(2026, 3, 29, 2, 30)),
            MappedLocalTime::None
        ));
        match paris.from_local_datetime(&at(2026, 10, 25, 2, 30)) {
            MappedLocalTime::Ambiguous(a, b) => {
                assert_eq!(a.offset().fix().local_minus_utc(), 7200);
                assert_eq!(b.offset().fix().local_minus_utc(), 3600);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_are_checked_before_any_file_is_read() {
        for bad in [
            "",
            "/etc/passwd",
            "../../etc/passwd",
            "Europe/../../x",
            "a b",
        ] {
            assert!(Zone::named(bad).is_err(), "{bad:?}");
        }
        assert!(Zone::named("Mars/Olympus").is_err());
        assert!(Zone::named("UTC").is_ok());
        assert!(Zone::named("America/New_York").is_ok());
    }
}
