//! Every statement the registry runs, as text shared by both engines: SQLite
//! accepts PostgreSQL's `$N` placeholders, so no rewriting is needed. The
//! only dynamic statement, discovery, is assembled in `sql_store.rs` from the
//! `FIND_*` pieces.

pub const HEAD_REVISION: &str = "SELECT COALESCE(MAX(revision), 0) FROM registry_events";

/// Takes the next revision; only correct under the write lock.
pub const APPEND_EVENT: &str = "INSERT INTO registry_events \
     (revision, kind, agent, version, worker_id, actor, time) \
     SELECT COALESCE(MAX(revision), 0) + 1, $1, $2, $3, $4, $5, $6 FROM registry_events \
     RETURNING revision";

pub const EVENTS_AFTER: &str = "SELECT revision, kind, agent, version, worker_id, actor, time \
     FROM registry_events \
     WHERE revision > $1 AND ($2 = '' OR agent = $2) ORDER BY revision LIMIT $3";

pub const AGENT_BY_NAME: &str = "SELECT a.name, a.owner, a.description, a.labels, a.live_version, \
     a.create_time, a.update_time \
     FROM registry_agents a WHERE a.name = $1";

pub const LIST_AGENTS: &str = "SELECT a.name, a.owner, a.description, a.labels, a.live_version, \
     a.create_time, a.update_time \
     FROM registry_agents a WHERE ($1 = '' OR a.owner = $1) AND a.name > $2 \
     ORDER BY a.name LIMIT $3";

pub const INSERT_AGENT: &str = "INSERT INTO registry_agents \
     (name, owner, description, labels, live_version, create_time, update_time) \
     VALUES ($1, $2, $3, $4, NULL, $5, $5)";

pub const UPDATE_AGENT: &str = "UPDATE registry_agents \
     SET owner = $2, description = $3, labels = $4, update_time = $5 WHERE name = $1";

pub const DELETE_AGENT: &str = "DELETE FROM registry_agents WHERE name = $1";

pub const DELETE_LABELS: &str = "DELETE FROM registry_agent_labels WHERE agent = $1";

pub const INSERT_LABEL: &str =
    "INSERT INTO registry_agent_labels (agent, key, value) VALUES ($1, $2, $3)";

/// Agents whose live version depends on `$1`.
pub const LIVE_DEPENDENTS: &str = "SELECT a.name, d.version, d.requirement \
     FROM registry_agents a JOIN registry_dependencies d \
     ON d.agent = a.name AND d.version = a.live_version \
     WHERE d.dep_agent = $1 ORDER BY a.name";

pub const INSERT_VERSION: &str = "INSERT INTO registry_versions \
     (agent, version, spec, publish_time, published_by) VALUES ($1, $2, $3, $4, $5)";

pub const INSERT_CAPABILITY: &str =
    "INSERT INTO registry_capabilities (agent, version, capability) VALUES ($1, $2, $3)";

pub const INSERT_DEPENDENCY: &str = "INSERT INTO registry_dependencies \
     (agent, version, dep_agent, requirement) VALUES ($1, $2, $3, $4)";

pub const VERSION: &str = "SELECT agent, version, spec, publish_time, published_by \
     FROM registry_versions WHERE agent = $1 AND version = $2";

pub const VERSIONS_OF: &str = "SELECT agent, version, spec, publish_time, published_by \
     FROM registry_versions WHERE agent = $1";

pub const VERSION_EXISTS: &str =
    "SELECT version FROM registry_versions WHERE agent = $1 AND version = $2";

pub const INSERT_DEPLOYMENT: &str = "INSERT INTO registry_deployments \
     (agent, version, previous_version, kind, actor, deploy_time, revision) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id";

pub const SET_LIVE_VERSION: &str =
    "UPDATE registry_agents SET live_version = $2, update_time = $3 WHERE name = $1";

pub const CURRENT_DEPLOYMENT: &str = "SELECT id, agent, version, previous_version, kind, actor, \
     deploy_time, revision \
     FROM registry_deployments WHERE agent = $1 ORDER BY id DESC LIMIT 1";

