//! The scheduler's own dispatch path, without the network: submit a no-op
//! task to the engine, lease it to an in-process worker, record its result.
//! Every change is committed, as in production.
//!
//!   cargo bench -p devcycle-scheduler --bench dispatch            # SQLite
//!   DEVCYCLE_BENCH_DATABASE_URL=postgres://... cargo bench -p devcycle-scheduler --bench dispatch
//!   DEVCYCLE_BENCH_SCHEDULERS=2 DEVCYCLE_BENCH_DATABASE_URL=postgres://... cargo bench ...
//!
//! Prints throughput (a 20,000-task burst) and latency (2,000 tasks one at a
//! time, submit to result). With `DEVCYCLE_BENCH_SCHEDULERS=N` (PostgreSQL),
//! N engines share the database as N scheduler replicas do, each with its
//! own worker, and the burst is spread over them. The burst's CPU time, of
//! this process and of the PostgreSQL server's processes, is printed per
//! task: on a machine whose cores are all busy, that is what a projection
//! to more cores rests on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use devcycle::db::Database;
use devcycle::proto::registry::v1 as reg;
use devcycle::proto::scheduler::v1 as pb;
use devcycle_scheduler::engine::{Cmd, Engine, WorkerConn};
use devcycle_scheduler::hub::Hub;
use devcycle_scheduler::model::*;
use devcycle_scheduler::store::{SchedulerStore, Submit};
use tokio_util::sync::CancellationToken;

const BURST: usize = 20_000;
const SEQUENTIAL: usize = 2_000;
const SLOTS: u32 = 512;

fn noop_run(now: i64) -> (Submit, String) {
    let run_id = uuid::Uuid::now_v7().to_string();
    let task = TaskRow {
        id: uuid::Uuid::now_v7().to_string(),
        run_id: run_id.clone(),
        key: "t".into(),
        agent: "noop".into(),
        agent_version: "1.0.0".into(),
        state: TaskState::Ready,
        attempt: 0,
        priority: 0,
        input: "{}".into(),
        output: None,
        error: None,
        deps_pending: 0,
        depends_on: vec![],
        dependents: vec![],
        retry: RetryPolicy::default(),
        timeouts: Timeouts::default(),
        concurrency_key: String::new(),
        concurrency_limit: 0,
        ready_at: now,
        lease_id: String::new(),
        lease_expires: 0,
        attempt_deadline: 0,
        schedule_deadline: 0,
        worker_id: String::new(),
        create_time: now,
        start_time: 0,
        end_time: 0,
        rev: 0,
        traceparent: String::new(),
    };
    let run = RunRow {
        id: run_id.clone(),
        workflow: String::new(),
        workflow_revision: 0,
        state: RunState::Running,
        inputs: "{}".into(),
        idempotency_key: None,
        created_by: "user/bench".into(),
        failure_policy: FailurePolicy::FailFast,
        create_time: now,
        end_time: 0,
        last_seq: 0,
        rev: 0,
    };
    let spec = AgentSpecRow {
        agent: "noop".into(),
        version: "1.0.0".into(),
        spec: vec![],
    };
    (
        Submit {
            run,
            tasks: vec![task],
            agents: vec![spec],
        },
        run_id,
    )
}

/// A worker that answers every assignment at once, as the executor does
/// for builtin agents.
fn worker(engine: &Engine, id: &str) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let conn = engine.new_conn_id();
    engine
        .send(Cmd::Connect(WorkerConn {
            conn,
            worker_id: id.into(),
            agents: vec![],
            held: vec![],
            session: 1,
            tx,
        }))
        .unwrap();
    engine.send(Cmd::Credit { conn, n: SLOTS }).unwrap();
    let engine = engine.clone();
    tokio::spawn(async move {
        while let Some(Ok(m)) = rx.recv().await {
            if let Some(pb::work_response::Msg::Assignment(a)) = m.msg {
                let l = a.lease.unwrap();
                let lease = Lease {
                    task_id: l.task_id,
                    attempt: l.attempt,
                    lease_id: l.lease_id,
                };
                let _ = engine.send(Cmd::Result {
                    conn,
                    lease,
                    outcome: Outcome::Success {
                        output: "{}".into(),
                    },
                });
                let _ = engine.send(Cmd::Credit { conn, n: 1 });
            }
        }
    });
}

