//! The scheduler store's conformance suite: every test runs on PostgreSQL
//! and on SQLite, each on a fresh database.

mod common;

use std::sync::Arc;

use common::*;
use devcycle_scheduler::machine::Reject;
use devcycle_scheduler::model::*;
use devcycle_scheduler::store::{Batch, Op, OpResult};

devcycle::conformance! {
    tests: [
    sync_match_and_events,
    idempotent_submit_under_concurrent_callers,
    priority_then_age,
    stale_results_are_fenced,
    expiry_retries_then_dead_letters,
    dag_renders_upstream_outputs,
    fail_fast_and_continue,
    cancel_tells_the_worker,
    concurrency_keys_cap_running_tasks,
    rate_limits_pace_starts,
    heartbeats_and_release,
    schedule_to_start_deadline,
    outbox_in_order,
    logs_workflows_and_listing,
    schedule_to_start_is_per_attempt,
    retry_revives_only_what_can_finish,
    unheld_leases_return_or_fail,
    a_lease_is_trusted_only_from_its_worker
    ],
    postgres(run) => {
        let (store, _pool) = common::postgres().await;
        run(store).await
    },
    sqlite(run) => {
        let (store, _dir) = common::sqlite().await;
        run(store).await
    },
}

const T0: i64 = 1_700_000_000_000;