pub const LAST_DEPLOYMENT_OF: &str = "SELECT id, agent, version, previous_version, kind, actor, \
     deploy_time, revision \
     FROM registry_deployments WHERE agent = $1 AND version = $2 ORDER BY id DESC LIMIT 1";

pub const LIST_DEPLOYMENTS: &str = "SELECT id, agent, version, previous_version, kind, actor, \
     deploy_time, revision \
     FROM registry_deployments WHERE agent = $1 AND id < $2 ORDER BY id DESC LIMIT $3";

/// Discovery starts here; `$1` is the name to list after.
pub const FIND_AGENTS: &str = "SELECT a.name, a.owner, a.description, a.labels, a.live_version, \
     a.create_time, a.update_time, \
     v.version AS v_version, v.spec AS v_spec, \
     v.publish_time AS v_publish_time, v.published_by AS v_published_by \
     FROM registry_agents a JOIN registry_versions v \
     ON v.agent = a.name AND v.version = a.live_version WHERE a.name > $1";

/// Followed by the capability's placeholder and `)`.
pub const FIND_CAPABILITY: &str = " AND EXISTS (SELECT 1 FROM registry_capabilities c \
     WHERE c.agent = a.name AND c.version = a.live_version AND c.capability = ";

/// Followed by the key's placeholder, [`FIND_LABEL_VALUE`], the value's and `)`.
pub const FIND_LABEL: &str =
    " AND EXISTS (SELECT 1 FROM registry_agent_labels l WHERE l.agent = a.name AND l.key = ";

pub const FIND_LABEL_VALUE: &str = " AND l.value = ";

pub const FIND_ORDER: &str = " ORDER BY a.name LIMIT ";

pub const UPSERT_WORKER: &str = "INSERT INTO registry_workers \
     (id, agents, capacity, in_flight, address, labels, state, register_time, last_heartbeat) \
     VALUES ($1, $2, $3, $4, $5, $6, 'up', $7, $7) \
     ON CONFLICT (id) DO UPDATE SET agents = excluded.agents, capacity = excluded.capacity, \
     in_flight = excluded.in_flight, address = excluded.address, labels = excluded.labels, \
     state = 'up', register_time = excluded.register_time, \
     last_heartbeat = excluded.last_heartbeat";

pub const DELETE_WORKER_AGENTS: &str = "DELETE FROM registry_worker_agents WHERE worker_id = $1";

pub const INSERT_WORKER_AGENT: &str =
    "INSERT INTO registry_worker_agents (worker_id, agent) VALUES ($1, $2)";

pub const WORKER: &str = "SELECT id, agents, capacity, in_flight, address, labels, state, \
     register_time, last_heartbeat \
     FROM registry_workers WHERE id = $1";

pub const HEARTBEAT: &str = "UPDATE registry_workers \
     SET in_flight = $2, state = $3, last_heartbeat = $4 WHERE id = $1";

pub const DELETE_WORKER: &str = "DELETE FROM registry_workers WHERE id = $1";

/// Workers that serve `$1`, or every agent (no list), or all when `$1` is empty.
pub const LIST_WORKERS: &str = "SELECT w.id, w.agents, w.capacity, w.in_flight, w.address, \
     w.labels, w.state, w.register_time, w.last_heartbeat \
     FROM registry_workers w WHERE w.id > $2 AND ($1 = '' OR w.agents = '[]' OR EXISTS \
     (SELECT 1 FROM registry_worker_agents wa WHERE wa.worker_id = w.id AND wa.agent = $1)) \
     ORDER BY w.id LIMIT $3";

pub const STALE_WORKERS: &str = "SELECT id FROM registry_workers \
     WHERE state <> 'down' AND last_heartbeat < $1 ORDER BY id";

pub const MARK_DOWN: &str = "UPDATE registry_workers SET state = 'down' \
     WHERE state <> 'down' AND last_heartbeat < $1";
