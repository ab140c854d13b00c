-- The gateway: users, worker join tokens, and the audit log.

CREATE TABLE gw_users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    -- Comma-separated role names.
    roles         TEXT NOT NULL,
    -- Base32 TOTP secret once enrolled and verified; pending until then.
    totp_secret   TEXT,
    totp_pending  TEXT,
    create_time   BIGINT NOT NULL
);

CREATE TABLE gw_join_tokens (
    -- SHA-256 of the token, hex; the token itself is never stored.
    token_hash  TEXT PRIMARY KEY,
    worker_id   TEXT NOT NULL,
    expire_time BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);

CREATE TABLE gw_audit (
    -- UUIDv7: ordered by time.
    id             TEXT PRIMARY KEY,
    time           BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    method         TEXT NOT NULL,
    target         TEXT NOT NULL,
    outcome        INTEGER NOT NULL,
    status_code    TEXT NOT NULL,
    client_address TEXT NOT NULL
);
CREATE INDEX gw_audit_actor ON gw_audit (actor, id);