async fn sync_match_and_events(s: Store) {
    let sub = run(vec![T::new("only")], None, FailurePolicy::FailFast, T0);
    let run_id = sub.run.id.clone();
    let a = s
        .apply(Batch {
            now: T0,
            submits: vec![sub],
            claims: vec![claim("w1", 4)],
            ..Default::default()
        })
        .await
        .unwrap();
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

async fn idempotent_submit_under_concurrent_callers(s: Store) {
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

async fn priority_then_age(s: Store) {
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

async fn stale_results_are_fenced(s: Store) {
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

async fn expiry_retries_then_dead_letters(s: Store) {
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

async fn dag_renders_upstream_outputs(s: Store) {
    let sub = run(
        vec![
            T::new("build"),
            T::new("test").deps(&["build"]).input(
                r#"{"artifact":"${tasks.build.output.path}","all":"${tasks.build.output}"}"#,
            ),
            T::new("bad")
                .deps(&["build"])
                .input(r#"{"x":"${tasks.build.output.missing}"}"#),
        ],
        None,
        FailurePolicy::Continue,
        T0,
    );
    let run_id = sub.run.id.clone();
    submit(&s, sub, T0).await;
    let build = claims(&s, T0, vec![claim("w", 5)]).await;
    assert_eq!(build.len(), 1, "downstream tasks wait for build");
    complete(&s, T0 + 1, &build[0], r#"{"path":"out/app.tar"}"#).await;
    let next = claims(&s, T0 + 2, vec![claim("w", 5)]).await;
    assert_eq!(next.len(), 1);
    let input: serde_json::Value = serde_json::from_str(&next[0].input).unwrap();
    assert_eq!(input["artifact"], "out/app.tar");
    assert_eq!(input["all"]["path"], "out/app.tar");
    let (_, tasks) = s.get_run(&run_id).await.unwrap().unwrap();
    let bad = tasks.iter().find(|t| t.key == "bad").unwrap();
    assert_eq!(bad.state, TaskState::Dead);
    assert_eq!(bad.error.as_ref().unwrap().kind, "input_template");
    complete(&s, T0 + 3, &next[0], "{}").await;
    assert_eq!(
        run_state(&s, &run_id).await,
        RunState::Failed,
        "continue: finishes, then fails"
    );
}

async fn fail_fast_and_continue(s: Store) {
    for policy in [FailurePolicy::FailFast, FailurePolicy::Continue] {
        let sub = run(
            vec![
                T::new("a").attempts(1),
                T::new("b"),
                T::new("after-a").deps(&["a"]),
            ],
            None,
            policy,
            T0,
        );
        let run_id = sub.run.id.clone();
        submit(&s, sub, T0).await;
        let leased = claims(&s, T0, vec![claim("w", 2)]).await;
        assert_eq!(leased.len(), 2);
        let a = leased.iter().find(|t| t.key == "a").unwrap();
        let b = leased.iter().find(|t| t.key == "b").unwrap();
        let out = s
            .apply(Batch {
                now: T0 + 1,
                ops: vec![Op::Complete {
                    lease: lease_of(a),
                    outcome: Outcome::Failure(TaskError {
                        kind: "x".into(),
                        message: "m".into(),
                        retryable: true,
                    }),
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        let (_, tasks) = s.get_run(&run_id).await.unwrap().unwrap();
        let state = |k: &str| tasks.iter().find(|t| t.key == k).unwrap().state;
        assert_eq!(
            state("after-a"),
            TaskState::Cancelled,
            "downstream of a dead task never runs"
        );
        match policy {
            FailurePolicy::FailFast => {
                assert_eq!(state("b"), TaskState::Cancelled);
                assert_eq!(out.cancels.len(), 1, "b's worker is told to stop");
                assert_eq!(out.cancels[0].lease.task_id, b.id);
                assert_eq!(run_state(&s, &run_id).await, RunState::Failed);
            }
            FailurePolicy::Continue => {
                assert_eq!(state("b"), TaskState::Leased);
                assert!(out.cancels.is_empty());
                complete(&s, T0 + 2, b, "{}").await;
                assert_eq!(run_state(&s, &run_id).await, RunState::Failed);
            }
        }
    }
}

async fn cancel_tells_the_worker(s: Store) {
    let sub = run(
        vec![T::new("a"), T::new("b").deps(&["a"])],
        None,
        FailurePolicy::FailFast,
        T0,
    );
    let run_id = sub.run.id.clone();
    submit(&s, sub, T0).await;
    let a = claims(&s, T0, vec![claim("w", 1)]).await.remove(0);
    let out = s
        .apply(Batch {
            now: T0 + 1,
            ops: vec![Op::CancelRun {
                run_id: run_id.clone(),
                reason: "user asked".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(out.results, vec![OpResult::Done]);
    assert_eq!(out.cancels.len(), 1);
    assert_eq!(
        (
            out.cancels[0].worker_id.as_str(),
            out.cancels[0].reason.as_str()
        ),
        ("w", "user asked")
    );
    assert_eq!(run_state(&s, &run_id).await, RunState::Cancelled);
    assert!(matches!(
        complete(&s, T0 + 2, &a, "{}").await,
        OpResult::Rejected(_)
    ));
    assert!(matches!(
        op(
            &s,
            T0 + 3,
            Op::CancelRun {
                run_id: run_id.clone(),
                reason: String::new()
            }
        )
        .await,
        OpResult::Rejected(Reject::State(_))
    ));
    assert!(matches!(
        op(
            &s,
            T0 + 3,
            Op::CancelRun {
                run_id: uuid::Uuid::now_v7().to_string(),
                reason: String::new()
            }
        )
        .await,
        OpResult::Rejected(Reject::NotFound(_))
    ));
    assert_eq!(
        kinds(&s, &run_id).await.last(),
        Some(&EventKind::RunCancelled)
    );
}

async fn concurrency_keys_cap_running_tasks(s: Store) {
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

async fn rate_limits_pace_starts(s: Store) {
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

async fn heartbeats_and_release(s: Store) {
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

async fn schedule_to_start_deadline(s: Store) {
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

async fn outbox_in_order(s: Store) {
    let mut runs = Vec::new();
    for i in 0..3 {
        let sub = run(vec![T::new("t")], None, FailurePolicy::FailFast, T0 + i);
        runs.push(sub.run.id.clone());
        s.apply(Batch {
            now: T0 + i,
            submits: vec![sub],
            claims: vec![claim("w", 1)],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let pending = s.outbox(100).await.unwrap();
    assert_eq!(pending.len(), 6);
    let ids: Vec<i64> = pending.iter().map(|e| e.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "commit order");
    s.mark_published(&ids[..4]).await.unwrap();
    let rest = s.outbox(100).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), ids[4..]);
    assert_eq!(rest[0].run_id, runs[2]);
}

async fn logs_workflows_and_listing(s: Store) {
    submit(
        &s,
        run(vec![T::new("t")], None, FailurePolicy::FailFast, T0),
        T0,
    )
    .await;
    let t = claims(&s, T0, vec![claim("w", 1)]).await.remove(0);
    let line = |n: u32| LogRow {
        task_id: t.id.clone(),
        attempt: 1,
        time: T0,
        stream: "stdout".into(),
        line: format!("line {n}"),
    };
    s.apply(Batch {
        now: T0,
        logs: vec![line(1), line(2)],
        ..Default::default()
    })
    .await
    .unwrap();
    let logs = s.task_logs(&t.id, 10).await.unwrap();
    assert_eq!(
        logs.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["line 1", "line 2"]
    );

    let w1 = s
        .put_workflow("ci", vec![1], T0, "user/a", false)
        .await
        .unwrap();
    let w2 = s
        .put_workflow("ci", vec![2], T0 + 1, "user/a", false)
        .await
        .unwrap();
    s.put_workflow("alpha", vec![3], T0, "user/b", false)
        .await
        .unwrap();
    assert_eq!((w1.revision, w2.revision), (1, 2));
    assert_eq!(s.get_workflow("ci").await.unwrap().unwrap().spec, vec![2]);
    // Another user may not add a revision; one who may replace any may, and
    // the owner stays.
    let e = s.put_workflow("ci", vec![9], T0 + 2, "user/b", false).await;
    assert!(
        matches!(e, Err(devcycle_scheduler::Error::PermissionDenied(_))),
        "{e:?}"
    );
    let w3 = s
        .put_workflow("ci", vec![4], T0 + 3, "user/m", true)
        .await
        .unwrap();
    assert_eq!((w3.revision, w3.owner.as_str()), (3, "user/a"));
    assert_eq!(s.get_workflow("ci").await.unwrap().unwrap().owner, "user/a");
    let names: Vec<String> = s
        .list_workflows(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, ["alpha", "ci"]);
    assert_eq!(s.list_workflows(Some("alpha"), 10).await.unwrap().len(), 1);

    for i in 1..=4 {
        submit(
            &s,
            run(vec![T::new("t")], None, FailurePolicy::FailFast, T0 + i),
            T0 + i,
        )
        .await;
    }
    let newest = s.list_runs(&RunFilter::default(), 2).await.unwrap();
    assert_eq!(
        newest.iter().map(|r| r.create_time).collect::<Vec<_>>(),
        [T0 + 4, T0 + 3]
    );
    let cursor = newest.last().map(|r| r.id.clone());
    let older = s
        .list_runs(
            &RunFilter {
                before: cursor,
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        older.iter().map(|r| r.create_time).collect::<Vec<_>>(),
        [T0 + 2, T0 + 1, T0]
    );
    let window = RunFilter {
        created_after: Some(T0 + 1),
        created_before: Some(T0 + 3),
        ..Default::default()
    };
    assert_eq!(s.list_runs(&window, 10).await.unwrap().len(), 2);
    let running = RunFilter {
        state: Some(RunState::Succeeded),
        ..Default::default()
    };
    assert!(s.list_runs(&running, 10).await.unwrap().is_empty());
    let by = |who: &str| RunFilter {
        created_by: Some(who.into()),
        ..Default::default()
    };
    assert_eq!(s.list_runs(&by("user/test"), 10).await.unwrap().len(), 5);
    assert!(s.list_runs(&by("user/other"), 10).await.unwrap().is_empty());
}

/// Defect: the first attempt's schedule-to-start deadline outlived its
/// lease, so a retry due after it died "not started within".
async fn schedule_to_start_is_per_attempt(s: Store) {
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

/// Defect: retrying a sibling revived tasks whose upstream was still dead;
/// they stayed PENDING and the run RUNNING forever.
async fn retry_revives_only_what_can_finish(s: Store) {
    for policy in [FailurePolicy::FailFast, FailurePolicy::Continue] {
        let sub = run(
            vec![
                T::new("a").attempts(1),
                T::new("c").deps(&["a"]),
                T::new("b").attempts(1),
            ],
            None,
            policy,
            T0,
        );
        let run_id = sub.run.id.clone();
        submit(&s, sub, T0).await;
        let leased = claims(&s, T0, vec![claim("w", 2)]).await;
        let a = leased.iter().find(|t| t.key == "a").unwrap();
        let b = leased.iter().find(|t| t.key == "b").unwrap();
        fail(&s, T0 + 1, a, "flaky").await;
        if policy == FailurePolicy::Continue {
            fail(&s, T0 + 2, b, "flaky").await;
        }
        assert_eq!(run_state(&s, &run_id).await, RunState::Failed);
        // B is retried while A stays dead.
        let retried = op(
            &s,
            T0 + 3,
            Op::Retry {
                task_id: b.id.clone(),
            },
        )
        .await;
        assert_eq!(retried, OpResult::Done, "{policy:?}");
        assert_eq!(run_state(&s, &run_id).await, RunState::Running);
        let b2 = claims(&s, T0 + 3, vec![claim("w", 2)]).await;
        assert_eq!(b2.len(), 1, "only B runs again ({policy:?})");
        assert_eq!(b2[0].key, "b");
        let done = s
            .apply(Batch {
                now: T0 + 4,
                ops: vec![Op::Complete {
                    lease: lease_of(&b2[0]),
                    outcome: Outcome::Success {
                        output: "{}".into(),
                    },
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(done.finished.len(), 1, "the run ends ({policy:?})");
        let (run, tasks) = s.get_run(&run_id).await.unwrap().unwrap();
        assert_eq!(run.state, RunState::Failed);
        let c = tasks.iter().find(|t| t.key == "c").unwrap();
        assert_eq!(c.state, TaskState::Cancelled, "C's upstream is still dead");
        // Retrying A itself revives C behind it.
        op(
            &s,
            T0 + 5,
            Op::Retry {
                task_id: a.id.clone(),
            },
        )
        .await;
        let (_, tasks) = s.get_run(&run_id).await.unwrap().unwrap();
        let c = tasks.iter().find(|t| t.key == "c").unwrap();
        assert_eq!((c.state, c.deps_pending), (TaskState::Pending, 1));
    }
}

/// A reconnecting worker lists what it holds: its other leases never
/// reached it (same process) and go back unspent, or were lost with its
/// previous process and count as failed attempts.
async fn unheld_leases_return_or_fail(s: Store) {
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
async fn a_lease_is_trusted_only_from_its_worker(s: Store) {
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
