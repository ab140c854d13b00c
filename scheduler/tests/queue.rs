//! The queue under contention and under random interleavings.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use devcycle_scheduler::model::*;
use devcycle_scheduler::store::{Batch, Op, OpResult, Submit};
use proptest::prelude::*;

/// 100 claimers, each its own store (as if its own scheduler), race over
/// 10,000 tasks on one PostgreSQL: every (task, attempt) is claimed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_claimers_never_share_a_task() {
    let url = devcycle::testkit::fresh_postgres().await;
    devcycle::db::Database::open(&url).await.unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(40)
        .connect(&url)
        .await
        .unwrap();
    let setup: Store = Arc::new(devcycle_scheduler::store::pg::PgStore::new(
        pool.clone(),
        "setup".into(),
        true,
    ));
    const TASKS: usize = 10_000;
    for chunk in 0..(TASKS / 500) {
        let submits: Vec<Submit> = (0..500)
            .map(|i| {
                run(
                    vec![T::new("t")],
                    None,
                    FailurePolicy::FailFast,
                    1000 + (chunk * 500 + i) as i64,
                )
            })
            .collect();
        setup
            .apply(Batch {
                now: 1_000_000,
                submits,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut claimers = Vec::new();
    for c in 0..100 {
        let store: Store = Arc::new(devcycle_scheduler::store::pg::PgStore::new(
            pool.clone(),
            format!("c{c}"),
            true,
        ));
        claimers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut empty = 0;
            while empty < 3 {
                let leased = claims(&store, 2_000_000, vec![claim(&format!("w{c}"), 25)]).await;
                if leased.is_empty() {
                    empty += 1;
                    tokio::task::yield_now().await;
                } else {
                    empty = 0;
                }
                got.extend(leased.into_iter().map(|t| (t.id, t.attempt, t.worker_id)));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let unique: HashSet<(String, u32)> = all.iter().map(|(id, a, _)| (id.clone(), *a)).collect();
    assert_eq!(
        all.len(),
        unique.len(),
        "a (task, attempt) was claimed twice"
    );
    assert_eq!(unique.len(), TASKS, "every task claimed");
    let by_worker: HashSet<&String> = all.iter().map(|(_, _, w)| w).collect();
    assert!(by_worker.len() > 10, "the work was shared among claimers");
    let leased: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sched_tasks WHERE state = 'leased' AND attempt = 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leased as usize, TASKS);
}

#[derive(Debug, Clone)]
enum Step {
    Submit { tasks: usize },
    Claim { worker: u8, max: u8 },
    Heartbeat { pick: usize, stale: bool },
    Complete { pick: usize, ok: bool, stale: bool },
    Release { pick: usize },
    Advance { ms: u16 },
    Sweep,
    Cancel { pick: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (1usize..4).prop_map(|tasks| Step::Submit { tasks }),
        4 => (0u8..3, 1u8..4).prop_map(|(worker, max)| Step::Claim { worker, max }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, stale)| Step::Heartbeat { pick, stale }),
        4 => (any::<usize>(), any::<bool>(), prop::bool::weighted(0.35)).prop_map(|(pick, ok, stale)| Step::Complete { pick, ok, stale }),
        1 => any::<usize>().prop_map(|pick| Step::Release { pick }),
        2 => (1u16..3000).prop_map(|ms| Step::Advance { ms }),
        2 => Just(Step::Sweep),
        1 => any::<usize>().prop_map(|pick| Step::Cancel { pick }),
    ]
}

/// What the test believes about every lease it was given.
#[derive(Default)]
struct Model {
    now: i64,
    runs: Vec<String>,
    /// Every lease handed out, in order.
    leases: Vec<TaskRow>,
    /// (task, attempt) whose result was accepted.
    recorded: HashSet<(String, u32)>,
    tasks: HashSet<String>,
}

async fn play(store: Store, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut m = Model {
        now: 1_000_000,
        ..Default::default()
    };
    for s in steps {
        match s {
            Step::Submit { tasks } => {
                let ts = [T::new("a"), T::new("b").deps(&["a"]), T::new("c")];
                let chosen: Vec<T> = ts
                    .into_iter()
                    .take(tasks)
                    .map(|t| t.attempts(2).heartbeat(1500))
                    .collect();
                let sub = run(chosen, None, FailurePolicy::Continue, m.now);
                m.runs.push(sub.run.id.clone());
                m.tasks.extend(sub.tasks.iter().map(|t| t.id.clone()));
                submit(&store, sub, m.now).await;
            }
            Step::Claim { worker, max } => {
                let leased = claims(
                    &store,
                    m.now,
                    vec![claim(&format!("w{worker}"), max as u32)],
                )
                .await;
                for t in leased {
                    // Never two live leases: nothing else holds this task now.
                    let live_elsewhere = m
                        .leases
                        .iter()
                        .any(|l| l.id == t.id && l.attempt == t.attempt);
                    prop_assert!(
                        !live_elsewhere,
                        "attempt {} of {} leased twice",
                        t.attempt,
                        t.id
                    );
                    m.leases.push(t);
                }
            }
            Step::Heartbeat { pick, stale } => {
                let Some(l) = pick_lease(&m, pick) else {
                    continue;
                };
                let mut lease = lease_of(&l);
                if stale {
                    lease.lease_id = "stale".into();
                }
                let r = op(&store, m.now, Op::Heartbeat { lease }).await;
                if stale {
                    prop_assert!(
                        matches!(r, OpResult::Rejected(_)),
                        "a stale heartbeat was accepted"
                    );
                }
            }
            Step::Complete { pick, ok, stale } => {
                let Some(l) = pick_lease(&m, pick) else {
                    continue;
                };
                let mut lease = lease_of(&l);
                if stale {
                    lease.lease_id = "stale".into();
                }
                let outcome = if ok {
                    Outcome::Success {
                        output: "{}".into(),
                    }
                } else {
                    Outcome::Failure(TaskError {
                        kind: "x".into(),
                        message: "m".into(),
                        retryable: true,
                    })
                };
                let r = op(&store, m.now, Op::Complete { lease, outcome }).await;
                if r == OpResult::Done {
                    prop_assert!(!stale, "a result with a forged lease was accepted");
                    let latest = m
                        .leases
                        .iter()
                        .filter(|x| x.id == l.id)
                        .map(|x| x.attempt)
                        .max();
                    prop_assert_eq!(
                        latest,
                        Some(l.attempt),
                        "a superseded lease's result was accepted"
                    );
                    let first = m.recorded.insert((l.id.clone(), l.attempt));
                    prop_assert!(
                        first,
                        "the result of attempt {} of {} was recorded twice",
                        l.attempt,
                        l.id
                    );
                }
            }
            Step::Release { pick } => {
                let Some(l) = pick_lease(&m, pick) else {
                    continue;
                };
                if op(
                    &store,
                    m.now,
                    Op::Release {
                        lease: lease_of(&l),
                        undelivered: false,
                    },
                )
                .await
                    == OpResult::Done
                {
                    // The attempt number is handed out again.
                    m.leases
                        .retain(|x| !(x.id == l.id && x.attempt == l.attempt));
                }
            }
            Step::Advance { ms } => m.now += i64::from(ms),
            Step::Sweep => {
                sweep(&store, m.now).await;
            }
            Step::Cancel { pick } => {
                if m.runs.is_empty() {
                    continue;
                }
                let run_id = m.runs[pick % m.runs.len()].clone();
                op(
                    &store,
                    m.now,
                    Op::CancelRun {
                        run_id,
                        reason: String::new(),
                    },
                )
                .await;
            }
        }
    }
    // Drain: time passes, a well-behaved worker completes everything.
    for _ in 0..50 {
        m.now += 5_000;
        sweep(&store, m.now).await;
        let leased = claims(&store, m.now, vec![claim("drain", 100)]).await;
        for t in &leased {
            let r = complete(&store, m.now, t, "{}").await;
            prop_assert_eq!(r, OpResult::Done);
            prop_assert!(
                m.recorded.insert((t.id.clone(), t.attempt)),
                "recorded twice while draining"
            );
        }
    }
    for id in &m.tasks {
        let t = task(&store, id).await;
        prop_assert!(t.state.is_terminal(), "task {} ended {:?}", id, t.state);
    }
    for r in &m.runs {
        prop_assert!(run_state(&store, r).await.is_terminal());
    }
    // Per-run event sequences have no gaps.
    for r in &m.runs {
        let seqs: Vec<i64> = store
            .run_events(r, 0, 10_000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        let expect: Vec<i64> = (1..=seqs.len() as i64).collect();
        prop_assert_eq!(seqs, expect);
    }
    Ok(())
}

/// Mostly recent leases (the ones likely still live), sometimes any.
fn pick_lease(m: &Model, pick: usize) -> Option<TaskRow> {
    if m.leases.is_empty() {
        return None;
    }
    let n = m.leases.len();
    let i = if pick.is_multiple_of(3) {
        pick % n
    } else {
        n - 1 - (pick / 3) % n.min(4)
    };
    Some(m.leases[i].clone())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random interleavings of lease, heartbeat, complete, release, expire
    /// and cancel: never two live leases, no result recorded twice, every
    /// accepted task ends terminal, event sequences without gaps.
    #[test]
    fn state_machine_invariants(steps in prop::collection::vec(step(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (store, _dir) = sqlite().await;
            play(store, steps).await
        })?;
    }
}
