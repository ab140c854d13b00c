//! `WatchRun`: a run's events from a sequence number on, then live. Per-run
//! sequence numbers are assigned under the run's row lock, so they are
//! gapless and in commit order: "everything after N" is exact.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use devcycle::proto::scheduler::v1 as pb;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::hub::Hub;
use crate::store::SchedulerStore;
use crate::wire;

pub type RunEventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchRunResponse, Status>> + Send>>;

const BATCH: usize = 256;
/// Re-read even without a notification, in case one was missed.
const SAFETY_POLL: Duration = Duration::from_secs(5);

/// Streams `run_id`'s events after `after`, ending after the run's terminal
/// event (at once if the caller has already seen it).
pub fn follow(
    store: Arc<dyn SchedulerStore>,
    hub: Arc<Hub>,
    run_id: String,
    mut after: i64,
    shutdown: CancellationToken,
) -> RunEventStream {
    let (tx, rx) = mpsc::channel(BATCH);
    tokio::spawn(async move {
        let (mut local, mut remote) = hub.watch_run(&run_id);
        'follow: loop {
            local.borrow_and_update();
            remote.borrow_and_update();
            let events = match store.run_events(&run_id, after, BATCH).await {
                Ok(e) => e,
                Err(e) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                    break;
                }
            };
            let full = events.len() == BATCH;
            for e in events {
                after = e.seq;
                let ends = e.kind.ends_run();
                if tx
                    .send(Ok(pb::WatchRunResponse {
                        event: Some(wire::event(&e)),
                    }))
                    .await
                    .is_err()
                {
                    break 'follow;
                }
                if ends {
                    break 'follow;
                }
            }
            if full {
                continue;
            }
            if after > 0 && ended(store.as_ref(), &run_id, after).await {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
                _ = local.changed() => {}
                _ = remote.changed() => {}
                _ = tokio::time::sleep(SAFETY_POLL) => {}
            }
        }
        drop((local, remote));
        hub.unwatch_run(&run_id);
    });
    Box::pin(ReceiverStream::new(rx))
}

/// The run is terminal and its last event is at or before `seen`.
async fn ended(store: &dyn SchedulerStore, run_id: &str, seen: i64) -> bool {
    matches!(store.get_run(run_id).await, Ok(Some((run, _))) if run.state.is_terminal() && run.last_seq <= seen)
}
