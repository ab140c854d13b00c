-- Idempotency keys belong to who submits: one user's key never names (or
-- squats) another user's run. SQLite cannot drop a column's UNIQUE, so the
-- table is rebuilt.
CREATE TABLE sched_runs_new (
    id                TEXT PRIMARY KEY,
    workflow          TEXT NOT NULL,
    workflow_revision BIGINT NOT NULL,
    state             TEXT NOT NULL,
    inputs            TEXT NOT NULL,
    idempotency_key   TEXT,
    created_by        TEXT NOT NULL,
    failure_policy    TEXT NOT NULL,
    create_time       BIGINT NOT NULL,
    end_time          BIGINT NOT NULL,
    last_seq          BIGINT NOT NULL,
    rev               BIGINT NOT NULL
);
INSERT INTO sched_runs_new SELECT id, workflow, workflow_revision, state, inputs, idempotency_key,
    created_by, failure_policy, create_time, end_time, last_seq, rev FROM sched_runs;
DROP TABLE sched_runs;
ALTER TABLE sched_runs_new RENAME TO sched_runs;
CREATE UNIQUE INDEX sched_runs_key ON sched_runs (created_by, idempotency_key);

-- Workflows have an owner (who stored the first revision); only the owner,
-- maintainers and admins store new revisions. Rows from before have none.
ALTER TABLE sched_workflows ADD COLUMN owner TEXT NOT NULL DEFAULT '';

-- Certificates of an identity issued before `revoked_before` are refused by
-- every service until `expire_time`, when all of them have expired.
CREATE TABLE mesh_revocations (
    identity       TEXT PRIMARY KEY,
    revoked_before BIGINT NOT NULL,
    expire_time    BIGINT NOT NULL
);

-- The last TOTP step a user's code was accepted for: a code is good once.
ALTER TABLE gw_users ADD COLUMN totp_last_step BIGINT NOT NULL DEFAULT 0;
