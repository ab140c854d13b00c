-- Scheduler: workflows, runs, the task queue, the event outbox, logs.
-- Times are milliseconds since the Unix epoch; structured values are JSON text.

CREATE TABLE sched_workflows (
    name        TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    spec        BLOB NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (name, revision)
);

-- The immutable agent versions tasks run, so dispatch needs no registry call.
CREATE TABLE sched_agent_specs (
    agent   TEXT NOT NULL,
    version TEXT NOT NULL,
    spec    BLOB NOT NULL,
    PRIMARY KEY (agent, version)
);

CREATE TABLE sched_runs (
    id                TEXT PRIMARY KEY,
    workflow          TEXT NOT NULL,
    workflow_revision BIGINT NOT NULL,
    state             TEXT NOT NULL,
    inputs            TEXT NOT NULL,
    idempotency_key   TEXT UNIQUE,
    created_by        TEXT NOT NULL,
    failure_policy    TEXT NOT NULL,
    create_time       BIGINT NOT NULL,
    end_time          BIGINT NOT NULL,
    last_seq          BIGINT NOT NULL,
    rev               BIGINT NOT NULL
);
-- Run ids are UUIDv7: ordering by id is ordering by creation time.

CREATE TABLE sched_tasks (
    id                TEXT PRIMARY KEY,
    run_id            TEXT NOT NULL,
    key               TEXT NOT NULL,
    agent             TEXT NOT NULL,
    agent_version     TEXT NOT NULL,
    state             TEXT NOT NULL,
    attempt           BIGINT NOT NULL,
    priority          BIGINT NOT NULL,
    input             TEXT NOT NULL,
    output            TEXT,
    error             TEXT,
    deps_pending      BIGINT NOT NULL,
    depends_on        TEXT NOT NULL,
    dependents        TEXT NOT NULL,
    retry             TEXT NOT NULL,
    timeouts          TEXT NOT NULL,
    concurrency_key   TEXT NOT NULL,
    concurrency_limit BIGINT NOT NULL,
    ready_at          BIGINT NOT NULL,
    lease_id          TEXT NOT NULL,
    lease_expires     BIGINT NOT NULL,
    attempt_deadline  BIGINT NOT NULL,
    schedule_deadline BIGINT NOT NULL,
    worker_id         TEXT NOT NULL,
    create_time       BIGINT NOT NULL,
    start_time        BIGINT NOT NULL,
    end_time          BIGINT NOT NULL,
    rev               BIGINT NOT NULL
);
CREATE INDEX sched_tasks_run ON sched_tasks (run_id);
-- The queue: priority, then age.
CREATE INDEX sched_tasks_queue ON sched_tasks (priority DESC, ready_at, id)
    WHERE state IN ('ready', 'failed');
CREATE INDEX sched_tasks_leases ON sched_tasks (lease_expires) WHERE state = 'leased';
CREATE INDEX sched_tasks_retries ON sched_tasks (ready_at) WHERE state = 'failed';
CREATE INDEX sched_tasks_deadlines ON sched_tasks (schedule_deadline)
    WHERE state IN ('ready', 'failed') AND schedule_deadline > 0;
CREATE INDEX sched_tasks_keys ON sched_tasks (concurrency_key)
    WHERE state = 'leased' AND concurrency_key <> '';
CREATE INDEX sched_tasks_dead ON sched_tasks (id) WHERE state = 'dead';

-- Rows locked by claimers as per-key mutexes; counts come from sched_tasks.
CREATE TABLE sched_concurrency (
    key TEXT PRIMARY KEY
);

CREATE TABLE sched_rate_limits (
    agent      TEXT PRIMARY KEY,
    per_second REAL NOT NULL,
    burst      BIGINT NOT NULL,
    tat        REAL NOT NULL
);

-- Events: the transactional outbox and each run's history, clustered by
-- (run, sequence). `id` is the commit order, assigned by the single writer;
-- only unpublished events are indexed by it.
CREATE TABLE sched_events (
    run_id    TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    id        INTEGER NOT NULL,
    event_id  TEXT NOT NULL,
    kind      TEXT NOT NULL,
    task_id   TEXT NOT NULL,
    task_key  TEXT NOT NULL,
    attempt   INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    message   TEXT NOT NULL,
    time      INTEGER NOT NULL,
    published INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE INDEX sched_events_outbox ON sched_events (id) WHERE published = 0;

CREATE TABLE sched_task_logs (
    id      INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    time    BIGINT NOT NULL,
    stream  TEXT NOT NULL,
    line    TEXT NOT NULL
);
CREATE INDEX sched_task_logs_task ON sched_task_logs (task_id, id);
