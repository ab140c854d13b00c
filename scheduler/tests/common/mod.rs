//! Shared helpers for the scheduler's tests: rows built directly, stores on
//! fresh databases.
#![allow(dead_code)]

pub mod mesh;
pub mod schedule;

use std::sync::Arc;

use devcycle::db::Database;
use devcycle_scheduler::model::*;
use devcycle_scheduler::store::sqlite::SqliteStore;
use devcycle_scheduler::store::{Applied, Batch, Claim, Op, OpResult, SchedulerStore, Submit};

pub type Store = Arc<dyn SchedulerStore>;

pub async fn sqlite() -> (Store, tempfile::TempDir) {
    let (store, dir) = sqlite_store().await;
    (store, dir)
}

pub async fn sqlite_store() -> (Arc<SqliteStore>, tempfile::TempDir) {
    let (dir, url) = devcycle::testkit::fresh_sqlite();
    let db = Database::open(&url).await.unwrap();
    let Database::Sqlite(pool) = &db else {
        unreachable!()
    };
    let path = pool.connect_options().get_filename().to_owned();
    (Arc::new(SqliteStore::open(path, true).unwrap()), dir)
}

pub async fn postgres() -> (Store, sqlx::PgPool) {
    let url = devcycle::testkit::fresh_postgres().await;
    let db = Database::open(&url).await.unwrap();
    let Database::Postgres(pool) = db else {
        unreachable!()
    };
    let store = devcycle_scheduler::store::pg::PgStore::new(
        pool.clone(),
        uuid::Uuid::new_v4().to_string(),
        true,
    );
    (Arc::new(store), pool)
}

/// One task of a test run.
pub struct T {
    pub key: &'static str,
    pub deps: &'static [&'static str],
    pub input: &'static str,
    pub priority: i32,
    pub max_attempts: u32,
    pub heartbeat_ms: u64,
    pub key_limit: Option<(&'static str, u32)>,
    pub schedule_to_start_ms: u64,
    pub agent: &'static str,
}

impl T {
    pub fn new(key: &'static str) -> Self {
        Self {
            key,
            deps: &[],
            input: "{}",
            priority: 0,
            max_attempts: 3,
            heartbeat_ms: 30_000,
            key_limit: None,
            schedule_to_start_ms: 0,
            agent: "noop",
        }
    }
    pub fn deps(mut self, d: &'static [&'static str]) -> Self {
        self.deps = d;
        self
    }
    pub fn input(mut self, i: &'static str) -> Self {
        self.input = i;
        self
    }
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = p;
        self
    }
    pub fn attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }
    pub fn heartbeat(mut self, ms: u64) -> Self {
        self.heartbeat_ms = ms;
        self
    }
    pub fn limit(mut self, key: &'static str, n: u32) -> Self {
        self.key_limit = Some((key, n));
        self
    }
    pub fn deadline(mut self, ms: u64) -> Self {
        self.schedule_to_start_ms = ms;
        self
    }
    pub fn agent(mut self, a: &'static str) -> Self {
        self.agent = a;
        self
    }
}

