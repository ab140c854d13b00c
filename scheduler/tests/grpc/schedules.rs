//! Cron schedules over the wire: refused bad input, a run per tick until
//! paused, resumed and deleted, and the three overlap policies.

use std::time::Duration;

use devcycle::proto::scheduler::v1 as pb;
use devcycle::testkit::expect_err;
use tonic::Code;

use crate::common::mesh::{Db, Mesh};
use crate::common::schedule::{create, every_second, get, put_workflow, runs_of, until};

const WITHIN: Duration = Duration::from_secs(20);

#[tokio::test]
async fn bad_schedules_are_refused_naming_the_field() {
    let m = Mesh::start(Db::Sqlite).await;
    let mut c = m.client();
    put_workflow(&mut c, "nightly", "noop").await;
    let good = || every_second("s1", "nightly", pb::OverlapPolicy::Skip);
    let client = c.clone();
    let refused = |s: Option<pb::Schedule>, code: Code, field: &str| {
        let mut c = client.clone();
        let field = field.to_owned();
        async move {
            let r = c
                .create_schedule(pb::CreateScheduleRequest { schedule: s })
                .await;
            expect_err(r, code, &field);
        }
    };
    refused(None, Code::InvalidArgument, "schedule").await;
    let cases: Vec<(pb::Schedule, Code, &str)> = vec![
        (
            pb::Schedule {
                name: "Not A Label".into(),
                ..good()
            },
            Code::InvalidArgument,
            "schedule.name",
        ),
        (
            pb::Schedule {
                cron: "61 * * * *".into(),
                ..good()
            },
            Code::InvalidArgument,
            "schedule.cron",
        ),
        (
            pb::Schedule {
                cron: "every day".into(),
                ..good()
            },
            Code::InvalidArgument,
            "schedule.cron",
        ),
        (
            pb::Schedule {
                cron: "0 0 31 2 *".into(),
                ..good()
            },
            Code::InvalidArgument,
            "schedule.cron",
        ),
        (
            pb::Schedule {
                time_zone: "Mars/Olympus".into(),
                ..good()
            },
            Code::InvalidArgument,
            "schedule.time_zone",
        ),
        (
            pb::Schedule {
                overlap: 42,
                ..good()
            },
            Code::InvalidArgument,
            "schedule.overlap",
        ),
        (
            pb::Schedule {
                catchup_window_s: 8 * 24 * 3600,
                ..good()
            },
            Code::InvalidArgument,
            "schedule.catchup_window_s",
        ),
        (
            pb::Schedule {
                workflow_name: "missing".into(),
                ..good()
            },
            Code::NotFound,
            "schedule.workflow_name",
        ),
        (
            pb::Schedule {
                inputs: [("nope".to_owned(), "1".to_owned())].into(),
                ..good()
            },
            Code::InvalidArgument,
            "schedule.inputs[nope]",
        ),
        (
            pb::Schedule {
                inputs: [("note".to_owned(), "{".to_owned())].into(),
                ..good()
            },
            Code::InvalidArgument,
            "schedule.inputs[note]",
        ),
    ];
    for (s, code, field) in cases {
        refused(Some(s), code, field).await;
    }
    // Nothing half-written: the name is still free.
    create(&mut c, good()).await;
    refused(Some(good()), Code::AlreadyExists, "schedule.name").await;
    expect_err(
        c.get_schedule(pb::GetScheduleRequest {
            name: "absent".into(),
        })
        .await,
        Code::NotFound,
        "absent",
    );
    expect_err(
        c.pause_schedule(pb::PauseScheduleRequest { name: "BAD".into() })
            .await,
        Code::InvalidArgument,
        "name",
    );
}

