//! Runs as a whole: dependencies, failure policies, cancellation, retries,
//! the outbox, logs and listings.

use devcycle_scheduler::machine::Reject;
use devcycle_scheduler::model::*;
use devcycle_scheduler::store::{Batch, Op, OpResult};

use crate::T0;
use crate::common::*;

pub async fn dag_renders_upstream_outputs(s: Store) {
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

pub async fn fail_fast_and_continue(s: Store) {
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

pub async fn cancel_tells_the_worker(s: Store) {
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

/// Defect: retrying a sibling revived tasks whose upstream was still dead;
/// they stayed PENDING and the run RUNNING forever.
pub async fn retry_revives_only_what_can_finish(s: Store) {
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

pub async fn outbox_in_order(s: Store) {
    let mut runs = Vec::new();
    for i in 0..3 {
        let sub = run(vec![T::new("t")], None, FailurePolicy::FailFast, T0 + i);
        runs.push(sub.run.id.clone());
        submit_claim(&s, T0 + i, vec![sub], "w", 1).await;
    }
    let pending = s.outbox(100).await.unwrap();
    assert_eq!(pending.len(), 6);
    let ids: Vec<i64> = pending.iter().map(|e| e.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "commit order");
    // A task's events carry its trace context, to be published as a header.
    for e in &pending {
        let want = if e.task_id.is_empty() {
            ""
        } else {
            TRACEPARENT
        };
        assert_eq!(e.traceparent, want, "{:?}", e.kind);
    }
    assert!(pending.iter().any(|e| !e.task_id.is_empty()));
    s.mark_published(&ids[..4]).await.unwrap();
    let rest = s.outbox(100).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), ids[4..]);
    assert_eq!(rest[0].run_id, runs[2]);
}

pub async fn logs_workflows_and_listing(s: Store) {
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

/// A batch whose writes fail changes nothing, and later batches see the
/// database as it was before it: a store that keeps runs between batches
/// keeps only what was committed.
pub async fn a_failed_batch_changes_nothing(s: Store) {
    let two = run(
        vec![T::new("a"), T::new("b")],
        None,
        FailurePolicy::Continue,
        T0,
    );
    let other = run(vec![T::new("c")], None, FailurePolicy::FailFast, T0);
    let run_id = two.run.id.clone();
    let a = submit_claim(&s, T0, vec![two, other], "w1", 3).await;
    let leased = |key: &str| a.leased.iter().find(|t| t.key == key).unwrap().clone();
    let (ta, tb, tc) = (leased("a"), leased("b"), leased("c"));

    // Task a's result is applied, then a new run reusing task c's id fails
    // to insert, in the same batch.
    let mut clash = run(vec![T::new("x")], None, FailurePolicy::FailFast, T0);
    clash.tasks[0].id = tc.id.clone();
    let failed = s
        .apply(Batch {
            now: T0 + 1,
            submits: vec![clash],
            ops: vec![Op::Complete {
                lease: lease_of(&ta),
                outcome: Outcome::Success {
                    output: "{}".into(),
                },
            }],
            ..Default::default()
        })
        .await;
    assert!(failed.is_err(), "a task id used twice fails the batch");
    assert_eq!(task(&s, &ta.id).await.state, TaskState::Leased);

    assert_eq!(complete(&s, T0 + 2, &ta, "{}").await, OpResult::Done);
    assert_eq!(complete(&s, T0 + 3, &tb, "{}").await, OpResult::Done);
    assert_eq!(complete(&s, T0 + 4, &tc, "{}").await, OpResult::Done);
    assert_eq!(run_state(&s, &run_id).await, RunState::Succeeded);
    let seqs: Vec<i64> = s
        .run_events(&run_id, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6], "no gap from the failed batch");
}
