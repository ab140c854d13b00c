//! Timers and limits: lease expiry, schedule-to-start deadlines,
//! concurrency keys and rate limits.

use devcycle_scheduler::model::*;
use devcycle_scheduler::store::{Batch, Op, OpResult};

use crate::T0;
use crate::common::*;

pub async fn expiry_retries_then_dead_letters(s: Store) {
    let sub = run(
        vec![T::new("t").attempts(3)],
        None,
        FailurePolicy::FailFast,
        T0,
    );
    let run_id = sub.run.id.clone();
    submit(&s, sub, T0).await;
    let mut now = T0;
    let mut delays = Vec::new();
    for attempt in 1..=3u32 {
        let t = claims(&s, now, vec![claim("w", 1)]).await.remove(0);
        assert_eq!(t.attempt, attempt);
        assert_eq!(fail(&s, now, &t, "flaky").await, OpResult::Done);
        let after = task(&s, &t.id).await;
        if attempt < 3 {
            assert_eq!(after.state, TaskState::Failed);
            let delay = after.ready_at - now;
            delays.push(delay);
            // Not claimable before its backoff.
            assert!(
                claims(&s, now + delay - 1, vec![claim("w", 1)])
                    .await
                    .is_empty()
            );
            now = after.ready_at;
        } else {
            assert_eq!(after.state, TaskState::Dead);
            assert_eq!(after.error.as_ref().unwrap().kind, "flaky");
        }
    }
    // initial 100 ms, x2, +-20% jitter
    assert!(
        (80..=120).contains(&delays[0]) && (160..=240).contains(&delays[1]),
        "{delays:?}"
    );
    assert_eq!(run_state(&s, &run_id).await, RunState::Failed);
    let dead = s
        .list_tasks(
            &TaskFilter {
                state: Some(TaskState::Dead),
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    // Requeue: a fresh attempt budget, the run runs again.
    assert_eq!(
        op(
            &s,
            now,
            Op::Retry {
                task_id: dead[0].id.clone()
            }
        )
        .await,
        OpResult::Done
    );
    assert_eq!(run_state(&s, &run_id).await, RunState::Running);
    let t = claims(&s, now, vec![claim("w", 1)]).await.remove(0);
    assert_eq!(t.attempt, 1);
    complete(&s, now, &t, "{}").await;
    assert_eq!(run_state(&s, &run_id).await, RunState::Succeeded);
    // Non-retryable kinds die at once.
    let sub = run(
        vec![T::new("t").attempts(5)],
        None,
        FailurePolicy::FailFast,
        now,
    );
    submit(&s, sub, now).await;
    let t = claims(&s, now, vec![claim("w", 1)]).await.remove(0);
    fail(&s, now, &t, "fatal").await;
    assert_eq!(task(&s, &t.id).await.state, TaskState::Dead);
}

pub async fn schedule_to_start_deadline(s: Store) {
    let sub = run(
        vec![T::new("t").deadline(500)],
        None,
        FailurePolicy::FailFast,
        T0,
    );
    let run_id = sub.run.id.clone();
    let a = submit(&s, sub, T0).await;
    assert_eq!(a.next_due, Some(T0 + 500));
    sweep(&s, T0 + 499).await;
    assert_eq!(run_state(&s, &run_id).await, RunState::Running);
    sweep(&s, T0 + 500).await;
    let (run, tasks) = s.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(
        tasks[0].error.as_ref().unwrap().kind,
        "schedule_to_start_timeout"
    );
}

/// Defect: the first attempt's schedule-to-start deadline outlived its
/// lease, so a retry due after it died "not started within".
pub async fn schedule_to_start_is_per_attempt(s: Store) {
    let sub = run(
        vec![T::new("t").deadline(500).attempts(3)],
        None,
        FailurePolicy::FailFast,
        T0,
    );
    let run_id = sub.run.id.clone();
    submit(&s, sub, T0).await;
    let t = claims(&s, T0 + 100, vec![claim("w", 1)]).await.remove(0);
    assert_eq!(
        t.schedule_deadline, 0,
        "a started attempt has no start deadline"
    );
    // Attempt 1 fails a second after the task became ready.
    assert_eq!(fail(&s, T0 + 1000, &t, "flaky").await, OpResult::Done);
    let failed = task(&s, &t.id).await;
    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(failed.schedule_deadline, failed.ready_at + 500);
    sweep(&s, failed.ready_at).await;
    assert_eq!(task(&s, &t.id).await.state, TaskState::Failed);
    let t2 = claims(&s, failed.ready_at, vec![claim("w", 1)])
        .await
        .remove(0);
    assert_eq!(t2.attempt, 2, "attempt 2 runs");
    // A retry nobody starts in time still times out, from when it was due.
    assert_eq!(
        fail(&s, failed.ready_at + 10, &t2, "flaky").await,
        OpResult::Done
    );
    let waiting = task(&s, &t.id).await;
    sweep(&s, waiting.ready_at + 499).await;
    assert_eq!(task(&s, &t.id).await.state, TaskState::Failed);
    sweep(&s, waiting.ready_at + 500).await;
    let dead = task(&s, &t.id).await;
    assert_eq!(dead.state, TaskState::Dead);
    assert_eq!(dead.error.unwrap().kind, "schedule_to_start_timeout");
    assert_eq!(run_state(&s, &run_id).await, RunState::Failed);
}

pub async fn concurrency_keys_cap_running_tasks(s: Store) {
    for _ in 0..3 {
        submit(
            &s,
            run(
                vec![T::new("t").limit("repo-x", 1)],
                None,
                FailurePolicy::FailFast,
                T0,
            ),
            T0,
        )
        .await;
    }
    submit(
        &s,
        run(vec![T::new("free")], None, FailurePolicy::FailFast, T0),
        T0,
    )
    .await;
    let first = claims(&s, T0, vec![claim("w", 10)]).await;
    assert_eq!(first.len(), 2, "one repo-x task and the unkeyed one");
    let keyed = first
        .iter()
        .find(|t| t.concurrency_key == "repo-x")
        .unwrap();
    assert!(
        claims(&s, T0, vec![claim("w2", 10)]).await.is_empty(),
        "repo-x is at its limit"
    );
    complete(&s, T0 + 1, keyed, "{}").await;
    let next = claims(&s, T0 + 2, vec![claim("w", 10)]).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].concurrency_key, "repo-x");
}

