//! What the `Messages` contract accepts: every refusal names its field.

use std::collections::HashMap;

use devcycle::proto::messages::v1 as pb;
use devcycle::validate::{self, FieldError};

use super::{NewMessage, Start};

pub const MAX_PARTITIONS: u32 = 64;
pub const DEFAULT_RETENTION_S: u64 = 7 * 24 * 3600;
pub const MAX_RETENTION_S: u64 = 365 * 24 * 3600;
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
pub const MAX_DELIVERIES: u32 = 100;
pub const MAX_KEY_BYTES: usize = 256;
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;
pub const MAX_BATCH: usize = 1000;
pub const DEFAULT_IN_FLIGHT: u32 = 64;
pub const MAX_IN_FLIGHT: u32 = 1024;
pub const DEFAULT_ACK_DEADLINE_MS: u32 = 30_000;
/// Ack deadlines and nack delays: at most an hour.
pub const MAX_WAIT_MS: u32 = 3_600_000;
/// Shorter ack deadlines would expire before a consumer could ack.
pub const MIN_ACK_DEADLINE_MS: u32 = 100;
pub const MAX_ACK_IDS: usize = 1024;
/// Message ids: short enough that a trigger's idempotency key holds one.
pub const MAX_ID_CHARS: usize = 80;

/// Topic and group names: 1-128 of `[a-z0-9._-]`.
pub fn name(field: &str, value: &str) -> Result<(), FieldError> {
    validate::token(field, value, 128, b"._")
}

/// A topic to create, with defaults filled in.
pub fn topic(t: Option<&pb::Topic>) -> Result<pb::Topic, FieldError> {
    let t = validate::present("topic", t)?;
    name("topic.name", &t.name)?;
    if t.partitions > MAX_PARTITIONS {
        return Err(FieldError::new(
            "topic.partitions",
            format!("must be at most {MAX_PARTITIONS}"),
        ));
    }
    if t.retention_s > MAX_RETENTION_S {
        return Err(FieldError::new(
            "topic.retention_s",
            format!("must be at most 365 days ({MAX_RETENTION_S} s)"),
        ));
    }
    if t.max_deliveries > MAX_DELIVERIES {
        return Err(FieldError::new(
            "topic.max_deliveries",
            format!("must be at most {MAX_DELIVERIES}"),
        ));
    }
    crate::spec::check_people("topic.publishers", &t.publishers)?;
    crate::spec::check_people("topic.subscribers", &t.subscribers)?;
    Ok(pb::Topic {
        partitions: t.partitions.max(1),
        retention_s: if t.retention_s == 0 {
            DEFAULT_RETENTION_S
        } else {
            t.retention_s
        },
        max_deliveries: if t.max_deliveries == 0 {
            DEFAULT_MAX_DELIVERIES
        } else {
            t.max_deliveries
        },
        ..t.clone()
    })
}

/// One message to publish; `field` prefixes the names in errors. A missing
/// id is generated.
pub fn message(
    field: &str,
    id: &str,
    key: &str,
    payload: &[u8],
    headers: &HashMap<String, String>,
) -> Result<NewMessage, FieldError> {
    let id = if id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        validate::token(&format!("{field}id"), id, MAX_ID_CHARS, b"._:/")?;
        id.to_owned()
    };
    validate::max_bytes(&format!("{field}key"), key, MAX_KEY_BYTES)?;
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(FieldError::new(
            format!("{field}payload"),
            format!(
                "is {} bytes; at most {MAX_PAYLOAD_BYTES} (1 MiB)",
                payload.len()
            ),
        ));
    }
    if headers.len() > MAX_HEADERS {
        return Err(FieldError::new(
            format!("{field}headers"),
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    let mut sorted: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    sorted.sort();
    for (k, v) in &sorted {
        let f = format!("{field}headers[{k:?}]");
        validate::token(&f, k, 128, b"._")?;
        validate::max_bytes(&f, v, MAX_HEADER_VALUE_BYTES)?;
    }
    Ok(NewMessage {
        id,
        key: key.to_owned(),
        payload: payload.to_vec(),
        headers: sorted,
    })
}

pub fn start(s: Option<&pb::StartPosition>) -> Result<Start, FieldError> {
    use pb::start_position::At;
    Ok(match s.and_then(|s| s.at.as_ref()) {
        None | Some(At::Latest(_)) => Start::Latest,
        Some(At::Earliest(_)) => Start::Earliest,
        Some(At::Offset(o)) if *o < 0 => {
            return Err(FieldError::new("start.offset", "must not be negative"));
        }
        Some(At::Offset(o)) => Start::Offset(*o),
        Some(At::Time(t)) => Start::Time(
            validate::timestamp("start.time", Some(t))?.expect("present timestamps convert"),
        ),
    })
}

/// A count with a default for 0 and an upper bound.
pub fn bounded(field: &str, v: u32, default: u32, max: u32) -> Result<u32, FieldError> {
    match v {
        0 => Ok(default),
        v if v > max => Err(FieldError::new(field, format!("must be at most {max}"))),
        v => Ok(v),
    }
}

pub fn ack_deadline(ms: u32) -> Result<u32, FieldError> {
    let ms = bounded("ack_deadline_ms", ms, DEFAULT_ACK_DEADLINE_MS, MAX_WAIT_MS)?;
    if ms < MIN_ACK_DEADLINE_MS {
        return Err(FieldError::new(
            "ack_deadline_ms",
            format!("must be at least {MIN_ACK_DEADLINE_MS}"),
        ));
    }
    Ok(ms)
}

pub fn ack_ids(ids: &[String]) -> Result<(), FieldError> {
    if ids.is_empty() {
        return Err(FieldError::new("ids", "name at least one message id"));
    }
    if ids.len() > MAX_ACK_IDS {
        return Err(FieldError::new(
            "ids",
            format!("at most {MAX_ACK_IDS} per call"),
        ));
    }
    for (i, id) in ids.iter().enumerate() {
        validate::token(&format!("ids[{i}]"), id, MAX_ID_CHARS, b"._:/")?;
    }
    Ok(())
}
