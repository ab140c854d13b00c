//! What schedulers sharing a database tell each other when a batch commits,
//! beyond "tasks are claimable" and "events were written": cancellations
//! for workers that may be connected to another scheduler, and which
//! scheduler a worker's newest stream is on. On PostgreSQL these ride on
//! `NOTIFY` (delivered on commit, in commit order); a notification payload
//! holds at most 8,000 bytes, so notices are packed into payloads below
//! that.

use serde::{Deserialize, Serialize};

use crate::machine::CancelNotice;
use crate::model::Lease;

/// Payloads stay below PostgreSQL's limit with room for the sender's tag.
const MAX_PAYLOAD: usize = 7000;
/// Reasons are for people; long ones are cut.
const MAX_REASON: usize = 256;

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Notices {
    /// (worker id, task id, attempt, lease id, reason)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub c: Vec<(String, String, u32, String, String)>,
    /// (worker id, session)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub w: Vec<(String, u64)>,
}

impl Notices {
    pub fn cancels(&self) -> Vec<CancelNotice> {
        self.c
            .iter()
            .map(|(w, t, a, l, r)| CancelNotice {
                worker_id: w.clone(),
                lease: Lease {
                    task_id: t.clone(),
                    attempt: *a,
                    lease_id: l.clone(),
                },
                reason: r.clone(),
            })
            .collect()
    }
}

/// A worker opened stream `session` here.
pub fn worker(worker_id: &str, session: u64) -> String {
    json(&Notices {
        w: vec![(worker_id.to_owned(), session)],
        ..Default::default()
    })
}

/// Cancellations, packed into as few payloads as fit.
pub fn cancels(notices: &[CancelNotice]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = Notices::default();
    let mut size = 0;
    for c in notices {
        let mut reason = c.reason.clone();
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        let item = (
            c.worker_id.clone(),
            c.lease.task_id.clone(),
            c.lease.attempt,
            c.lease.lease_id.clone(),
            reason,
        );
        let len = json(&item).len() + 1;
        if size + len > MAX_PAYLOAD && !cur.c.is_empty() {
            out.push(json(&std::mem::take(&mut cur)));
            size = 0;
        }
        size += len;
        cur.c.push(item);
    }
    if !cur.c.is_empty() {
        out.push(json(&cur));
    }
    out
}

pub fn parse(payload: &str) -> Option<Notices> {
    serde_json::from_str(payload).ok()
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("notices always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_cancels_fit_in_payloads_and_round_trip() {
        let notices: Vec<CancelNotice> = (0..500)
            .map(|i| CancelNotice {
                worker_id: format!("worker-{i}"),
                lease: Lease {
                    task_id: format!("{i:036}"),
                    attempt: 2,
                    lease_id: format!("{i:032x}"),
                },
                reason: "é".repeat(400),
            })
            .collect();
        let payloads = cancels(&notices);
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD + 400, "{}", p.len());
            back.extend(parse(p).unwrap().cancels());
        }
        assert_eq!(back.len(), 500);
        assert_eq!(back[7].lease, notices[7].lease);
        assert!(back[7].reason.len() <= MAX_REASON);
        assert_eq!(parse(&worker("w1", 3)).unwrap().w, vec![("w1".into(), 3)]);
    }
}
