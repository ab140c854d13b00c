//! The worker protocol: an executor, identified by its mTLS identity, says
//! hello, grants credits, and receives leased tasks against them; results,
//! heartbeats, progress and logs flow back. A stream that breaks releases
//! nothing: its leases expire by time, or are reconciled when the worker
//! connects again (see `WorkerHello.held`). A stream silent for
//! [`SILENT_INTERVALS`] heartbeat intervals is taken for dead (a stopped or
//! unreachable worker keeps its TCP connection open) and loses its credits.

use std::pin::Pin;
use std::time::Duration;

use devcycle::authz::Caller;
use devcycle::identity::Kind;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::time::{from_timestamp, now_ms};
use devcycle::validate::{self, FieldError};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::engine::{Cmd, Engine, WorkerConn};
use crate::error::{Error, Result};
use crate::model::{Lease, LogRow, Outcome, TaskError};

pub type WorkStream = Pin<Box<dyn Stream<Item = Result<pb::WorkResponse, Status>> + Send>>;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Workers send at least a heartbeat every interval.
const SILENT_INTERVALS: u32 = 3;
const MAX_LINE_BYTES: usize = 4096;

/// Takes a worker's hello and serves its stream. The gRPC boundary: the
/// scheduler's errors become statuses here, and a transport's status is
/// passed on as it is.
pub async fn accept(
    engine: &Engine,
    caller: Caller,
    mut inbound: Streaming<pb::WorkRequest>,
    heartbeat_interval: Duration,
    shutdown: CancellationToken,
) -> Result<WorkStream, Status> {
    if caller.peer.kind() != Kind::Worker {
        return Err(Error::PermissionDenied(format!(
            "{} is not a worker identity; Work needs spiffe://<td>/worker/<id>",
            caller.peer
        ))
        .into());
    }
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Error::DeadlineExceeded("no hello within 10 s".into()))?
        // A broken transport's own status is passed on as it is.
        ?;
    let hello = hello(&caller, first)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(Ok(pb::WorkResponse {
        msg: Some(pb::work_response::Msg::Welcome(pb::WorkerWelcome {
            heartbeat_interval_ms: heartbeat_interval.as_millis() as u32,
        })),
    }));
    let held = hello
        .held
        .into_iter()
        .map(|l| lease("hello.held", Some(l)))
        .collect::<Result<Vec<_>>>()?;
    let conn = engine.new_conn_id();
    tracing::info!(worker_id = %hello.worker_id, held = held.len(), session = hello.session, "worker connected");
    engine.send(Cmd::Connect(WorkerConn {
        conn,
        worker_id: hello.worker_id.clone(),
        agents: hello.agents,
        held,
        session: hello.session.max(1),
        tx: tx.clone(),
    }))?;
    let engine = engine.clone();
    let silence = heartbeat_interval * SILENT_INTERVALS;
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = tokio::time::timeout(silence, inbound.message()) => m,
            };
            let msg = match msg {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    tracing::debug!(worker_id = %hello.worker_id, error = %e, "worker stream broke");
                    break;
                }
                Err(_) => {
                    tracing::warn!(worker_id = %hello.worker_id, silent_ms = silence.as_millis() as u64, "worker silent; closing its stream");
                    let _ = tx.send(Err(Error::WorkerSilent {
                        silent_ms: silence.as_millis(),
                        heartbeat_ms: heartbeat_interval.as_millis(),
                    }));
                    break;
                }
            };
            match handle(&engine, conn, msg) {
                Ok(()) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        }
        let _ = engine.send(Cmd::Disconnect { conn });
        tracing::info!(worker_id = %hello.worker_id, "worker disconnected");
    });
    Ok(Box::pin(
        UnboundedReceiverStream::new(rx).map(|item| item.map_err(Status::from)),
    ))
}

