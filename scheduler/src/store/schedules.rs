//! Cron schedules as stored: the row, and what both stores do with it.
//! Statements are in [`super::sql`]; the ticks themselves in [`crate::cron`].

use async_trait::async_trait;

use super::rows::Columns;
use crate::error::Result;

/// A schedule. Times are ms since the epoch; 0 means never.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRow {
    pub name: String,
    /// Unique per creation: a schedule deleted and created again under the
    /// same name never shares idempotency keys with its predecessor.
    pub id: String,
    pub cron: String,
    pub time_zone: String,
    pub workflow: String,
    /// The run inputs, as a JSON object of strings.
    pub inputs: String,
    /// `skip`, `allow` or `cancel_previous`.
    pub overlap: String,
    pub catchup_ms: i64,
    pub paused: bool,
    pub next_fire: i64,
    pub last_fire: i64,
    pub last_run_id: String,
    pub owner: String,
    pub create_time: i64,
    pub fired: i64,
    pub skipped: i64,
    pub missed: i64,
    pub last_error: String,
    /// A scheduler acting on the due tick holds the schedule until then.
    pub claimed_until: i64,
    pub rev: i64,
}

pub fn schedule(r: &impl Columns) -> Result<ScheduleRow> {
    Ok(ScheduleRow {
        name: r.get(0)?,
        id: r.get(1)?,
        cron: r.get(2)?,
        time_zone: r.get(3)?,
        workflow: r.get(4)?,
        inputs: r.get(5)?,
        overlap: r.get(6)?,
        catchup_ms: r.get(7)?,
        paused: r.get(8)?,
        next_fire: r.get(9)?,
        last_fire: r.get(10)?,
        last_run_id: r.get(11)?,
        owner: r.get(12)?,
        create_time: r.get(13)?,
        fired: r.get(14)?,
        skipped: r.get(15)?,
        missed: r.get(16)?,
        last_error: r.get(17)?,
        claimed_until: r.get(18)?,
        rev: r.get(19)?,
    })
}

/// Schedules in the scheduler's database. Every write but creation is
/// conditional, so schedulers sharing the database act on a tick once.
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// False when a schedule of that name exists (nothing is written).
    async fn create_schedule(&self, s: &ScheduleRow) -> Result<bool>;
    async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRow>>;
    /// By name, names above `after`.
    async fn list_schedules(&self, after: &str, limit: usize) -> Result<Vec<ScheduleRow>>;
    /// Unpaused, unclaimed schedules due at `now`, earliest first.
    async fn due_schedules(&self, now: i64, limit: usize) -> Result<Vec<ScheduleRow>>;
    /// When an unpaused schedule may next be due or released.
    async fn next_schedule_fire(&self) -> Result<Option<i64>>;
    /// Holds schedule `s` until `until` if it is unpaused and still at
    /// `s.rev` (and still `s.id`); the holder then has it at `s.rev + 1`.
    async fn claim_schedule(&self, s: &ScheduleRow, until: i64) -> Result<bool>;
    /// Writes the tick fields of `s` and releases the claim, if the row is
    /// still `s.id` at `s.rev`.
    async fn record_tick(&self, s: &ScheduleRow) -> Result<bool>;
    /// Sets `paused` and `next_fire`; false if there is no such schedule.
    async fn pause_schedule(&self, name: &str, paused: bool, next_fire: i64) -> Result<bool>;
    async fn delete_schedule(&self, name: &str) -> Result<bool>;
}
