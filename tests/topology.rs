//! The distributed mesh as separate processes of the real binary: two
//! registries, two schedulers and three executors on one PostgreSQL and a
//! Kafka-protocol broker, with a gateway in front. 3,000 tasks and 20
//! lifecycle runs go in through both schedulers (and the gateway) while one
//! scheduler and one executor are killed (-9) and another executor is
//! stopped past its leases. Then every accepted run has ended, succeeded or
//! with a dead-lettered task; no attempt's outcome is recorded twice; Kafka
//! has every event of every run, once per id and in order; and on either
//! replica a waiting submit is answered within a second of the run's end
//! and a cancel kills the agent's process within a second.

mod common;
#[path = "topology/mesh.rs"]
mod mesh;
#[path = "topology/soak.rs"]
mod soak;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::processes_with;
use devcycle::proto::scheduler::v1 as pb;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};

use mesh::*;

const TASKS: usize = 3000;
const NAPS: usize = 150;
const CI_RUNS: usize = 20;

/// On replica `i`: waiting submits are answered within a second of their
/// run's end, and a cancel kills the agent's process within a second.
/// Returns the worst (wait, cancel) latencies.
async fn check_replica(t: &Topology, i: usize) -> (i64, Duration) {
    let mut c = t.client(i);
    let mut worst_wait = 0;
    for _ in 0..5 {
        let mut req = one("noop", String::new(), 2000);
        req.wait = true;
        req.wait_timeout_ms = 30_000;
        let run = c.submit_task(req).await.unwrap().into_inner().run.unwrap();
        let answered = devcycle::time::now_ms();
        assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
        let ended = devcycle::time::from_timestamp(run.end_time.as_ref()).unwrap();
        worst_wait = worst_wait.max(answered - ended);
    }
    assert!(
        worst_wait < 1000,
        "replica {i}: answered {worst_wait} ms after the run ended"
    );
    let run = c
        .submit_task(one("hang", String::new(), 5000))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    // The agent sleeps for 3000.<the task id's digits> seconds: a command
    // line no other process has.
    let digits: String = run.tasks[0]
        .id
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let marker = format!("3000.{digits}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_with(&format!("sleep {marker}")) == 0 {
        assert!(Instant::now() < deadline, "the agent never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = Instant::now();
    c.cancel_run(pb::CancelRunRequest {
        run_id: run.id,
        reason: "topology check".into(),
    })
    .await
    .unwrap();
    while processes_with(&format!("sleep {marker}")) > 0 {
        assert!(
            cancelled.elapsed() < Duration::from_secs(1),
            "replica {i}: the process outlived its cancel by a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (worst_wait, cancelled.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_survives_killed_and_stopped_processes() {
    let started = Instant::now();
    let mut t = Topology::start().await;
    t.apply("examples/agents/noop.yaml");
    for a in ["checkout", "build", "test", "lint", "review", "report"] {
        t.apply(&format!("examples/agents/{a}.yaml"));
    }
    t.apply(
        r#"name: hang
owner: test
version: 1.0.0
runtime:
  process:
    command: /bin/sh
    args: ["-c", "sleep 3000.$(printf %s \"$DEVCYCLE_TASK_ID\" | tr -dc 0-9)"]
capabilities: [test.hang]
"#,
    );
    t.apply(
        r#"name: nap
owner: test
version: 1.0.0
runtime:
  process:
    command: /bin/sh
    args: ["-c", "sleep 0.2; echo {}"]
capabilities: [test.nap]
"#,
    );
    let (s0, s1) = (t.schedulers[0].clone(), t.schedulers[1].clone());
    t.executor("exec-x", &format!("{s1},{s0}"));
    t.executor("exec-y", &format!("{s0},{s1}"));
    t.executor("exec-z", &format!("{s1},{s0}"));
    let before = [check_replica(&t, 0).await, check_replica(&t, 1).await];

    // The workload: through both schedulers, and lifecycle runs through the
    // gateway (which routes to scheduler 0) and directly to scheduler 1.
    let db = sqlx::PgPool::connect(&t.db_url).await.unwrap();
    let accepted: Arc<parking_lot::Mutex<HashSet<String>>> = Default::default();
    let next = Arc::new(AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for s in 0..8 {
        let mut clients = [t.client(0), t.client(1)];
        let (accepted, next) = (Arc::clone(&accepted), Arc::clone(&next));
        submitters.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= TASKS {
                    return;
                }
                let req = if i.is_multiple_of(TASKS / NAPS) {
                    one("nap", format!("topo-{i}"), 1500)
                } else {
                    one("noop", format!("topo-{i}"), 2000)
                };
                let id = submit_task(&mut clients, s, req).await;
                accepted.lock().insert(id);
            }
        }));
    }
    let (mut gw, token) = t.gateway_client().await;
    let mut direct = t.client(1);
    let mut ci_ids = Vec::new();
    for i in 0..CI_RUNS {
        let key = format!("topo-ci-{i}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let id = loop {
            let r = if i % 2 == 0 {
                gw.submit_run(bearer(ci_run(key.clone()), &token)).await
            } else {
                direct.submit_run(ci_run(key.clone())).await
            };
            match r {
                Ok(r) => break r.into_inner().run.unwrap().id,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{e:?}");
                    direct = t.client(0);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        ci_ids.push(id);
    }
    accepted.lock().extend(ci_ids);

    // Mid-run: scheduler 1 and executor x die, executor y stops past its
    // leases (1.5-2 s) and resumes; x comes back as a new process.
    let ended = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM sched_runs WHERE state <> 'running' AND idempotency_key LIKE 'topo-%'",
        )
        .fetch_one(&db)
        .await
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while ended().await < (TASKS / 4) as i64 {
        assert!(Instant::now() < deadline, "the workload does not progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fault = Instant::now();
    t.kill("scheduler-1");
    t.kill("exec-x");
    t.signal("exec-y", "STOP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.executor("exec-x", &format!("{s1},{s0}"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    t.signal("exec-y", "CONT");
    for s in submitters {
        s.await.unwrap();
    }
    let accepted: HashSet<String> = accepted.lock().clone();
    assert_eq!(
        accepted.len(),
        TASKS + CI_RUNS,
        "one run per idempotency key"
    );

    // Every accepted run ends.
    let deadline = Instant::now() + Duration::from_secs(240);
    while ended().await < accepted.len() as i64 {
        assert!(
            Instant::now() < deadline,
            "runs still running: {}",
            accepted.len() as i64 - ended().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = fault.elapsed();
    let states: BTreeMap<String, i64> = sqlx::query_as(
        "SELECT state, count(*) FROM sched_runs WHERE idempotency_key LIKE 'topo-%' GROUP BY state",
    )
    .fetch_all(&db)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let succeeded = states.get("succeeded").copied().unwrap_or(0);
    let failed = states.get("failed").copied().unwrap_or(0);
    assert_eq!(
        succeeded + failed,
        accepted.len() as i64,
        "completed + dead-lettered = accepted: {states:?}"
    );
    let failed_without_dead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sched_runs r WHERE r.state = 'failed' AND r.idempotency_key LIKE 'topo-%' \
         AND NOT EXISTS (SELECT 1 FROM sched_tasks t WHERE t.run_id = r.id AND t.state = 'dead')",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        failed_without_dead, 0,
        "a failed run has a dead-lettered task"
    );
    let twice: Vec<(String, i64)> = sqlx::query_as(
        "SELECT task_id, attempt FROM sched_events \
         WHERE kind IN ('task_succeeded', 'task_failed', 'task_dead') AND attempt > 0 \
         GROUP BY task_id, attempt HAVING count(*) > 1",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(twice.is_empty(), "attempts recorded twice: {twice:?}");
    let attempts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sched_events WHERE kind = 'task_leased' AND run_id IN \
         (SELECT id FROM sched_runs WHERE idempotency_key LIKE 'topo-%')",
    )
    .fetch_one(&db)
    .await
    .unwrap();

    // Kafka: every event of every run, once per id after dedupe, in order.
    let last: HashMap<String, i64> =
        sqlx::query_as("SELECT id, last_seq FROM sched_runs WHERE idempotency_key LIKE 'topo-%'")
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let (received, duplicates) = read_events(&t, &last).await;

    let after = check_replica(&t, 0).await;
    eprintln!(
        "topology: accepted {} (succeeded {succeeded}, failed {failed}), leases {attempts}, \
         all ended {:.1} s after the faults, {:.1} s in all; kafka {received} messages, \
         {duplicates} duplicates; wait answered within {} / {} / {} ms of the run's end, \
         cancel within {:?} / {:?} / {:?} (replica 0, replica 1, survivor)",
        accepted.len(),
        drained.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        before[0].0,
        before[1].0,
        after.0,
        before[0].1,
        before[1].1,
        after.1,
    );
    assert!(
        t.log("exec-x").contains("connected to the scheduler"),
        "the restarted executor joined"
    );
}

/// Reads the run events topic until every run in `last` (id → last
/// sequence) is complete; checks each run's sequences arrive in order once
/// duplicates are dropped by id. Returns (messages read, duplicates).
async fn read_events(t: &Topology, last: &HashMap<String, i64>) -> (usize, usize) {
    let topic = devcycle_scheduler::run_events_topic(&t.config.kafka.topic_prefix);
    let c: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &t.config.kafka.brokers)
        .set("group.id", format!("topology-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[&topic]).unwrap();
    let mut seen = HashSet::new();
    let mut got: HashMap<String, Vec<i64>> = HashMap::new();
    let (mut received, mut duplicates) = (0, 0);
    let mut complete = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while complete < last.len() {
        assert!(
            Instant::now() < deadline,
            "kafka has {complete} of {} runs complete",
            last.len()
        );
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), c.recv()).await else {
            continue;
        };
        received += 1;
        let e = pb::RunEvent::decode(m.payload().unwrap_or_default()).unwrap();
        assert_eq!(m.key(), Some(e.run_id.as_bytes()), "keyed by run id");
        if !seen.insert(e.event_id.clone()) {
            duplicates += 1;
            continue;
        }
        let Some(&want) = last.get(&e.run_id) else {
            continue;
        };
        let seqs = got.entry(e.run_id.clone()).or_default();
        assert_eq!(
            e.sequence,
            seqs.len() as i64 + 1,
            "run {}: events out of order: {seqs:?} then {}",
            e.run_id,
            e.sequence
        );
        seqs.push(e.sequence);
        if e.sequence == want {
            complete += 1;
        }
    }
    (received, duplicates)
}