/// The stream's first message: a hello from the worker the caller is.
fn hello(caller: &Caller, first: Option<pb::WorkRequest>) -> Result<pb::WorkerHello> {
    let Some(pb::WorkRequest {
        msg: Some(pb::work_request::Msg::Hello(hello)),
    }) = first
    else {
        return Err(FieldError::new("hello", "the first message must be hello").into());
    };
    if hello.worker_id != caller.peer.name() {
        return Err(Error::PermissionDenied(format!(
            "hello.worker_id: {:?} is not your identity {}",
            hello.worker_id, caller.peer
        )));
    }
    for (i, a) in hello.agents.iter().enumerate() {
        validate::dns_label(&format!("hello.agents[{i}]"), a)?;
    }
    Ok(hello)
}

fn lease(field: &str, l: Option<pb::LeaseRef>) -> Result<Lease> {
    let l = validate::present(field, l)?;
    if l.task_id.is_empty() || l.lease_id.is_empty() || l.attempt == 0 {
        return Err(FieldError::new(field, "task_id, attempt and lease_id are required").into());
    }
    // Ids are ours (UUIDs); anything longer or with a NUL cannot name a
    // lease, and must not reach a batch where the database would refuse it.
    for (name, v) in [("task_id", &l.task_id), ("lease_id", &l.lease_id)] {
        validate::max_bytes(&format!("{field}.{name}"), v, 64)?;
    }
    Ok(Lease {
        task_id: l.task_id,
        attempt: l.attempt,
        lease_id: l.lease_id,
    })
}

fn handle(engine: &Engine, conn: u64, msg: pb::WorkRequest) -> Result<()> {
    use pb::work_request::Msg;
    let cmd = match msg.msg {
        None => return Err(FieldError::new("msg", "is required").into()),
        Some(Msg::Hello(_)) => {
            return Err(FieldError::new("hello", "only the first message may be hello").into());
        }
        Some(Msg::Credit(c)) => Cmd::Credit { conn, n: c.credits },
        Some(Msg::Heartbeat(h)) => Cmd::Heartbeat {
            conn,
            leases: h
                .leases
                .into_iter()
                .map(|l| lease("heartbeat.leases", Some(l)))
                .collect::<Result<_, _>>()?,
        },
        Some(Msg::Progress(p)) => Cmd::Progress {
            conn,
            lease: lease("progress.lease", p.lease)?,
            percent: p.percent,
            message: truncate(p.message, 1024),
        },
        Some(Msg::Logs(l)) => Cmd::Logs {
            conn,
            lease: lease("logs.lease", l.lease)?,
            lines: l
                .lines
                .into_iter()
                .map(|line| LogRow {
                    task_id: String::new(),
                    attempt: 0,
                    time: from_timestamp(line.time.as_ref()).unwrap_or_else(now_ms),
                    stream: match line.stream.as_str() {
                        "stdout" | "stderr" | "executor" => line.stream,
                        _ => "executor".into(),
                    },
                    line: truncate(line.line, MAX_LINE_BYTES),
                })
                .collect(),
        },
        Some(Msg::Result(r)) => {
            use pb::task_result::Outcome as O;
            let outcome = match r.outcome {
                Some(O::Output(output)) => Outcome::Success { output },
                Some(O::Error(e)) => Outcome::Failure(TaskError {
                    kind: if e.kind.is_empty() {
                        "error".into()
                    } else {
                        truncate(e.kind, 64)
                    },
                    message: truncate(e.message, 8192),
                    retryable: e.retryable,
                }),
                None => {
                    return Err(
                        FieldError::new("result.outcome", "output or error is required").into(),
                    );
                }
            };
            Cmd::Result {
                conn,
                lease: lease("result.lease", r.lease)?,
                outcome,
            }
        }
        Some(Msg::Release(l)) => Cmd::Release {
            conn,
            lease: lease("release", Some(l))?,
        },
    };
    engine.send(cmd)
}

/// Free text from a worker, made storable: at most `max` bytes, NUL bytes
/// replaced (one in a batch would make PostgreSQL refuse the whole batch).
fn truncate(mut s: String, max: usize) -> String {
    if s.contains('\0') {
        s = s.replace('\0', "\u{FFFD}");
    }
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn worker_text_is_bounded_and_storable() {
        assert_eq!(super::truncate("a\0b".into(), 16), "a\u{FFFD}b");
        assert_eq!(super::truncate("héllo".into(), 2), "h");
    }
}
