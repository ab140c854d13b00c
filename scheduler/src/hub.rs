//! Who is waiting for what: callers waiting for a run to end (`wait`),
//! `WatchRun` streams following a run's events, and the outbox relay. The
//! engine announces after each commit; a PostgreSQL listener announces
//! other schedulers' commits.

use std::sync::Arc;

use hashbrown::HashMap;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot, watch};

use crate::model::{RunRow, TaskRow};

pub type Finished = Arc<(RunRow, Vec<TaskRow>)>;

#[derive(Default)]
pub struct Hub {
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<Finished>>>>,
    watchers: Mutex<HashMap<String, watch::Sender<i64>>>,
    /// Bumped when some run changed that we cannot name (another scheduler).
    any_change: watch::Sender<u64>,
    /// New events to publish.
    pub outbox: Notify,
    /// Another scheduler made tasks claimable.
    pub remote_ready: Notify,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Resolves when `run_id` ends, with the run as it ended.
    pub fn wait_for(&self, run_id: &str) -> oneshot::Receiver<Finished> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .entry(run_id.to_owned())
            .or_default()
            .push(tx);
        rx
    }

    /// Drops waiters that gave up (timed out).
    pub fn forget_waiters(&self, run_id: &str) {
        let mut w = self.waiters.lock();
        if let Some(list) = w.get_mut(run_id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                w.remove(run_id);
            }
        }
    }

    /// Runs someone waits for.
    pub fn waited_runs(&self) -> Vec<String> {
        self.waiters.lock().keys().cloned().collect()
    }

    /// Changes each time another scheduler changed something.
    pub fn remote_changes(&self) -> watch::Receiver<u64> {
        self.any_change.subscribe()
    }

    pub fn finished(&self, run: Finished) {
        let waiters = self.waiters.lock().remove(&run.0.id);
        for tx in waiters.into_iter().flatten() {
            let _ = tx.send(Arc::clone(&run));
        }
    }

    /// Changes when the run's last event sequence moves (locally known) or
    /// when another scheduler changed something.
    pub fn watch_run(&self, run_id: &str) -> (watch::Receiver<i64>, watch::Receiver<u64>) {
        let rx = self
            .watchers
            .lock()
            .entry(run_id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        (rx, self.any_change.subscribe())
    }

    pub fn unwatch_run(&self, run_id: &str) {
        let mut w = self.watchers.lock();
        if w.get(run_id).is_some_and(|tx| tx.receiver_count() == 0) {
            w.remove(run_id);
        }
    }

    /// A run's events up to `seq` are committed.
    pub fn events(&self, run_id: &str, seq: i64) {
        if let Some(tx) = self.watchers.lock().get(run_id) {
            tx.send_if_modified(|cur| {
                let moved = seq > *cur;
                *cur = (*cur).max(seq);
                moved
            });
        }
    }

    pub fn remote_change(&self) {
        self.any_change.send_modify(|n| *n += 1);
        self.outbox.notify_one();
    }
}

/// Wakes callers waiting for runs that another scheduler finished: each
/// time another scheduler commits, the waited runs that have ended are
/// read and handed to their waiters. Notifications coalesce, so a burst of
/// commits costs one lookup.
pub fn wake_remote_waiters(
    hub: Arc<Hub>,
    store: Arc<dyn crate::store::SchedulerStore>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        let mut changes = hub.remote_changes();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = changes.changed() => if r.is_err() { return },
            }
            let ids = hub.waited_runs();
            if ids.is_empty() {
                continue;
            }
            let ended = match store.ended_runs(&ids).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the runs callers wait for");
                    continue;
                }
            };
            for id in ended {
                if let Ok(Some(run)) = store.get_run(&id).await {
                    hub.finished(Arc::new(run));
                }
            }
        }
    });
}
