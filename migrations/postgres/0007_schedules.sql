-- Cron schedules that start runs of a stored workflow. A scheduler claims a
-- due schedule (`claimed_until`, a compare-and-set on `rev`) before it acts
-- on the tick, and records the tick with another compare-and-set: one
-- decision per tick however many schedulers share the database.
CREATE TABLE sched_schedules (
    name          TEXT PRIMARY KEY,
    id            TEXT NOT NULL,
    cron          TEXT NOT NULL,
    time_zone     TEXT NOT NULL,
    workflow      TEXT NOT NULL,
    inputs        TEXT NOT NULL,
    overlap       TEXT NOT NULL,
    catchup_ms    BIGINT NOT NULL,
    paused        BOOLEAN NOT NULL,
    next_fire     BIGINT NOT NULL,
    last_fire     BIGINT NOT NULL,
    last_run_id   TEXT NOT NULL,
    owner         TEXT NOT NULL,
    create_time   BIGINT NOT NULL,
    fired         BIGINT NOT NULL,
    skipped       BIGINT NOT NULL,
    missed        BIGINT NOT NULL,
    last_error    TEXT NOT NULL,
    claimed_until BIGINT NOT NULL,
    rev           BIGINT NOT NULL
);
CREATE INDEX sched_schedules_due ON sched_schedules (next_fire) WHERE NOT paused;
