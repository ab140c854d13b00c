//! The scheduler's statements, written once for both engines.
//!
//! Shared statements use PostgreSQL's `$N` placeholders; SQLite runs them
//! through [`sqlite!`], which turns `$N` into `?N` at compile time (same
//! numbers, so both engines bind the same values in the same order). A
//! statement only one engine runs is written in that engine's dialect, with
//! a `PG_` or `SQLITE_` prefix. The engines really differ in:
//! - sets: PostgreSQL binds arrays (`= ANY($1)`, `UNNEST`) and writes a
//!   batch in one multi-row statement, because each statement is a round
//!   trip; SQLite runs a cached prepared statement per row, which costs a
//!   function call. Hence the claim, sweep, rate-limit and write statements
//!   of the dispatch path exist once per engine.
//! - locks: PostgreSQL locks rows (`FOR UPDATE [SKIP LOCKED]`, one row per
//!   concurrency key) because schedulers share it; SQLite has one writer.
//! - events: PostgreSQL assigns their ids and notifies other schedulers
//!   (`pg_notify`); the SQLite writer numbers them itself and has no one to
//!   tell. `published` is a boolean there and an integer here, and each
//!   engine's outbox query matches its own partial index.
//!
//! Column lists are macros so that `concat!` can build statements from them
//! at compile time; the bind helpers of each engine follow their order.

/// `$N` placeholders as SQLite's `?N`, rewritten at compile time.
macro_rules! sqlite {
    ($sql:expr) => {{
        const SQL: &str = $sql;
        const BYTES: [u8; SQL.len()] = $crate::store::sql::question_marks(SQL);
        const OUT: &str = match std::str::from_utf8(&BYTES) {
            Ok(s) => s,
            Err(_) => panic!("statements are UTF-8"),
        };
        OUT
    }};
}
pub(super) use sqlite;

/// `sql` with each `$` replaced by `?`: no statement has a `$` elsewhere.
pub const fn question_marks<const N: usize>(sql: &str) -> [u8; N] {
    let b = sql.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = if b[i] == b'$' { b'?' } else { b[i] };
        i += 1;
    }
    out
}

macro_rules! run_columns {
    () => {
        "id, workflow, workflow_revision, state, inputs, idempotency_key, created_by, failure_policy, \
         create_time, end_time, last_seq, rev"
    };
}

macro_rules! task_columns {
    () => {
        "id, run_id, key, agent, agent_version, state, attempt, priority, input, output, error, \
         deps_pending, depends_on, dependents, retry, timeouts, concurrency_key, concurrency_limit, \
         ready_at, lease_id, lease_expires, attempt_deadline, schedule_deadline, worker_id, create_time, \
         start_time, end_time, rev, traceparent"
    };
}

macro_rules! event_columns {
    () => {
        "id, event_id, run_id, seq, kind, task_id, task_key, attempt, worker_id, message, time"
    };
}

macro_rules! workflow_columns {
    () => {
        "name, revision, spec, create_time, owner"
    };
}

// Both engines.

/// A new revision of a workflow, inserted only if `$4` owns it (or it is
/// new, or `$5`: any owner); returns its revision and owner.
pub const PUT_WORKFLOW: &str = "INSERT INTO sched_workflows (name, revision, spec, create_time, owner) \
     SELECT $1, s.rev, $2, $3, COALESCE(s.owner, $4) \
     FROM (SELECT COALESCE(MAX(revision), 0) + 1 AS rev, \
       (SELECT owner FROM sched_workflows WHERE name = $1 ORDER BY revision DESC LIMIT 1) AS owner \
       FROM sched_workflows WHERE name = $1) AS s \
     WHERE $5 OR COALESCE(s.owner, $4) = $4 \
     RETURNING revision, owner";
pub const GET_WORKFLOW: &str = concat!(
    "SELECT ",
    workflow_columns!(),
    " FROM sched_workflows WHERE name = $1 ORDER BY revision DESC LIMIT 1"
);
pub const LIST_WORKFLOWS: &str = "SELECT w.name, w.revision, w.spec, w.create_time, w.owner \
     FROM sched_workflows w WHERE w.name > $1 \
     AND w.revision = (SELECT MAX(revision) FROM sched_workflows x WHERE x.name = w.name) \
     ORDER BY w.name LIMIT $2";

