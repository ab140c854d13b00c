//! Schedules on PostgreSQL: single statements on the pool.

use async_trait::async_trait;

use super::PgStore;
use super::tx::fetch;
use crate::error::Result;
use crate::store::schedules::{ScheduleRow, ScheduleStore, schedule};
use crate::store::sql::*;

#[async_trait]
impl ScheduleStore for PgStore {
    async fn create_schedule(&self, s: &ScheduleRow) -> Result<bool> {
        let done = sqlx::query(INSERT_SCHEDULE)
            .bind(&s.name)
            .bind(&s.id)
            .bind(&s.cron)
            .bind(&s.time_zone)
            .bind(&s.workflow)
            .bind(&s.inputs)
            .bind(&s.overlap)
            .bind(s.catchup_ms)
            .bind(s.paused)
            .bind(s.next_fire)
            .bind(s.last_fire)
            .bind(&s.last_run_id)
            .bind(&s.owner)
            .bind(s.create_time)
            .bind(s.fired)
            .bind(s.skipped)
            .bind(s.missed)
            .bind(&s.last_error)
            .bind(s.claimed_until)
            .bind(s.rev)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRow>> {
        let row = sqlx::query(GET_SCHEDULE)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(schedule).transpose()
    }

    async fn list_schedules(&self, after: &str, limit: usize) -> Result<Vec<ScheduleRow>> {
        let q = sqlx::query(LIST_SCHEDULES).bind(after).bind(limit as i64);
        fetch(&self.pool, q, schedule).await
    }

    async fn due_schedules(&self, now: i64, limit: usize) -> Result<Vec<ScheduleRow>> {
        let q = sqlx::query(DUE_SCHEDULES).bind(now).bind(limit as i64);
        fetch(&self.pool, q, schedule).await
    }

    async fn next_schedule_fire(&self) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(NEXT_SCHEDULE_FIRE)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn claim_schedule(&self, s: &ScheduleRow, until: i64) -> Result<bool> {
        let done = sqlx::query(CLAIM_SCHEDULE)
            .bind(&s.name)
            .bind(s.rev)
            .bind(until)
            .bind(&s.id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_tick(&self, s: &ScheduleRow) -> Result<bool> {
        let done = sqlx::query(RECORD_TICK)
            .bind(&s.name)
            .bind(s.next_fire)
            .bind(s.last_fire)
            .bind(&s.last_run_id)
            .bind(s.fired)
            .bind(s.skipped)
            .bind(s.missed)
            .bind(&s.last_error)
            .bind(s.rev)
            .bind(&s.id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn pause_schedule(&self, name: &str, paused: bool, next_fire: i64) -> Result<bool> {
        let done = sqlx::query(PAUSE_SCHEDULE)
            .bind(name)
            .bind(paused)
            .bind(next_fire)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        let done = sqlx::query(DELETE_SCHEDULE)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
