//! Schedules on SQLite: writes take the write connection aside from the
//! engine's batches, reads go to the reader thread.

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use super::conn::{all, first};
use crate::error::Result;
use crate::store::schedules::{ScheduleRow, ScheduleStore, schedule};
use crate::store::sql::*;

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn create_schedule(&self, s: &ScheduleRow) -> Result<bool> {
        let s = s.clone();
        self.write_aside(move |conn| {
            let p = params![
                s.name,
                s.id,
                s.cron,
                s.time_zone,
                s.workflow,
                s.inputs,
                s.overlap,
                s.catchup_ms,
                s.paused,
                s.next_fire,
                s.last_fire,
                s.last_run_id,
                s.owner,
                s.create_time,
                s.fired,
                s.skipped,
                s.missed,
                s.last_error,
                s.claimed_until,
                s.rev
            ];
            Ok(conn.prepare_cached(sqlite!(INSERT_SCHEDULE))?.execute(p)? == 1)
        })
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRow>> {
        let name = name.to_owned();
        self.reader
            .run(move |conn| first(conn, sqlite!(GET_SCHEDULE), [name], |r| schedule(r)))
            .await
    }

    async fn list_schedules(&self, after: &str, limit: usize) -> Result<Vec<ScheduleRow>> {
        let after = after.to_owned();
        self.reader
            .run(move |conn| {
                let p = params![after, limit as i64];
                all(conn, sqlite!(LIST_SCHEDULES), p, |r| schedule(r))
            })
            .await
    }

    async fn due_schedules(&self, now: i64, limit: usize) -> Result<Vec<ScheduleRow>> {
        self.reader
            .run(move |conn| {
                let p = params![now, limit as i64];
                all(conn, sqlite!(DUE_SCHEDULES), p, |r| schedule(r))
            })
            .await
    }

    async fn next_schedule_fire(&self) -> Result<Option<i64>> {
        self.reader
            .run(|conn| Ok(conn.query_row(NEXT_SCHEDULE_FIRE, [], |r| r.get(0))?))
            .await
    }

    async fn claim_schedule(&self, s: &ScheduleRow, until: i64) -> Result<bool> {
        let (name, id, rev) = (s.name.clone(), s.id.clone(), s.rev);
        self.write_aside(move |conn| {
            let p = params![name, rev, until, id];
            Ok(conn.prepare_cached(sqlite!(CLAIM_SCHEDULE))?.execute(p)? == 1)
        })
    }

    async fn record_tick(&self, s: &ScheduleRow) -> Result<bool> {
        let s = s.clone();
        self.write_aside(move |conn| {
            let p = params![
                s.name,
                s.next_fire,
                s.last_fire,
                s.last_run_id,
                s.fired,
                s.skipped,
                s.missed,
                s.last_error,
                s.rev,
                s.id
            ];
            Ok(conn.prepare_cached(sqlite!(RECORD_TICK))?.execute(p)? == 1)
        })
    }

    async fn pause_schedule(&self, name: &str, paused: bool, next_fire: i64) -> Result<bool> {
        let name = name.to_owned();
        self.write_aside(move |conn| {
            let p = params![name, paused, next_fire];
            Ok(conn.prepare_cached(sqlite!(PAUSE_SCHEDULE))?.execute(p)? == 1)
        })
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.write_aside(move |conn| {
            Ok(conn
                .prepare_cached(sqlite!(DELETE_SCHEDULE))?
                .execute([name])?
                == 1)
        })
    }
}