pub const RUN: &str = concat!("SELECT ", run_columns!(), " FROM sched_runs WHERE id = $1");
pub const RUN_BY_KEY: &str =
    "SELECT id FROM sched_runs WHERE created_by = $1 AND idempotency_key = $2";
/// `$1` state, `$2` workflow, `$5` page token, `$7` creator: '' for any.
pub const LIST_RUNS: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM sched_runs WHERE ($1 = '' OR state = $1) AND ($2 = '' OR workflow = $2) \
     AND create_time >= $3 AND create_time < $4 AND ($5 = '' OR id < $5) \
     AND ($7 = '' OR created_by = $7) ORDER BY id DESC LIMIT $6"
);

pub const TASK: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM sched_tasks WHERE id = $1"
);
pub const TASKS_OF_RUN: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM sched_tasks WHERE run_id = $1 ORDER BY id"
);
/// `$1` run, `$2` state: '' for any.
pub const LIST_TASKS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM sched_tasks WHERE ($1 = '' OR run_id = $1) AND ($2 = '' OR state = $2) AND id > $3 \
     ORDER BY id LIMIT $4"
);
pub const LEASED_TO: &str = "SELECT id FROM sched_tasks WHERE state = 'leased' AND worker_id = $1";
/// The earliest timer: lease expiry, retry, schedule-to-start deadline.
pub const NEXT_DUE: &str = "SELECT MIN(t) FROM ( \
       SELECT MIN(lease_expires) AS t FROM sched_tasks WHERE state = 'leased' \
       UNION ALL SELECT MIN(ready_at) FROM sched_tasks WHERE state = 'failed' AND ready_at > $1 \
       UNION ALL SELECT MIN(schedule_deadline) FROM sched_tasks \
         WHERE state IN ('ready', 'failed') AND schedule_deadline > 0 \
       UNION ALL SELECT MIN(schedule_deadline) FROM sched_tasks WHERE state = 'waiting') AS due";

pub const RUN_EVENTS: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM sched_events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
);
pub const TASK_LOGS: &str = "SELECT task_id, attempt, time, stream, line FROM sched_task_logs \
     WHERE task_id = $1 ORDER BY id LIMIT $2";
pub const LOG_LINES: &str =
    "SELECT count(*) FROM sched_task_logs WHERE task_id = $1 AND attempt = $2";
pub const AGENT_SPEC: &str = "SELECT spec FROM sched_agent_specs WHERE agent = $1 AND version = $2";
pub const DELETE_RATE_LIMIT: &str = "DELETE FROM sched_rate_limits WHERE agent = $1";
pub const PUT_RATE_LIMIT: &str = "INSERT INTO sched_rate_limits (agent, per_second, burst, tat) \
     VALUES ($1, $2, $3, 0) \
     ON CONFLICT (agent) DO UPDATE SET per_second = excluded.per_second, burst = excluded.burst";

// PostgreSQL: arrays, row locks, notifications.

macro_rules! pg_insert_runs {
    () => {
        concat!(
            "INSERT INTO sched_runs (",
            run_columns!(),
            ") SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::int8[])"
        )
    };
}
/// New runs; returns the ids inserted (not those whose key was taken).
pub const PG_INSERT_RUNS: &str = concat!(
    pg_insert_runs!(),
    " ON CONFLICT (created_by, idempotency_key) DO NOTHING RETURNING id"
);
pub const PG_RUNS_BY_KEY: &str = "SELECT created_by, idempotency_key, id FROM sched_runs \
     WHERE (created_by, idempotency_key) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))";
