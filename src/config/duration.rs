//! Durations in the configuration are humantime strings under keys without
//! a unit (`drain = "10s"`). The older integer keys (`drain_ms = 10000`,
//! `access_ttl_s = 600`) still work: each source (file, environment) is
//! rewritten to the new spelling before the layers merge, so a later layer
//! overrides an earlier one whichever spelling each uses. One source giving
//! both spellings of a key is an error naming both.
//!
//! The Rust fields are [`Duration`]s named like their keys; the `with`
//! modules here keep each key's granularity (whole milliseconds or whole
//! seconds, as its legacy integer key had).

use std::time::Duration;

use figment::value::{Dict, Map, Value};
use figment::{Error, Metadata, Profile, Provider};
use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;

use Unit::{Millis, Secs};

#[derive(Clone, Copy)]
enum Unit {
    Millis,
    Secs,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Millis => "ms",
            Secs => "s",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Millis => "milliseconds",
            Secs => "seconds",
        }
    }
}

/// (section, legacy key, key): `*` in a section path stands for every
/// element of an array of tables.
const LEGACY: &[(&str, &str, &str, Unit)] = &[
    ("tls", "reload_interval_ms", "reload_interval", Millis),
    ("shutdown", "health_grace_ms", "health_grace", Millis),
    ("shutdown", "drain_ms", "drain", Millis),
    (
        "registry",
        "heartbeat_interval_ms",
        "heartbeat_interval",
        Millis,
    ),
    (
        "scheduler",
        "heartbeat_interval_ms",
        "heartbeat_interval",
        Millis,
    ),
    ("executor", "drain_ms", "drain", Millis),
    ("executor.limits", "wall_time_ms", "wall_time", Millis),
    ("executor.limits", "cpu_time_ms", "cpu_time", Millis),
    ("gateway", "access_ttl_s", "access_ttl", Secs),
    ("gateway", "session_idle_s", "session_idle", Secs),
    ("gateway", "session_absolute_s", "session_absolute", Secs),
    (
        "gateway.external_issuers.*",
        "jwks_refresh_s",
        "jwks_refresh",
        Secs,
    ),
];

/// A source whose legacy duration keys are rewritten to the humantime ones.
pub(super) struct Legacy<P>(pub P);

impl<P: Provider> Provider for Legacy<P> {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut data = self.0.data()?;
        for dict in data.values_mut() {
            for &(section, old, new, unit) in LEGACY {
                let path: Vec<&str> = section.split('.').collect();
                rewrite(dict, &path, section, old, new, unit).map_err(Error::from)?;
            }
        }
        Ok(data)
    }

    fn profile(&self) -> Option<Profile> {
        self.0.profile()
    }
}

fn rewrite(
    dict: &mut Dict,
    path: &[&str],
    section: &str,
    old: &str,
    new: &str,
    unit: Unit,
) -> Result<(), String> {
    let Some((&first, rest)) = path.split_first() else {
        return rename(dict, section, old, new, unit);
    };
    match dict.get_mut(first) {
        Some(Value::Dict(_, inner)) => rewrite(inner, rest, section, old, new, unit),
        Some(Value::Array(_, items)) if rest.first() == Some(&"*") => {
            for item in items {
                if let Value::Dict(_, inner) = item {
                    rewrite(inner, &rest[1..], section, old, new, unit)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn rename(dict: &mut Dict, section: &str, old: &str, new: &str, unit: Unit) -> Result<(), String> {
    let Some(value) = dict.remove(old) else {
        return Ok(());
    };
    if dict.contains_key(new) {
        return Err(format!(
            "{section}.{new} and {section}.{old} are both set; keep only {section}.{new}"
        ));
    }
    let n = value
        .to_u128()
        .or_else(|| value.to_i128().and_then(|n| u128::try_from(n).ok()));
    let Some(n) = n else {
        return Err(format!(
            "{section}.{old}: must be a whole number of {}",
            unit.name()
        ));
    };
    dict.insert(new.into(), Value::from(format!("{n}{}", unit.suffix())));
    Ok(())
}

fn parse<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Human;
    impl Visitor<'_> for Human {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as \"5s\" or \"1h 30m\"")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            humantime::parse_duration(s)
                .map_err(|e| E::custom(format!("{s:?} is not a duration such as \"5s\": {e}")))
        }
    }
    d.deserialize_str(Human)
}

/// Refuses a duration finer than `unit`, or longer than its legacy integer
/// key could hold (u64 milliseconds, u32 seconds).
fn whole<E: de::Error>(d: Duration, unit: Unit) -> Result<Duration, E> {
    let (exact, fits) = match unit {
        Millis => (
            d.subsec_nanos().is_multiple_of(1_000_000),
            u64::try_from(d.as_millis()).is_ok(),
        ),
        Secs => (d.subsec_nanos() == 0, u32::try_from(d.as_secs()).is_ok()),
    };
    if !exact {
        let unit = unit.name();
        return Err(E::custom(format!("must be a whole number of {unit}")));
    }
    if !fits {
        return Err(E::custom("too long"));
    }
    Ok(d)
}

fn write<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// A humantime string of whole milliseconds.
pub(super) mod whole_millis {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        write(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        whole(parse(d)?, Millis)
    }
}

/// A humantime string of whole seconds.
pub(super) mod whole_secs {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        write(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        whole(parse(d)?, Secs)
    }
}
