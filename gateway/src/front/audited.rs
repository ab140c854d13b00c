//! Audit rows of mutating calls, finished when the call's status is known:
//! from the response headers, its trailers, or CANCELLED when the response
//! body is dropped before either.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::Frame;
use tonic::body::Body;
use tonic::{Code, Status};

use crate::audit::Recorder;
use crate::store::AuditRow;

pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

pub fn finish_row(row: &mut AuditRow, code: Code) {
    use devcycle::proto::auth::v1::AuditOutcome;
    row.outcome = match code {
        Code::Ok => AuditOutcome::Ok,
        Code::PermissionDenied | Code::Unauthenticated | Code::ResourceExhausted => {
            AuditOutcome::Denied
        }
        _ => AuditOutcome::Error,
    } as i32;
    row.status_code = code_name(code).to_owned();
}

fn status_code(h: &HeaderMap) -> Option<Code> {
    h.get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// Records the call's outcome once its status is known: from the headers
/// of a trailers-only response, from the trailers, or CANCELLED if the
/// response is dropped before either.
pub fn audited(res: Response<Body>, recorder: Recorder, mut row: AuditRow) -> Response<Body> {
    if let Some(code) = status_code(res.headers()) {
        finish_row(&mut row, code);
        recorder.record(row);
        return res;
    }
    res.map(|inner| {
        Body::new(AuditBody {
            inner,
            pending: Some((recorder, row)),
        })
    })
}

struct AuditBody {
    inner: Body,
    pending: Option<(Recorder, AuditRow)>,
}

impl AuditBody {
    fn finish(&mut self, code: Code) {
        if let Some((recorder, mut row)) = self.pending.take() {
            finish_row(&mut row, code);
            recorder.record(row);
        }
    }
}

impl Drop for AuditBody {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

impl http_body::Body for AuditBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(code) = f.trailers_ref().and_then(status_code) {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(s))) => {
                let code = s.code();
                self.finish(code);
            }
            Poll::Ready(None) => self.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