pub const PG_LOCK_RUNS: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM sched_runs WHERE id = ANY($1) ORDER BY id FOR UPDATE"
);
pub const PG_LOCK_RUNS_SKIP_LOCKED: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM sched_runs WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED"
);
/// The runs of tasks `$1`, those no one else holds.
pub const PG_LOCK_RUNS_OF_TASKS: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM sched_runs WHERE id IN (SELECT run_id FROM sched_tasks WHERE id = ANY($1)) \
     ORDER BY id FOR UPDATE SKIP LOCKED"
);
/// Under their runs' locks, so unordered: an ORDER BY makes the planner
/// walk the whole primary key.
pub const PG_LOCK_TASKS_OF_RUNS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM sched_tasks WHERE run_id = ANY($1) FOR UPDATE"
);
pub const PG_LOCK_TASKS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM sched_tasks WHERE id = ANY($1) AND run_id = ANY($2) FOR UPDATE"
);
pub const PG_RUN_IDS_OF: &str = "SELECT DISTINCT run_id FROM sched_tasks WHERE id = ANY($1)";
/// The best claimable tasks of any agent (`sched_tasks_queue`).
pub const PG_CLAIMABLE: &str = "SELECT id FROM sched_tasks WHERE state IN ('ready', 'failed') \
     AND ready_at <= $1 AND NOT (id = ANY($2)) ORDER BY priority DESC, ready_at, id LIMIT $3";
/// The best claimable tasks of agents `$2` (distinct): each agent's best
/// from its own queue (`sched_tasks_agent_queue`), then merged, so another
/// agent's backlog costs nothing.
pub const PG_CLAIMABLE_OF: &str = "SELECT q.id FROM UNNEST($2::text[]) AS a(agent), LATERAL \
     (SELECT id, priority, ready_at FROM sched_tasks t WHERE t.agent = a.agent \
     AND t.state IN ('ready', 'failed') AND t.ready_at <= $1 AND NOT (t.id = ANY($3)) \
     ORDER BY t.priority DESC, t.ready_at, t.id LIMIT $4) q \
     ORDER BY q.priority DESC, q.ready_at, q.id LIMIT $4";
pub const PG_OVERDUE: &str = "(SELECT id FROM sched_tasks WHERE state = 'leased' AND lease_expires <= $1 LIMIT $2) \
     UNION ALL (SELECT id FROM sched_tasks WHERE state IN ('ready', 'failed') \
     AND schedule_deadline > 0 AND schedule_deadline <= $1 LIMIT $2) \
     UNION ALL (SELECT id FROM sched_tasks WHERE state = 'waiting' \
     AND schedule_deadline <= $1 LIMIT $2)";
pub const PG_ADD_CONCURRENCY_KEYS: &str =
    "INSERT INTO sched_concurrency (key) SELECT UNNEST($1::text[]) ON CONFLICT DO NOTHING";
pub const PG_LOCK_CONCURRENCY_KEYS: &str =
    "SELECT key FROM sched_concurrency WHERE key = ANY($1) ORDER BY key FOR UPDATE";
pub const PG_RUNNING_PER_KEY: &str = "SELECT concurrency_key, COUNT(*) FROM sched_tasks \
     WHERE state = 'leased' AND concurrency_key = ANY($1) GROUP BY concurrency_key";
pub const PG_LOCK_RATE_LIMITS: &str = "SELECT agent, per_second, burst, tat FROM sched_rate_limits \
     WHERE agent = ANY($1) ORDER BY agent FOR UPDATE";
pub const PG_SAVE_RATE_TATS: &str = "UPDATE sched_rate_limits r SET tat = v.tat \
     FROM UNNEST($1::text[], $2::float8[]) AS v(agent, tat) WHERE r.agent = v.agent";
