-- Idempotency keys belong to who submits: one user's key never names (or
-- squats) another user's run.
ALTER TABLE sched_runs DROP CONSTRAINT sched_runs_idempotency_key_key;
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
