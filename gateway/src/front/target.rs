//! The audited target of a request, read out of its raw first frame
//! without decoding the message: a walk over protobuf fields along the
//! method's target paths.

use bytes::Buf;

use crate::rbac;

/// The audited target: the first string found along one of `paths` in the
/// request's first message (uncompressed frames only).
pub fn target_of(frame: &[u8], paths: &[rbac::TargetPath]) -> String {
    if frame.len() < 5 || frame[0] != 0 {
        return String::new();
    }
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let Some(msg) = frame.get(5..5 + len) else {
        return String::new();
    };
    for path in paths {
        let mut cur = msg;
        let found = path.iter().all(|f| match field(cur, *f) {
            Some(v) => {
                cur = v;
                true
            }
            None => false,
        });
        if found && let Ok(s) = std::str::from_utf8(cur) {
            // Stored and printed: no control characters (PostgreSQL refuses
            // NUL, terminals obey escapes).
            return s.chars().filter(|c| !c.is_control()).take(256).collect();
        }
    }
    String::new()
}

/// The bytes of length-delimited field `number` in a protobuf message; the
/// last occurrence, as protobuf parsers read it.
fn field(mut buf: &[u8], number: u32) -> Option<&[u8]> {
    use prost::encoding::decode_varint;
    let mut found = None;
    while buf.has_remaining() {
        let key = decode_varint(&mut buf).ok()?;
        match key & 7 {
            0 => {
                decode_varint(&mut buf).ok()?;
            }
            1 => buf = buf.get(8..)?,
            2 => {
                let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                let v = buf.get(..len)?;
                if key >> 3 == u64::from(number) {
                    found = Some(v);
                }
                buf = &buf[len..];
            }
            5 => buf = buf.get(4..)?,
            _ => return None,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_read_from_nested_fields() {
        use prost::Message;
        let req = devcycle::proto::scheduler::v1::CancelRunRequest {
            run_id: "r-1".into(),
            reason: "x".into(),
        };
        let frame = |m: Vec<u8>| {
            let mut f = vec![0u8];
            f.extend((m.len() as u32).to_be_bytes());
            f.extend(m);
            f
        };
        assert_eq!(target_of(&frame(req.encode_to_vec()), &[&[1]]), "r-1");
        // The last occurrence wins, as in protobuf; control characters go.
        let mut twice = req.encode_to_vec();
        twice.extend(
            devcycle::proto::scheduler::v1::CancelRunRequest {
                run_id: "r-2\0\x1b[2J".into(),
                reason: String::new(),
            }
            .encode_to_vec(),
        );
        assert_eq!(target_of(&frame(twice), &[&[1]]), "r-2[2J");
        let agent = devcycle::proto::registry::v1::CreateAgentRequest {
            agent: Some(devcycle::proto::registry::v1::Agent {
                name: "lint".into(),
                ..Default::default()
            }),
        };
        let f = frame(agent.encode_to_vec());
        assert_eq!(target_of(&f, &[&[1, 1]]), "lint");
        assert_eq!(target_of(&f, &[&[7]]), "");
        assert_eq!(target_of(&[1, 0, 0, 0, 0, 10, 1, 65], &[&[1]]), "");
    }
}
