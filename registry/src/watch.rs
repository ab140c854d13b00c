//! `Watch`: replay from a revision, then follow new commits. Revisions are
//! gapless and in commit order (see `store`), so "everything above the last
//! revision sent" is exactly what a resuming client has not seen.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use devcycle::proto::registry::v1 as pb;
use devcycle::validate::{self, FieldError};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::{Error, Result};
use crate::store::RegistryStore;

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

const BATCH: usize = 256;
/// Re-poll even without a notification, in case one was lost.
const SAFETY_POLL: Duration = Duration::from_secs(5);

pub async fn start(
    store: Arc<dyn RegistryStore>,
    req: pb::WatchRequest,
    shutdown: CancellationToken,
) -> Result<WatchStream> {
    let head = store.head_revision().await?;
    let after = match req.after_revision {
        None => head,
        Some(n) if n < 0 => {
            return Err(FieldError::new("after_revision", "must not be negative").into());
        }
        Some(n) if n > head => {
            return Err(Error::FailedPrecondition(format!(
                "after_revision: {n} is ahead of this registry's head revision {head}"
            )));
        }
        Some(n) => n,
    };
    if !req.agent.is_empty() {
        validate::dns_label("agent", &req.agent)?;
    }
    let agent = (!req.agent.is_empty()).then_some(req.agent);
    let (tx, rx) = mpsc::channel(BATCH);
    tokio::spawn(follow(store, agent, after, tx, shutdown));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

async fn follow(
    store: Arc<dyn RegistryStore>,
    agent: Option<String>,
    mut after: i64,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    shutdown: CancellationToken,
) {
    let mut revisions = store.revisions();
    loop {
        revisions.borrow_and_update();
        let events = match store.events_after(after, agent.as_deref(), BATCH).await {
            Ok(e) => e,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let full = events.len() == BATCH;
        for e in events {
            after = e.revision;
            let msg = pb::WatchResponse {
                event: Some(e.into()),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = revisions.changed() => {}
            _ = tokio::time::sleep(SAFETY_POLL) => {}
        }
    }
}