/// A run of `tasks` created at `now`.
pub fn run(tasks: Vec<T>, key: Option<&str>, policy: FailurePolicy, now: i64) -> Submit {
    let run_id = uuid::Uuid::now_v7().to_string();
    let ids: Vec<String> = tasks
        .iter()
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let rows = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let dependents = tasks
                .iter()
                .enumerate()
                .filter(|(_, o)| o.deps.contains(&t.key))
                .map(|(j, _)| ids[j].clone())
                .collect();
            let root = t.deps.is_empty();
            TaskRow {
                id: ids[i].clone(),
                run_id: run_id.clone(),
                key: t.key.into(),
                agent: t.agent.into(),
                agent_version: "1.0.0".into(),
                state: if root {
                    TaskState::Ready
                } else {
                    TaskState::Pending
                },
                attempt: 0,
                priority: t.priority,
                input: t.input.into(),
                output: None,
                error: None,
                deps_pending: t.deps.len() as u32,
                depends_on: t.deps.iter().map(|d| d.to_string()).collect(),
                dependents,
                retry: RetryPolicy {
                    max_attempts: t.max_attempts,
                    initial_backoff_ms: 100,
                    max_backoff_ms: 1000,
                    multiplier: 2.0,
                    jitter: 0.2,
                    non_retryable: vec!["fatal".into()],
                },
                timeouts: Timeouts {
                    schedule_to_start_ms: t.schedule_to_start_ms,
                    start_to_close_ms: 600_000,
                    heartbeat_ms: t.heartbeat_ms,
                },
                concurrency_key: t.key_limit.map(|k| k.0.to_owned()).unwrap_or_default(),
                concurrency_limit: t.key_limit.map(|k| k.1).unwrap_or(0),
                ready_at: now,
                lease_id: String::new(),
                lease_expires: 0,
                attempt_deadline: 0,
                schedule_deadline: if root && t.schedule_to_start_ms > 0 {
                    now + t.schedule_to_start_ms as i64
                } else {
                    0
                },
                worker_id: String::new(),
                create_time: now,
                start_time: 0,
                end_time: 0,
                rev: 0,
                traceparent: TRACEPARENT.into(),
            }
        })
        .collect();
    Submit {
        run: RunRow {
            id: run_id,
            workflow: "test".into(),
            workflow_revision: 1,
            state: RunState::Running,
            inputs: "{}".into(),
            idempotency_key: key.map(str::to_owned),
            created_by: "user/test".into(),
            failure_policy: policy,
            create_time: now,
            end_time: 0,
            last_seq: 0,
            rev: 0,
        },
        tasks: rows,
        agents: vec![AgentSpecRow {
            agent: "noop".into(),
            version: "1.0.0".into(),
            spec: vec![1, 2, 3],
        }],
    }
}

pub fn claim(worker: &str, max: u32) -> Claim {
    Claim {
        worker_id: worker.into(),
        agents: vec![],
        max,
    }
}

pub fn lease_of(t: &TaskRow) -> Lease {
    Lease {
        task_id: t.id.clone(),
        attempt: t.attempt,
        lease_id: t.lease_id.clone(),
    }
}

pub async fn submit(s: &Store, sub: Submit, now: i64) -> Applied {
    s.apply(Batch {
        now,
        submits: vec![sub],
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Submits runs while `worker` waits with `max` credits: one batch, as the
/// engine applies it, so the new tasks are leased straight away.
pub async fn submit_claim(
    s: &Store,
    now: i64,
    submits: Vec<Submit>,
    worker: &str,
    max: u32,
) -> Applied {
    s.apply(Batch {
        now,
        submits,
        claims: vec![claim(worker, max)],
        ..Default::default()
    })
    .await
    .unwrap()
}

pub async fn claims(s: &Store, now: i64, cs: Vec<Claim>) -> Vec<TaskRow> {
    s.apply(Batch {
        now,
        claims: cs,
        claim_from_db: true,
        ..Default::default()
    })
    .await
    .unwrap()
    .leased
}

pub async fn op(s: &Store, now: i64, op: Op) -> OpResult {
    let mut a = s
        .apply(Batch {
            now,
            ops: vec![op],
            ..Default::default()
        })
        .await
        .unwrap();
    a.results.remove(0)
}

pub async fn complete(s: &Store, now: i64, t: &TaskRow, output: &str) -> OpResult {
    op(
        s,
        now,
        Op::Complete {
            lease: lease_of(t),
            outcome: Outcome::Success {
                output: output.into(),
            },
        },
    )
    .await
}

pub async fn fail(s: &Store, now: i64, t: &TaskRow, kind: &str) -> OpResult {
    let e = TaskError {
        kind: kind.into(),
        message: "boom".into(),
        retryable: true,
    };
    op(
        s,
        now,
        Op::Complete {
            lease: lease_of(t),
            outcome: Outcome::Failure(e),
        },
    )
    .await
}

pub async fn sweep(s: &Store, now: i64) -> Applied {
    s.apply(Batch {
        now,
        sweep: true,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// The trace context every test task is submitted with.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

pub async fn task(s: &Store, id: &str) -> TaskRow {
    s.get_task(id).await.unwrap().unwrap()
}

pub async fn run_state(s: &Store, id: &str) -> RunState {
    s.get_run(id).await.unwrap().unwrap().0.state
}

pub async fn kinds(s: &Store, run: &str) -> Vec<EventKind> {
    s.run_events(run, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}