async fn one(engine: &Engine) -> Duration {
    let started = Instant::now();
    let (submit, run_id) = noop_run(devcycle::time::now_ms());
    let done = engine.hub.wait_for(&run_id);
    let spec = Arc::new(reg::AgentVersion {
        agent: "noop".into(),
        version: "1.0.0".into(),
        ..Default::default()
    });
    engine.submit(submit, vec![spec]).await.unwrap();
    let finished = done.await.unwrap();
    assert_eq!(finished.0.state, RunState::Succeeded);
    started.elapsed()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU seconds used so far by `pids` (utime + stime from `/proc/<pid>/stat`,
/// in USER_HZ, which is 100 on Linux). Processes that are gone count 0, so
/// an autovacuum worker that ends within the burst is not counted.
fn cpu_seconds(pids: &[i32]) -> f64 {
    let ticks = |pid: i32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command: state is field 3, utime 14.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        get(14) + get(15)
    };
    pids.iter().map(|p| ticks(*p)).sum::<u64>() as f64 / 100.0
}

/// The server processes working for this benchmark: the sessions on its
/// database and the WAL writer (empty for SQLite, or a server whose
/// processes this machine cannot see).
async fn server_pids(db: &Database) -> Vec<i32> {
    let Database::Postgres(pool) = db else {
        return Vec::new();
    };
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         OR backend_type = 'walwriter'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    pids.into_iter()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}/stat")).exists())
        .collect()
}

fn main() {
    devcycle::telemetry::init_logging(
        devcycle::telemetry::LogFormat::Human,
        "warn",
        "dispatch-bench",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let url = std::env::var("DEVCYCLE_BENCH_DATABASE_URL")
            .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
        let db = Database::open(&url).await.unwrap();
        let schedulers: usize = std::env::var("DEVCYCLE_BENCH_SCHEDULERS")
            .ok()
            .map(|n| n.parse().expect("DEVCYCLE_BENCH_SCHEDULERS is a number"))
            .unwrap_or(1);
        let mut engines = Vec::new();
        for i in 0..schedulers.max(1) {
            // Each engine is wired as a scheduler replica is (`lib.rs`): its
            // own pool, hub, listener and waiters for runs others finish.
            let hub = Hub::new();
            let stop = CancellationToken::new();
            let instance = format!("bench-{i}");
            let (store, pg): (Arc<dyn SchedulerStore>, _) = match &db {
                Database::Sqlite(_) if schedulers > 1 => {
                    panic!("DEVCYCLE_BENCH_SCHEDULERS needs PostgreSQL: SQLite has one writer")
                }
                Database::Sqlite(pool) => (
                    Arc::new(
                        devcycle_scheduler::store::sqlite::SqliteStore::open(pool.connect_options().get_filename(), false)
                            .unwrap(),
                    ),
                    None,
                ),
                Database::Postgres(_) => {
                    let Database::Postgres(pool) = Database::open(&url).await.unwrap() else {
                        unreachable!("the same URL")
                    };
                    let store = devcycle_scheduler::store::pg::PgStore::new(pool.clone(), instance.clone(), false);
                    (Arc::new(store), Some(pool))
                }
            };
            let (engine, _task) = Engine::start(Arc::clone(&store), Arc::clone(&hub), None, stop.clone());
            if let Some(pool) = pg {
                devcycle_scheduler::hub::wake_remote_waiters(Arc::clone(&hub), store, stop.clone());
                devcycle_scheduler::store::pg::listen(pool, instance.clone(), hub, engine.clone(), stop);
            }
            worker(&engine, &instance);
            engines.push(engine);
        }
        let engine = engines[0].clone();
        for _ in 0..200 {
            one(&engine).await;
        }
        let mut lat: Vec<Duration> = Vec::with_capacity(SEQUENTIAL);
        for _ in 0..SEQUENTIAL {
            lat.push(one(&engine).await);
        }
        lat.sort();
        let server = server_pids(&db).await;
        let me = [std::process::id() as i32];
        let cpu = (cpu_seconds(&me), cpu_seconds(&server));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..SLOTS as usize {
            let engine = engines[i % engines.len()].clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..BURST / SLOTS as usize {
                    one(&engine).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let n = (BURST / SLOTS as usize) * SLOTS as usize;
        let took = started.elapsed();
        // Sessions opened during the burst count from zero.
        let mut server = server;
        for p in server_pids(&db).await {
            if !server.contains(&p) {
                server.push(p);
            }
        }
        let (own, server_cpu) = (cpu_seconds(&me) - cpu.0, cpu_seconds(&server) - cpu.1);
        println!(
            "scheduler dispatch ({}, {} scheduler{}): {:.0} tasks/s ({n} in {:.2} s, {SLOTS} in flight); one at a time p50 {:.3} ms p99 {:.3} ms",
            db.engine(),
            engines.len(),
            if engines.len() == 1 { "" } else { "s" },
            n as f64 / took.as_secs_f64(),
            took.as_secs_f64(),
            ms(lat[lat.len() / 2]),
            ms(lat[lat.len() * 99 / 100]),
        );
        if server.is_empty() {
            println!("  burst CPU: {:.1} µs a task in the bench process", own * 1e6 / n as f64);
        } else {
            println!(
                "  burst CPU: {:.1} µs a task in the bench process (engines, clients, workers), {:.1} µs in PostgreSQL ({} processes); {:.2} of {} cores busy",
                own * 1e6 / n as f64,
                server_cpu * 1e6 / n as f64,
                server.len(),
                (own + server_cpu) / took.as_secs_f64(),
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            );
        }
    });
}
