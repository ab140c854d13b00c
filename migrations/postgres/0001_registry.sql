-- Agent Registry. Times are milliseconds since the Unix epoch; JSON is text.

CREATE TABLE registry_agents (
    name         TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    description  TEXT NOT NULL,
    labels       TEXT NOT NULL,
    live_version TEXT,
    create_time  BIGINT NOT NULL,
    update_time  BIGINT NOT NULL
);
CREATE INDEX registry_agents_owner ON registry_agents (owner, name);

CREATE TABLE registry_agent_labels (
    agent TEXT NOT NULL REFERENCES registry_agents (name) ON DELETE CASCADE,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (agent, key)
);
CREATE INDEX registry_agent_labels_kv ON registry_agent_labels (key, value, agent);

CREATE TABLE registry_versions (
    agent        TEXT NOT NULL REFERENCES registry_agents (name) ON DELETE CASCADE,
    version      TEXT NOT NULL,
    spec         TEXT NOT NULL,
    publish_time BIGINT NOT NULL,
    published_by TEXT NOT NULL,
    PRIMARY KEY (agent, version)
);

CREATE TABLE registry_capabilities (
    agent      TEXT NOT NULL,
    version    TEXT NOT NULL,
    capability TEXT NOT NULL,
    PRIMARY KEY (capability, agent, version),
    FOREIGN KEY (agent, version) REFERENCES registry_versions (agent, version) ON DELETE CASCADE
);

CREATE TABLE registry_dependencies (
    agent       TEXT NOT NULL,
    version     TEXT NOT NULL,
    dep_agent   TEXT NOT NULL,
    requirement TEXT NOT NULL,
    PRIMARY KEY (agent, version, dep_agent),
    FOREIGN KEY (agent, version) REFERENCES registry_versions (agent, version) ON DELETE CASCADE
);
CREATE INDEX registry_dependencies_dep ON registry_dependencies (dep_agent);

CREATE TABLE registry_deployments (
    id               BIGSERIAL PRIMARY KEY,
    agent            TEXT NOT NULL REFERENCES registry_agents (name) ON DELETE CASCADE,
    version          TEXT NOT NULL,
    previous_version TEXT,
    kind             TEXT NOT NULL,
    actor            TEXT NOT NULL,
    deploy_time      BIGINT NOT NULL,
    revision         BIGINT NOT NULL
);
CREATE INDEX registry_deployments_agent ON registry_deployments (agent, id);

CREATE TABLE registry_workers (
    id             TEXT PRIMARY KEY,
    agents         TEXT NOT NULL,
    capacity       BIGINT NOT NULL,
    in_flight      BIGINT NOT NULL,
    address        TEXT NOT NULL,
    labels         TEXT NOT NULL,
    state          TEXT NOT NULL,
    register_time  BIGINT NOT NULL,
    last_heartbeat BIGINT NOT NULL
);
CREATE INDEX registry_workers_liveness ON registry_workers (state, last_heartbeat);

CREATE TABLE registry_worker_agents (
    worker_id TEXT NOT NULL REFERENCES registry_workers (id) ON DELETE CASCADE,
    agent     TEXT NOT NULL,
    PRIMARY KEY (agent, worker_id)
);

-- One row per change; revisions are assigned under a lock, so they are
-- gapless and in commit order.
CREATE TABLE registry_events (
    revision  BIGINT PRIMARY KEY,
    kind      TEXT NOT NULL,
    agent     TEXT NOT NULL,
    version   TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    actor     TEXT NOT NULL,
    time      BIGINT NOT NULL
);
