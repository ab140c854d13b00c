//! Leases: matching, idempotent submits, fencing, heartbeats and who may
//! use a lease.

use std::sync::Arc;

use devcycle_scheduler::machine::Reject;
use devcycle_scheduler::model::*;
use devcycle_scheduler::store::{Batch, Claim, Op, OpResult};

use crate::T0;
use crate::common::*;

pub async fn sync_match_and_events(s: Store) {
    let sub = run(vec![T::new("only")], None, FailurePolicy::FailFast, T0);
    let run_id = sub.run.id.clone();
    let a = submit_claim(&s, T0, vec![sub], "w1", 4).await;
    assert_eq!(a.submitted, vec![(run_id.clone(), true)]);
    assert_eq!(a.leased.len(), 1, "handed straight to the waiting worker");
    let t = &a.leased[0];
    assert_eq!(
        (t.state, t.attempt, t.worker_id.as_str()),
        (TaskState::Leased, 1, "w1")
    );
    assert_eq!(
        complete(&s, T0 + 5, t, r#"{"ok":true}"#).await,
        OpResult::Done
    );
    assert_eq!(run_state(&s, &run_id).await, RunState::Succeeded);
    let events = s.run_events(&run_id, 0, 100).await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(
        kinds(&s, &run_id).await,
        [
            EventKind::RunStarted,
            EventKind::TaskLeased,
            EventKind::TaskSucceeded,
            EventKind::RunSucceeded
        ]
    );
    let (run, tasks) = s.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.last_seq, 4);
    assert_eq!(tasks[0].output.as_deref(), Some(r#"{"ok":true}"#));
    assert_eq!(
        s.agent_spec("noop", "1.0.0").await.unwrap(),
        Some(vec![1, 2, 3])
    );
}

pub async fn idempotent_submit_under_concurrent_callers(s: Store) {
    let mut callers = Vec::new();
    for _ in 0..16 {
        let s = Arc::clone(&s);
        callers.push(tokio::spawn(async move {
            let sub = run(
                vec![T::new("t")],
                Some("same-key"),
                FailurePolicy::FailFast,
                T0,
            );
            s.apply(Batch {
                now: T0,
                submits: vec![sub],
                ..Default::default()
            })
            .await
            .unwrap()
            .submitted[0]
                .clone()
        }));
    }
    let mut results = Vec::new();
    for c in callers {
        results.push(c.await.unwrap());
    }
    assert_eq!(
        results.iter().filter(|(_, created)| *created).count(),
        1,
        "exactly one run created"
    );
    let first = &results[0].0;
    assert!(
        results.iter().all(|(id, _)| id == first),
        "every caller got the same run"
    );
    assert_eq!(
        s.run_by_key("user/test", "same-key")
            .await
            .unwrap()
            .as_deref(),
        Some(first.as_str())
    );
    let all = s.list_runs(&RunFilter::default(), 100).await.unwrap();
    assert_eq!(all.len(), 1);
    // Two submits with one key in the same batch.
    let a = run(vec![T::new("t")], Some("k2"), FailurePolicy::FailFast, T0);
    let b = run(vec![T::new("t")], Some("k2"), FailurePolicy::FailFast, T0);
    let out = s
        .apply(Batch {
            now: T0,
            submits: vec![a, b],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(out.submitted[0].1 && !out.submitted[1].1);
    assert_eq!(out.submitted[0].0, out.submitted[1].0);
    // Keys are per submitter: another user's "k2" is another run, in the
    // same batch and after it.
    let mut c = run(vec![T::new("t")], Some("k2"), FailurePolicy::FailFast, T0);
    c.run.created_by = "user/other".into();
    let mut d = c.clone();
    d.run.id = uuid::Uuid::now_v7().to_string();
    let mine = run(vec![T::new("t")], Some("k2"), FailurePolicy::FailFast, T0);
    let out = s
        .apply(Batch {
            now: T0,
            submits: vec![c, mine, d],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(out.submitted[0].1, "another submitter's key is free");
    assert_eq!(out.submitted[1], (first_k2(&s).await, false));
    assert_eq!(out.submitted[2], (out.submitted[0].0.clone(), false));
}

async fn first_k2(s: &Store) -> String {
    s.run_by_key("user/test", "k2").await.unwrap().unwrap()
}

pub async fn priority_then_age(s: Store) {
    let mut keys = Vec::new();
    for (i, p) in [0, 5, 0, 9].into_iter().enumerate() {
        let sub = run(
            vec![T::new("t").priority(p)],
            None,
            FailurePolicy::FailFast,
            T0 + i as i64,
        );
        keys.push((sub.tasks[0].id.clone(), p, i));
        submit(&s, sub, T0 + i as i64).await;
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        let leased = claims(&s, T0 + 100, vec![claim("w", 1)]).await;
        assert_eq!(leased.len(), 1);
        got.push(leased[0].id.clone());
    }
    let expect: Vec<String> = [3, 1, 0, 2].iter().map(|i| keys[*i].0.clone()).collect();
    assert_eq!(got, expect, "priority first, then the oldest");
    assert!(claims(&s, T0 + 100, vec![claim("w", 1)]).await.is_empty());
}

/// A worker serving a list of agents gets the best tasks of those agents,
/// in the queue's order, however many tasks other agents have waiting.
pub async fn agent_lists_claim_their_own_queues(s: Store) {
    let mut ids = Vec::new();
    let tasks = [("a", 0), ("b", 5), ("c", 9), ("a", 5), ("b", 0), ("c", 9)];
    for (i, (agent, p)) in tasks.into_iter().enumerate() {
        let now = T0 + i as i64;
        let sub = run(
            vec![T::new("t").agent(agent).priority(p)],
            None,
            FailurePolicy::FailFast,
            now,
        );
        ids.push(sub.tasks[0].id.clone());
        submit(&s, sub, now).await;
    }
    let of = |agents: &[&str]| Claim {
        agents: agents.iter().map(|a| a.to_string()).collect(),
        ..claim("w", 1)
    };
    let mut got = Vec::new();
    for _ in 0..4 {
        let leased = claims(&s, T0 + 100, vec![of(&["b", "a", "b"])]).await;
        assert_eq!(leased.len(), 1);
        got.push(leased[0].id.clone());
    }
    let expect: Vec<String> = [1, 3, 0, 4].iter().map(|i| ids[*i].clone()).collect();
    assert_eq!(
        got, expect,
        "b and a merged: priority first, then the oldest"
    );
    assert!(claims(&s, T0 + 100, vec![of(&["a", "b"])]).await.is_empty());
    let rest = claims(&s, T0 + 100, vec![claim("any", 4)]).await;
    let rest: Vec<&str> = rest.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        rest,
        [ids[2].as_str(), ids[5].as_str()],
        "c's tasks wait for any worker"
    );
}

pub async fn stale_results_are_fenced(s: Store) {
    let sub = run(
        vec![T::new("t").heartbeat(1000)],
        None,
        FailurePolicy::FailFast,
        T0,
    );
    submit(&s, sub, T0).await;
    let first = claims(&s, T0, vec![claim("w1", 1)]).await.remove(0);
    // The lease expires; the task is retried by another worker.
    sweep(&s, T0 + 2000).await;
    let again = claims(&s, T0 + 10_000, vec![claim("w2", 1)])
        .await
        .remove(0);
    assert_eq!(again.attempt, 2);
    assert_ne!(again.lease_id, first.lease_id);
    // A retry stays in the submit's trace.
    assert_eq!(again.traceparent, TRACEPARENT);
    // The first worker's late result changes nothing.
    match complete(&s, T0 + 10_001, &first, "{}").await {
        OpResult::Rejected(Reject::Stale(_)) => {}
        other => panic!("stale result accepted: {other:?}"),
    }
    let mut forged = again.clone();
    forged.lease_id = "forged".into();
    assert!(matches!(
        complete(&s, T0 + 10_002, &forged, "{}").await,
        OpResult::Rejected(Reject::Stale(_))
    ));
    assert_eq!(
        complete(&s, T0 + 10_003, &again, r#"{"n":2}"#).await,
        OpResult::Done
    );
    // Recorded once: a repeat of the accepted result is rejected.
    assert!(matches!(
        complete(&s, T0 + 10_004, &again, r#"{"n":3}"#).await,
        OpResult::Rejected(_)
    ));
    let t = task(&s, &again.id).await;
    assert_eq!(
        (t.state, t.output.as_deref()),
        (TaskState::Succeeded, Some(r#"{"n":2}"#))
    );
}

pub async fn heartbeats_and_release(s: Store) {
    submit(
        &s,
        run(
            vec![T::new("t").heartbeat(1000)],
            None,
            FailurePolicy::FailFast,
            T0,
        ),
        T0,
    )
    .await;
    let t = claims(&s, T0, vec![claim("w", 1)]).await.remove(0);
    assert_eq!(t.lease_expires, T0 + 1000);
    assert_eq!(
        op(
            &s,
            T0 + 900,
            Op::Heartbeat {
                lease: lease_of(&t)
            }
        )
        .await,
        OpResult::Extended(T0 + 1900)
    );
    sweep(&s, T0 + 1500).await;
    assert_eq!(
        task(&s, &t.id).await.state,
        TaskState::Leased,
        "the heartbeat kept it"
    );
    let mut stale = t.clone();
    stale.attempt = 7;
    assert!(matches!(
        op(
            &s,
            T0 + 1600,
            Op::Heartbeat {
                lease: lease_of(&stale)
            }
        )
        .await,
        OpResult::Rejected(_)
    ));
    assert_eq!(
        op(
            &s,
            T0 + 1700,
            Op::Release {
                lease: lease_of(&t),
                undelivered: false,
            }
        )
        .await,
        OpResult::Done
    );
    let back = task(&s, &t.id).await;
    assert_eq!(
        (back.state, back.attempt),
        (TaskState::Ready, 0),
        "a release costs no attempt"
    );
    let again = claims(&s, T0 + 1800, vec![claim("w2", 1)]).await.remove(0);
    assert_eq!(again.attempt, 1);
}

/// A reconnecting worker lists what it holds: its other leases never
/// reached it (same process) and go back unspent, or were lost with its
/// previous process and count as failed attempts.
pub async fn unheld_leases_return_or_fail(s: Store) {
    let sub = run(
        vec![T::new("x"), T::new("y"), T::new("z")],
        None,
        FailurePolicy::Continue,
        T0,
    );
    submit(&s, sub, T0).await;
    let leased = claims(&s, T0, vec![claim("w", 3)]).await;
    assert_eq!(leased.len(), 3);
    let reconcile = |held: Vec<Lease>, resumed| Op::Reconcile {
        worker_id: "w".into(),
        held,
        resumed,
    };
    let kept = op(&s, T0 + 1, reconcile(vec![lease_of(&leased[0])], true)).await;
    let OpResult::Held(kept) = kept else {
        panic!("{kept:?}")
    };
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].lease, lease_of(&leased[0]));
    assert_eq!(kept[0].run_id, leased[0].run_id);
    for t in &leased[1..] {
        let back = task(&s, &t.id).await;
        assert_eq!((back.state, back.attempt), (TaskState::Ready, 0), "unspent");
    }
    // Another worker's claim of a lease is no claim at all.
    let other = Op::Reconcile {
        worker_id: "intruder".into(),
        held: vec![lease_of(&leased[0])],
        resumed: true,
    };
    assert_eq!(op(&s, T0 + 2, other).await, OpResult::Held(vec![]));
    // The worker's process restarted: what it held is lost.
    let again = claims(&s, T0 + 3, vec![claim("w", 3)]).await;
    assert_eq!(again.len(), 2);
    op(&s, T0 + 4, reconcile(vec![], false)).await;
    for t in leased.iter() {
        let lost = task(&s, &t.id).await;
        assert_eq!(lost.state, TaskState::Failed, "{}", t.key);
        assert_eq!(lost.attempt, 1);
        assert_eq!(lost.error.unwrap().kind, "worker_lost");
    }
    // A lease that could not be delivered goes back unspent too.
    let t = claims(&s, T0 + 5_000, vec![claim("w", 1)]).await.remove(0);
    let released = op(
        &s,
        T0 + 5_001,
        Op::Release {
            lease: lease_of(&t),
            undelivered: true,
        },
    )
    .await;
    assert_eq!(released, OpResult::Done);
    let back = task(&s, &t.id).await;
    assert_eq!((back.state, back.attempt), (TaskState::Ready, 1));
}

/// A lease id is a capability only in the hands of the worker it was given
/// to: another worker that learns it cannot complete or extend the task.
pub async fn a_lease_is_trusted_only_from_its_worker(s: Store) {
    let sub = run(vec![T::new("t")], None, FailurePolicy::FailFast, T0);
    submit(&s, sub, T0).await;
    let t = claims(&s, T0, vec![claim("w", 1)]).await.remove(0);
    let from = |worker: &str, op: Op| Op::Worker {
        worker_id: worker.into(),
        op: Box::new(op),
    };
    let done = || Op::Complete {
        lease: lease_of(&t),
        outcome: Outcome::Success {
            output: r#"{"by":"intruder"}"#.into(),
        },
    };
    let r = op(&s, T0 + 1, from("intruder", done())).await;
    assert!(matches!(r, OpResult::Rejected(Reject::Stale(_))), "{r:?}");
    let hb = Op::Heartbeat {
        lease: lease_of(&t),
    };
    let r = op(&s, T0 + 1, from("intruder", hb.clone())).await;
    assert!(matches!(r, OpResult::Rejected(_)), "{r:?}");
    assert_eq!(task(&s, &t.id).await.state, TaskState::Leased);
    assert!(matches!(
        op(&s, T0 + 2, from("w", hb)).await,
        OpResult::Extended(_)
    ));
    assert_eq!(op(&s, T0 + 3, from("w", done())).await, OpResult::Done);
}
