//! Schedules in the store: created once per name, claimed by one
//! scheduler per tick, recorded only by the claim's holder, paused out of
//! the due list.

use devcycle_scheduler::store::ScheduleRow;

use crate::T0;
use crate::common::*;

fn row(name: &str, next_fire: i64) -> ScheduleRow {
    ScheduleRow {
        name: name.into(),
        id: format!("id-{name}"),
        cron: "* * * * *".into(),
        time_zone: String::new(),
        workflow: "wf".into(),
        inputs: "{}".into(),
        overlap: "skip".into(),
        catchup_ms: 60_000,
        paused: false,
        next_fire,
        last_fire: 0,
        last_run_id: String::new(),
        owner: "user/t".into(),
        create_time: T0,
        fired: 0,
        skipped: 0,
        missed: 0,
        last_error: String::new(),
        claimed_until: 0,
        rev: 1,
    }
}

pub async fn schedules_are_claimed_once_per_tick(s: Store) {
    let tick = T0 + 60_000;
    assert!(s.create_schedule(&row("a", tick)).await.unwrap());
    assert!(s.create_schedule(&row("b", tick + 60_000)).await.unwrap());
    // A name is taken once; the first row stays.
    assert!(!s.create_schedule(&row("a", 1)).await.unwrap());
    assert_eq!(s.get_schedule("a").await.unwrap().unwrap(), row("a", tick));
    assert_eq!(s.next_schedule_fire().await.unwrap(), Some(tick));

    assert!(s.due_schedules(tick - 1, 10).await.unwrap().is_empty());
    let due = s.due_schedules(tick, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    // Two schedulers read the same row; only one claim holds.
    let until = tick + 30_000;
    let read = due[0].clone();
    // A row read before the schedule was deleted and created again under
    // its name is not the schedule any more.
    let other = ScheduleRow {
        id: "id-other".into(),
        ..read.clone()
    };
    assert!(!s.claim_schedule(&other, until).await.unwrap());
    assert!(s.claim_schedule(&read, until).await.unwrap());
    assert!(!s.claim_schedule(&read, until).await.unwrap());
    // Held: not due to anyone until the claim lapses.
    assert!(s.due_schedules(tick + 1, 10).await.unwrap().is_empty());
    assert_eq!(s.due_schedules(until, 10).await.unwrap().len(), 1);
    assert_eq!(s.next_schedule_fire().await.unwrap(), Some(until));

    // The holder records the tick (at rev 2); a stale record changes nothing.
    let done = ScheduleRow {
        next_fire: tick + 60_000,
        last_fire: tick,
        last_run_id: "r1".into(),
        fired: 1,
        rev: 2,
        ..row("a", tick)
    };
    let recreated = ScheduleRow {
        id: "id-other".into(),
        ..done.clone()
    };
    assert!(!s.record_tick(&recreated).await.unwrap());
    assert!(s.record_tick(&done).await.unwrap());
    assert!(!s.record_tick(&done).await.unwrap());
    let a = s.get_schedule("a").await.unwrap().unwrap();
    assert_eq!((a.fired, a.last_run_id.as_str(), a.rev), (1, "r1", 3));
    assert_eq!(a.claimed_until, 0);
    assert!(s.due_schedules(tick + 1, 10).await.unwrap().is_empty());

    // Paused schedules are never due, nor claimed by a scheduler that read
    // them before the pause.
    let b = s.get_schedule("b").await.unwrap().unwrap();
    assert!(s.pause_schedule("b", true, tick + 60_000).await.unwrap());
    assert_eq!(s.due_schedules(tick + 120_000, 10).await.unwrap().len(), 1);
    assert!(s.get_schedule("b").await.unwrap().unwrap().paused);
    assert!(!s.claim_schedule(&b, until).await.unwrap());
    assert!(!s.pause_schedule("zz", true, 0).await.unwrap());

    let names: Vec<String> = s
        .list_schedules("", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(s.list_schedules("a", 10).await.unwrap().len(), 1);
    assert!(s.delete_schedule("a").await.unwrap());
    assert!(!s.delete_schedule("a").await.unwrap());
    assert!(s.get_schedule("a").await.unwrap().is_none());
}