pub const PG_INSERT_AGENT_SPECS: &str = "INSERT INTO sched_agent_specs (agent, version, spec) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[]) ON CONFLICT DO NOTHING";
/// A batch's writes in one statement, one round trip: runs and tasks (new
/// ones whole, changed ones as compare-and-set on `rev`), events (their
/// ids returned), and a notification when `$55` (an uncorrelated
/// subquery: sent once, at commit). Returns the runs and tasks written, the
/// notifications (0 or 1), and the events' ids paired with their
/// `event_id`s.
pub const PG_WRITE: &str = concat!(
    "WITH r AS (",
    pg_insert_runs!(),
    " ON CONFLICT (id) DO UPDATE SET state = excluded.state, end_time = excluded.end_time, \
     last_seq = excluded.last_seq, rev = excluded.rev \
     WHERE sched_runs.rev = excluded.rev - 1 RETURNING 1), \
     t AS (INSERT INTO sched_tasks (",
    task_columns!(),
    ") SELECT * FROM UNNEST($13::text[], $14::text[], $15::text[], $16::text[], $17::text[], \
     $18::text[], $19::int8[], $20::int8[], $21::text[], $22::text[], $23::text[], $24::int8[], \
     $25::text[], $26::text[], $27::text[], $28::text[], $29::text[], $30::int8[], $31::int8[], \
     $32::text[], $33::int8[], $34::int8[], $35::int8[], $36::text[], $37::int8[], $38::int8[], \
     $39::int8[], $40::int8[], $41::text[]) \
     ON CONFLICT (id) DO UPDATE SET state = excluded.state, attempt = excluded.attempt, \
     input = excluded.input, output = excluded.output, error = excluded.error, \
     deps_pending = excluded.deps_pending, ready_at = excluded.ready_at, lease_id = excluded.lease_id, \
     lease_expires = excluded.lease_expires, attempt_deadline = excluded.attempt_deadline, \
     schedule_deadline = excluded.schedule_deadline, worker_id = excluded.worker_id, \
     start_time = excluded.start_time, end_time = excluded.end_time, rev = excluded.rev \
     WHERE sched_tasks.rev = excluded.rev - 1 RETURNING 1), \
     e AS (INSERT INTO sched_events (event_id, run_id, seq, kind, task_id, task_key, attempt, \
     worker_id, message, time, published) \
     SELECT *, $52 FROM UNNEST($42::text[], $43::text[], $44::int8[], $45::text[], $46::text[], \
     $47::text[], $48::int8[], $49::text[], $50::text[], $51::int8[]) RETURNING id, event_id), \
     n AS (SELECT pg_notify($53, $54) WHERE $55::bool) \
     SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM t), (SELECT count(*) FROM n), \
     ev.ids, ev.event_ids FROM (SELECT COALESCE(array_agg(id ORDER BY id), '{}') AS ids, \
     COALESCE(array_agg(event_id ORDER BY id), '{}') AS event_ids FROM e) AS ev"
);
pub const PG_INSERT_LOGS: &str = "INSERT INTO sched_task_logs (task_id, attempt, time, stream, line) \
     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[])";
pub const PG_NOTIFY_EACH: &str = "SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p";
pub const PG_ENDED_RUNS: &str =
    "SELECT id FROM sched_runs WHERE id = ANY($1) AND state <> 'running'";
/// Unpublished events in order, each with its task's trace context.
macro_rules! outbox {
    ($unpublished:literal, $limit:literal) => {
        concat!(
            "SELECT e.id, e.event_id, e.run_id, e.seq, e.kind, e.task_id, e.task_key, e.attempt, \
             e.worker_id, e.message, e.time, COALESCE(t.traceparent, '') \
             FROM sched_events e LEFT JOIN sched_tasks t ON t.id = e.task_id WHERE ",
            $unpublished,
            " ORDER BY e.id LIMIT ",
            $limit
        )
    };
}
/// Matches the partial index `WHERE NOT published`.
pub const PG_OUTBOX: &str = outbox!("NOT e.published", "$1");
/// Gauges of the whole database (see `stats.rs`): queued tasks per agent,
/// the dead-letter queue, the oldest unpublished event's time (0: none).
macro_rules! queue_stats {
    ($unpublished:literal) => {
        concat!(
            "SELECT 'queued', agent, COUNT(*) FROM sched_tasks \
             WHERE state IN ('ready', 'failed') GROUP BY agent \
             UNION ALL SELECT 'dead', '', COUNT(*) FROM sched_tasks WHERE state = 'dead' \
             UNION ALL SELECT 'outbox', '', COALESCE(MIN(time), 0) FROM sched_events WHERE ",
            $unpublished
        )
    };
}
pub const PG_QUEUE_STATS: &str = queue_stats!("NOT published");
pub const SQLITE_QUEUE_STATS: &str = queue_stats!("published = 0");
pub const PG_MARK_PUBLISHED: &str = "UPDATE sched_events SET published = true WHERE id = ANY($1)";

