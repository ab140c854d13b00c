-- Messages in distributed mode: the messages themselves are in Kafka (one
-- Kafka topic per devcycle topic); what the mesh decides about them is
-- here, so that any scheduler can ack, redeliver or dead-letter them.
CREATE TABLE msg_topics (
    name           TEXT PRIMARY KEY,
    partitions     INTEGER NOT NULL,
    retention_s    BIGINT NOT NULL,
    max_deliveries INTEGER NOT NULL,
    owner          TEXT NOT NULL,
    publishers     TEXT NOT NULL,
    subscribers    TEXT NOT NULL,
    create_time    BIGINT NOT NULL
);
-- The first place of each message id: a copy published again (a retried
-- publish) is skipped by readers. Kept for the topic's retention.
CREATE TABLE msg_ids (
    topic        TEXT NOT NULL,
    id           TEXT NOT NULL,
    part         INTEGER NOT NULL,
    off          BIGINT NOT NULL,
    publish_time BIGINT NOT NULL,
    PRIMARY KEY (topic, id)
);
CREATE INDEX msg_ids_time ON msg_ids (topic, publish_time);
-- A group's next Kafka offset per partition; advanced by compare-and-set in
-- the transaction that makes what it read held.
CREATE TABLE msg_cursors (
    topic       TEXT NOT NULL,
    grp         TEXT NOT NULL,
    part        INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, grp, part)
);
-- Delivered and not acked: a copy of the message, so that redelivery and
-- dead letters never need Kafka's random access.
CREATE TABLE msg_held (
    topic        TEXT NOT NULL,
    grp          TEXT NOT NULL,
    id           TEXT NOT NULL,
    part         INTEGER NOT NULL,
    off          BIGINT NOT NULL,
    key          TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    headers      TEXT NOT NULL,
    publish_time BIGINT NOT NULL,
    delivery     INTEGER NOT NULL,
    holder       TEXT,
    visible_at   BIGINT NOT NULL,
    PRIMARY KEY (topic, grp, id)
);
CREATE INDEX msg_held_visible ON msg_held (topic, grp, visible_at);
CREATE INDEX msg_held_holder ON msg_held (topic, grp, holder) WHERE holder IS NOT NULL;
CREATE TABLE msg_dead (
    seq          BIGSERIAL PRIMARY KEY,
    topic        TEXT NOT NULL,
    grp          TEXT NOT NULL,
    id           TEXT NOT NULL,
    part         INTEGER NOT NULL,
    off          BIGINT NOT NULL,
    key          TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    headers      TEXT NOT NULL,
    publish_time BIGINT NOT NULL,
    delivery     INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    dead_time    BIGINT NOT NULL,
    UNIQUE (topic, grp, id)
);
CREATE TABLE msg_triggers (
    name           TEXT PRIMARY KEY,
    id             TEXT NOT NULL,
    topic          TEXT NOT NULL,
    workflow       TEXT NOT NULL,
    header_filter  TEXT NOT NULL,
    payload_filter TEXT NOT NULL,
    inputs         TEXT NOT NULL,
    owner          TEXT NOT NULL,
    create_time    BIGINT NOT NULL,
    fired          BIGINT NOT NULL DEFAULT 0,
    skipped        BIGINT NOT NULL DEFAULT 0,
    last_run_id    TEXT NOT NULL DEFAULT '',
    last_error     TEXT NOT NULL DEFAULT ''
);
