//! The SQLite store keeps the runs its batches leave unfinished, within a
//! memory bound, and forgets them when a batch fails.

mod common;

use common::*;
use devcycle_scheduler::model::*;
use devcycle_scheduler::store::cache::MAX_BYTES;
use devcycle_scheduler::store::{Batch, Op, OpResult, SchedulerStore};

const T0: i64 = 1_700_000_000_000;

#[tokio::test]
async fn unfinished_runs_are_kept_until_they_end() {
    let (s, _dir) = sqlite_store().await;
    let store: Store = s.clone();
    let sub = run(
        vec![T::new("a"), T::new("b")],
        None,
        FailurePolicy::Continue,
        T0,
    );
    let run_id = sub.run.id.clone();
    let a = submit_claim(&store, T0, vec![sub], "w1", 1).await;
    assert_eq!((a.leased.len(), s.kept_runs()), (1, 1));
    assert_eq!(
        complete(&store, T0 + 1, &a.leased[0], "{}").await,
        OpResult::Done
    );
    assert_eq!(s.kept_runs(), 1, "task b is still to run");
    // Claimed from the database's queue, loaded from what was kept.
    let b = claims(&store, T0 + 2, vec![claim("w1", 1)]).await;
    assert_eq!(b.len(), 1);
    assert_eq!(complete(&store, T0 + 3, &b[0], "{}").await, OpResult::Done);
    assert_eq!(run_state(&store, &run_id).await, RunState::Succeeded);
    assert_eq!(s.kept_runs(), 0, "a finished run is not kept");
}

#[tokio::test]
async fn kept_runs_are_bounded() {
    let (s, _dir) = sqlite_store().await;
    let store: Store = s.clone();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(1 << 20));
    let n = MAX_BYTES / (1 << 20) * 2;
    let submits = (0..n)
        .map(|_| {
            let mut sub = run(vec![T::new("only")], None, FailurePolicy::FailFast, T0);
            sub.tasks[0].input = big.clone();
            sub
        })
        .collect();
    let a = submit_claim(&store, T0, submits, "w1", n as u32).await;
    assert_eq!(a.leased.len(), n);
    let kept = s.kept_runs();
    assert!(kept > 0 && kept < n / 2 + 1, "{kept} of {n} runs kept");
    // Kept or not, every result is recorded.
    for t in &a.leased {
        assert_eq!(complete(&store, T0 + 1, t, "{}").await, OpResult::Done);
    }
    assert_eq!(s.kept_runs(), 0);
}

#[tokio::test]
async fn a_failed_batch_forgets_what_was_kept() {
    let (s, _dir) = sqlite_store().await;
    let store: Store = s.clone();
    let first = run(vec![T::new("a")], None, FailurePolicy::FailFast, T0);
    let second = run(vec![T::new("b")], None, FailurePolicy::FailFast, T0);
    let a = submit_claim(&store, T0, vec![first, second], "w1", 2).await;
    assert_eq!(s.kept_runs(), 2);
    let mut clash = run(vec![T::new("x")], None, FailurePolicy::FailFast, T0);
    clash.tasks[0].id = a.leased[1].id.clone();
    let failed = s
        .apply(Batch {
            now: T0 + 1,
            submits: vec![clash],
            ops: vec![Op::Heartbeat {
                lease: lease_of(&a.leased[0]),
            }],
            ..Default::default()
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(s.kept_runs(), 0);
    for t in &a.leased {
        assert_eq!(complete(&store, T0 + 2, t, "{}").await, OpResult::Done);
    }
}