// SQLite: one row per statement, no locks.

macro_rules! sqlite_insert_run {
    () => {
        concat!(
            "INSERT INTO sched_runs (",
            run_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        )
    };
}
pub const SQLITE_INSERT_RUN: &str = concat!(
    sqlite_insert_run!(),
    " ON CONFLICT (created_by, idempotency_key) DO NOTHING"
);
/// Revision 1: new, or inserted early for its idempotency key.
pub const SQLITE_UPSERT_RUN: &str = concat!(
    sqlite_insert_run!(),
    " ON CONFLICT (id) DO UPDATE SET state = excluded.state, end_time = excluded.end_time, \
     last_seq = excluded.last_seq, rev = excluded.rev WHERE sched_runs.rev = excluded.rev - 1"
);
pub const SQLITE_UPDATE_RUN: &str = "UPDATE sched_runs SET state = ?2, end_time = ?3, last_seq = ?4, \
     rev = ?5 WHERE id = ?1 AND rev = ?5 - 1";
pub const SQLITE_INSERT_TASK: &str = concat!(
    "INSERT INTO sched_tasks (",
    task_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
     ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)"
);
/// Only what a transition can change, if still at the revision read.
pub const SQLITE_UPDATE_TASK: &str = "UPDATE sched_tasks SET state = ?2, attempt = ?3, input = ?4, \
     output = ?5, error = ?6, deps_pending = ?7, ready_at = ?8, lease_id = ?9, lease_expires = ?10, \
     attempt_deadline = ?11, schedule_deadline = ?12, worker_id = ?13, start_time = ?14, \
     end_time = ?15, rev = ?16 WHERE id = ?1 AND rev = ?16 - 1";
pub const SQLITE_RUN_ID_OF: &str = "SELECT run_id FROM sched_tasks WHERE id = ?1";
/// `?2`: a JSON list of ids to skip. The best claimable tasks of any agent.
pub const SQLITE_CLAIMABLE: &str = "SELECT id, priority, ready_at FROM sched_tasks \
     WHERE state IN ('ready', 'failed') AND ready_at <= ?1 \
     AND id NOT IN (SELECT value FROM json_each(?2)) \
     ORDER BY priority DESC, ready_at, id LIMIT ?3";
/// The same for agent `?4`, from its own queue (`sched_tasks_agent_queue`);
/// the store merges the lists of several agents.
pub const SQLITE_CLAIMABLE_OF: &str = "SELECT id, priority, ready_at FROM sched_tasks \
     WHERE agent = ?4 AND state IN ('ready', 'failed') AND ready_at <= ?1 \
     AND id NOT IN (SELECT value FROM json_each(?2)) \
     ORDER BY priority DESC, ready_at, id LIMIT ?3";
pub const SQLITE_OVERDUE: &str = "SELECT id FROM (SELECT id FROM sched_tasks WHERE state = 'leased' \
     AND lease_expires <= ?1 LIMIT ?2) \
     UNION ALL SELECT id FROM (SELECT id FROM sched_tasks WHERE state IN ('ready', 'failed') \
     AND schedule_deadline > 0 AND schedule_deadline <= ?1 LIMIT ?2) \
     UNION ALL SELECT id FROM (SELECT id FROM sched_tasks WHERE state = 'waiting' \
     AND schedule_deadline <= ?1 LIMIT ?2)";
pub const SQLITE_RUNNING_OF_KEY: &str =
    "SELECT COUNT(*) FROM sched_tasks WHERE state = 'leased' AND concurrency_key = ?1";
pub const SQLITE_RATE_LIMIT: &str =
    "SELECT per_second, burst, tat FROM sched_rate_limits WHERE agent = ?1";