#[tokio::test]
async fn a_schedule_starts_a_run_per_tick_until_paused() {
    let m = Mesh::start(Db::Sqlite).await;
    let _w = m.worker("w1", 4);
    let mut c = m.client();
    put_workflow(&mut c, "nightly", "echo").await;
    let mut s = every_second("tick", "nightly", pb::OverlapPolicy::Skip);
    s.inputs = [("note".to_owned(), "\"from cron\"".to_owned())].into();
    s.time_zone = "Europe/Paris".into();
    let created = create(&mut c, s).await;
    assert_eq!(created.owner, "user/tester");
    assert!(created.next_fire_time.is_some());

    let s = until(&mut c, "tick", WITHIN, |s| s.fired >= 2).await;
    let run = c
        .get_run(pb::GetRunRequest {
            run_id: s.last_run_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.workflow, "nightly");
    assert_eq!(run.created_by, "user/tester");
    assert!(run.tasks[0].input.contains("from cron"), "{run:?}");

    let paused = c
        .pause_schedule(pb::PauseScheduleRequest {
            name: "tick".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert!(paused.paused);
    assert!(paused.next_fire_time.is_none());
    // A tick already claimed when the pause landed may still be recorded;
    // after that, nothing fires.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = get(&mut c, "tick").await.fired;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = get(&mut c, "tick").await;
    assert_eq!(after.fired, settled, "a paused schedule fired");
    assert_eq!(runs_of(&mut c, "nightly").await.len() as u64, after.fired);

    c.resume_schedule(pb::ResumeScheduleRequest {
        name: "tick".into(),
    })
    .await
    .unwrap();
    let resumed = until(&mut c, "tick", WITHIN, |s| s.fired > settled).await;
    // The 4 s paused are not counted as missed ticks (a pass late by more
    // than a second on a busy machine may pass over one or two).
    assert!(resumed.missed <= after.missed + 2, "{after:?} {resumed:?}");

    c.delete_schedule(pb::DeleteScheduleRequest {
        name: "tick".into(),
    })
    .await
    .unwrap();
    expect_err(
        c.get_schedule(pb::GetScheduleRequest {
            name: "tick".into(),
        })
        .await,
        Code::NotFound,
        "tick",
    );
    // Its runs are kept.
    assert!(runs_of(&mut c, "nightly").await.len() as u64 >= resumed.fired);
}

/// Runs of `hang` with no worker never end, so every tick overlaps.
#[tokio::test]
async fn overlapping_ticks_skip_allow_or_cancel_the_previous_run() {
    let m = Mesh::start(Db::Sqlite).await;
    let mut c = m.client();
    put_workflow(&mut c, "skipper", "hang").await;
    put_workflow(&mut c, "allower", "hang").await;
    put_workflow(&mut c, "canceller", "hang").await;
    use pb::OverlapPolicy as P;
    create(&mut c, every_second("skip", "skipper", P::Skip)).await;
    create(&mut c, every_second("allow", "allower", P::Allow)).await;
    create(
        &mut c,
        every_second("cancel", "canceller", P::CancelPrevious),
    )
    .await;

    let s = until(&mut c, "skip", WITHIN, |s| s.skipped >= 2).await;
    assert_eq!(s.fired, 1, "{s:?}");
    assert_eq!(runs_of(&mut c, "skipper").await.len(), 1);

    let s = until(&mut c, "allow", WITHIN, |s| s.fired >= 2).await;
    assert_eq!(s.skipped, 0);
    let running = pb::RunState::Running as i32;
    let runs = runs_of(&mut c, "allower").await;
    assert!(
        runs.len() >= 2 && runs.iter().all(|r| r.state == running),
        "{runs:?}"
    );

    let s = until(&mut c, "cancel", WITHIN, |s| s.fired >= 2).await;
    let runs = runs_of(&mut c, "canceller").await;
    let latest = runs.iter().find(|r| r.id == s.last_run_id).unwrap();
    assert_eq!(latest.state, running);
    let cancelled = pb::RunState::Cancelled as i32;
    let older: Vec<_> = runs.iter().filter(|r| r.id != s.last_run_id).collect();
    assert!(!older.is_empty());
    // The run before the latest was cancelled when the latest started.
    assert!(older.iter().all(|r| r.state == cancelled), "{runs:?}");
}