pub async fn rate_limits_pace_starts(s: Store) {
    s.set_rate_limit(
        "slow",
        Some(RateLimit {
            per_second: 2.0,
            burst: 1,
        }),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        submit(
            &s,
            run(
                vec![T::new("t").agent("slow")],
                None,
                FailurePolicy::FailFast,
                T0,
            ),
            T0,
        )
        .await;
    }
    let a = s
        .apply(Batch {
            now: T0,
            claims: vec![claim("w", 10)],
            claim_from_db: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(a.leased.len(), 1);
    let due = a
        .next_due
        .expect("the engine is told when the next start is allowed");
    assert!((T0 + 499..=T0 + 500).contains(&due), "{due}");
    assert!(claims(&s, T0 + 100, vec![claim("w", 10)]).await.is_empty());
    assert_eq!(claims(&s, T0 + 500, vec![claim("w", 10)]).await.len(), 1);
    s.set_rate_limit("slow", None).await.unwrap();
    assert_eq!(claims(&s, T0 + 501, vec![claim("w", 10)]).await.len(), 1);
}

/// The metrics' gauges read the whole database: queued tasks per agent,
/// dead letters, and the oldest unpublished event.
pub async fn queue_gauges_count_the_whole_database(s: Store) {
    let sub = run(
        vec![
            T::new("a1").agent("a"),
            T::new("a2").agent("a"),
            T::new("b1").agent("b").attempts(1),
        ],
        None,
        FailurePolicy::Continue,
        T0,
    );
    submit(&s, sub, T0).await;
    let stats = |rows: Vec<(String, String, i64)>| {
        rows.into_iter()
            .map(|(k, a, n)| (format!("{k}:{a}"), n))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let now = stats(s.queue_stats().await.unwrap());
    assert_eq!(now.get("queued:a"), Some(&2), "{now:?}");
    assert_eq!(now.get("queued:b"), Some(&1), "{now:?}");
    assert_eq!(now.get("dead:"), Some(&0), "{now:?}");
    assert_eq!(
        now.get("outbox:"),
        Some(&T0),
        "the oldest unpublished event"
    );

    let leased = claims(&s, T0 + 1, vec![claim("w", 3)]).await;
    let b = leased.iter().find(|t| t.agent == "b").unwrap();
    assert_eq!(fail(&s, T0 + 2, b, "flaky").await, OpResult::Done);
    let now = stats(s.queue_stats().await.unwrap());
    assert!(!now.keys().any(|k| k.starts_with("queued:")), "{now:?}");
    assert_eq!(now.get("dead:"), Some(&1), "{now:?}");

    let ids: Vec<i64> = s.outbox(1000).await.unwrap().iter().map(|e| e.id).collect();
    s.mark_published(&ids).await.unwrap();
    let now = stats(s.queue_stats().await.unwrap());
    assert_eq!(now.get("outbox:"), Some(&0), "nothing left to publish");
}

/// An approval task waits where no claim finds it, until a decision or its
/// deadline; a decision on anything else changes nothing.
pub async fn approvals_wait_for_a_decision_or_time_out(s: Store) {
    let gated = |now| {
        let mut sub = run(
            vec![
                T::new("gate").agent("@approval").deadline(500),
                T::new("after").deps(&["gate"]),
            ],
            None,
            FailurePolicy::FailFast,
            now,
        );
        sub.tasks[0].state = TaskState::Waiting;
        sub
    };
    let sub = gated(T0);
    let (run_id, gate) = (sub.run.id.clone(), sub.tasks[0].id.clone());
    let a = submit(&s, sub, T0).await;
    assert_eq!(a.next_due, Some(T0 + 500));
    // A worker serving every agent finds nothing to claim.
    assert!(claims(&s, T0, vec![claim("w", 4)]).await.is_empty());
    let decide = |task_id: &str, approve| Op::Decide {
        task_id: task_id.into(),
        decision: Decision {
            approve,
            by: "user/ann".into(),
            comment: "ok".into(),
        },
    };
    assert_eq!(op(&s, T0 + 1, decide(&gate, true)).await, OpResult::Done);
    let g = task(&s, &gate).await;
    assert_eq!(g.state, TaskState::Succeeded);
    assert_eq!(
        g.output.as_deref(),
        Some(r#"{"approved":true,"by":"user/ann","comment":"ok"}"#)
    );
    // Decided: its deadline is gone, and its dependent runs.
    sweep(&s, T0 + 500).await;
    assert_eq!(task(&s, &gate).await.state, TaskState::Succeeded);
    let after = claims(&s, T0 + 2, vec![claim("w", 4)]).await.remove(0);
    assert!(matches!(
        op(&s, T0 + 3, decide(&after.id, true)).await,
        OpResult::Rejected(_)
    ));
    complete(&s, T0 + 3, &after, "{}").await;
    assert_eq!(run_state(&s, &run_id).await, RunState::Succeeded);

    // Nobody decides: dead at the deadline, and the run fails.
    let sub = gated(T0);
    let (run_id, gate) = (sub.run.id.clone(), sub.tasks[0].id.clone());
    submit(&s, sub, T0).await;
    sweep(&s, T0 + 499).await;
    assert_eq!(task(&s, &gate).await.state, TaskState::Waiting);
    sweep(&s, T0 + 500).await;
    let g = task(&s, &gate).await;
    assert_eq!(g.state, TaskState::Dead);
    assert_eq!(g.error.unwrap().kind, "approval_timeout");
    assert_eq!(run_state(&s, &run_id).await, RunState::Failed);
}