pub const SQLITE_ANY_RATE_LIMIT: &str = "SELECT EXISTS (SELECT 1 FROM sched_rate_limits)";
pub const SQLITE_SAVE_RATE_TAT: &str = "UPDATE sched_rate_limits SET tat = ?2 WHERE agent = ?1";
pub const SQLITE_INSERT_AGENT_SPEC: &str = "INSERT INTO sched_agent_specs (agent, version, spec) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING";
/// With the id the writer assigned.
pub const SQLITE_INSERT_EVENT: &str = "INSERT INTO sched_events (event_id, run_id, seq, kind, \
     task_id, task_key, attempt, worker_id, message, time, published, id) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
pub const SQLITE_NEXT_EVENT_ID: &str = "SELECT COALESCE(MAX(id), 0) + 1 FROM sched_events";
pub const SQLITE_INSERT_LOG: &str = "INSERT INTO sched_task_logs (task_id, attempt, time, stream, line) \
     VALUES (?1, ?2, ?3, ?4, ?5)";
/// Matches the partial index `WHERE published = 0`.
pub const SQLITE_OUTBOX: &str = outbox!("e.published = 0", "?1");
pub const SQLITE_MARK_PUBLISHED: &str =
    "UPDATE sched_events SET published = 1 WHERE id = ?1 AND published = 0";

// Schedules (both engines).

macro_rules! schedule_columns {
    () => {
        "name, id, cron, time_zone, workflow, inputs, overlap, catchup_ms, paused, next_fire, \
         last_fire, last_run_id, owner, create_time, fired, skipped, missed, last_error, \
         claimed_until, rev"
    };
}

/// Inserts a schedule unless one has its name.
pub const INSERT_SCHEDULE: &str = concat!(
    "INSERT INTO sched_schedules (",
    schedule_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     $19, $20) ON CONFLICT (name) DO NOTHING"
);
pub const GET_SCHEDULE: &str = concat!(
    "SELECT ",
    schedule_columns!(),
    " FROM sched_schedules WHERE name = $1"
);
pub const LIST_SCHEDULES: &str = concat!(
    "SELECT ",
    schedule_columns!(),
    " FROM sched_schedules WHERE name > $1 ORDER BY name LIMIT $2"
);
/// Unpaused schedules whose tick is due and that no scheduler holds.
pub const DUE_SCHEDULES: &str = concat!(
    "SELECT ",
    schedule_columns!(),
    " FROM sched_schedules WHERE NOT paused AND next_fire <= $1 AND claimed_until <= $1 \
     ORDER BY next_fire LIMIT $2"
);
/// When the earliest unpaused schedule may next be acted on.
pub const NEXT_SCHEDULE_FIRE: &str = "SELECT MIN(CASE WHEN claimed_until > next_fire \
     THEN claimed_until ELSE next_fire END) FROM sched_schedules WHERE NOT paused";
/// Holds `$1` until `$3`, if it is still the schedule `$4` (not one
/// created again under its name) at revision `$2`, and not paused.
pub const CLAIM_SCHEDULE: &str = "UPDATE sched_schedules SET claimed_until = $3, rev = rev + 1 \
     WHERE name = $1 AND rev = $2 AND id = $4 AND NOT paused";
/// Records a tick and releases the claim, if `$1` is still the schedule
/// `$10` at revision `$9`. Leaves `paused` alone: a pause is never undone
/// by a tick's record.
pub const RECORD_TICK: &str = "UPDATE sched_schedules SET next_fire = $2, last_fire = $3, \
     last_run_id = $4, fired = $5, skipped = $6, missed = $7, last_error = $8, \
     claimed_until = 0, rev = rev + 1 WHERE name = $1 AND rev = $9 AND id = $10";
/// Pauses (`$2` true) or resumes from tick `$3`.
pub const PAUSE_SCHEDULE: &str = "UPDATE sched_schedules SET paused = $2, next_fire = $3 \
     WHERE name = $1";
pub const DELETE_SCHEDULE: &str = "DELETE FROM sched_schedules WHERE name = $1";

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_placeholders() {
        assert_eq!(
            sqlite!("SELECT $1, $12 WHERE a = $2"),
            "SELECT ?1, ?12 WHERE a = ?2"
        );
    }
}
