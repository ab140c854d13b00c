//! Validation of caller input. Every error names the field at fault so that
//! services can answer INVALID_ARGUMENT with a message a user can act on.

use std::collections::HashMap;

/// A field of a request that is not acceptable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T = ()> = std::result::Result<T, FieldError>;

/// A DNS label (RFC 1123): 1-63 of `[a-z0-9-]`, starting with a letter and
/// not ending with `-`.
pub fn dns_label(field: &str, value: &str) -> Result {
    let ok = (1..=63).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && !value.ends_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{value:?} is not a DNS label (1-63 characters of a-z, 0-9 and '-', starting with a letter)"
            ),
        ))
    }
}

/// An optional wire timestamp as milliseconds; one that is present but out
/// of range is the caller's mistake.
pub fn timestamp(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> std::result::Result<Option<i64>, FieldError> {
    match ts {
        None => Ok(None),
        Some(_) => crate::time::from_timestamp(ts).map(Some).ok_or_else(|| {
            FieldError::new(
                field,
                "out of range (nanos must be 0..1e9, seconds within ±292 million years)",
            )
        }),
    }
}

/// A message field that must be set.
pub fn present<T>(field: &str, v: Option<T>) -> std::result::Result<T, FieldError> {
    v.ok_or_else(|| FieldError::new(field, "is required"))
}

pub fn required(field: &str, value: &str) -> Result {
    if value.is_empty() {
        Err(FieldError::new(field, "is required"))
    } else {
        Ok(())
    }
}

/// A text field: at most `max` bytes and no NUL byte (PostgreSQL cannot
/// store one in `text`).
pub fn max_bytes(field: &str, value: &str, max: usize) -> Result {
    if value.contains('\0') {
        return Err(FieldError::new(field, "must not contain NUL bytes"));
    }
    if value.len() > max {
        Err(FieldError::new(
            field,
            format!("is {} bytes, at most {max} are allowed", value.len()),
        ))
    } else {
        Ok(())
    }
}

pub fn max_items(field: &str, len: usize, max: usize) -> Result {
    if len > max {
        Err(FieldError::new(
            field,
            format!("has {len} entries, at most {max} are allowed"),
        ))
    } else {
        Ok(())
    }
}

/// A user name: 1-64 characters of `[a-z0-9._-]` (it becomes the last
/// segment of `spiffe://<td>/user/<name>`).
/// Variables that change how the dynamic loader and libc behave — glibc's
/// own list of what it ignores for setuid programs, and every `LD_*`. An
/// agent's environment is also that of the executor's host-side wrapper,
/// outside the sandbox, so these would run code there: agents never set
/// them (refused at publish by the registry, and at run by the executor).
pub fn is_loader_variable(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "MALLOC_TRACE",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TZDIR",
    ];
    name.starts_with("LD_") || NAMES.contains(&name)
}

pub fn user_name(field: &str, value: &str) -> Result {
    token(field, value, 64, b"._")
}

/// Characters of names such as capabilities and label keys.
pub fn token(field: &str, value: &str, max: usize, extra: &[u8]) -> Result {
    let ok = !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || extra.contains(&b)
        });
    if ok {
        Ok(())
    } else {
        let extra: String = extra.iter().map(|b| format!(" '{}'", *b as char)).collect();
        Err(FieldError::new(
            field,
            format!("{value:?} must be 1-{max} characters of a-z, 0-9, '-'{extra}"),
        ))
    }
}

/// At most 32 labels with keys of `[a-z0-9._/-]` and values of at most 128 bytes.
pub fn labels(field: &str, labels: &HashMap<String, String>) -> Result {
    max_items(field, labels.len(), 32)?;
    for (k, v) in labels {
        token(&format!("{field}[{k}]"), k, 63, b"._/")?;
        max_bytes(&format!("{field}[{k}]"), v, 128)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "reviewer", "lint-2", &"a".repeat(63)] {
            assert!(dns_label("name", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "2fast",
            "Caps",
            "a_b",
            "trailing-",
            &"a".repeat(64),
            "a.b",
        ] {
            let e = dns_label("agent.name", bad).unwrap_err();
            assert_eq!(e.field, "agent.name");
        }
    }

    #[test]
    fn text_has_no_nul_and_a_bound() {
        assert!(max_bytes("reason", "fine", 8).is_ok());
        let e = max_bytes("reason", "a\0b", 8).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("reason", "must not contain NUL bytes")
        );
        assert_eq!(
            max_bytes("reason", "too long", 4).unwrap_err().field,
            "reason"
        );
    }

    #[test]
    fn label_rules() {
        let mut l = HashMap::new();
        l.insert("team".to_owned(), "core".to_owned());
        assert!(labels("labels", &l).is_ok());
        l.insert("Bad Key".to_owned(), "x".to_owned());
        assert_eq!(labels("labels", &l).unwrap_err().field, "labels[Bad Key]");
    }
}
