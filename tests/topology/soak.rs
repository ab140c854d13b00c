use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::mesh::*;

/// Sustained load (`scripts/soak.sh --minutes N`): tasks at a fixed rate
/// through both schedulers, an executor killed and restarted every 20 s.
/// Reports accepted, completed, dead and duplicated attempts, and the
/// memory of the long-lived processes over time; after warm-up (the first
/// quarter) their memory must not grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of minutes: scripts/soak.sh runs it"]
async fn soak() {
    let seconds = env_u64("SOAK_SECONDS", 120);
    let rate = env_u64("SOAK_RATE", 200);
    let mut t = Topology::start().await;
    t.apply("examples/agents/noop.yaml");
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
    let executors = [
        ("exec-x", format!("{s1},{s0}")),
        ("exec-y", format!("{s0},{s1}")),
        ("exec-z", format!("{s1},{s0}")),
    ];
    for (id, to) in &executors {
        t.executor(id, to);
    }
    let db = sqlx::PgPool::connect(&t.db_url).await.unwrap();
    let long_lived = [
        "registry-0",
        "registry-1",
        "scheduler-0",
        "scheduler-1",
        "gateway",
    ];
    let pids: Vec<(&str, u32)> = long_lived
        .iter()
        .map(|n| (*n, t.procs[*n].child.id()))
        .collect();

    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let accepted = Arc::new(AtomicUsize::new(0));
    // Submits `rate` tasks a second, in ticks of 50 ms, to both schedulers.
    let submitter = {
        let clients = [t.client(0), t.client(1)];
        let accepted = Arc::clone(&accepted);
        tokio::spawn(async move {
            let per_tick = (rate / 20).max(1) as usize;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut n = 0usize;
            while Instant::now() < until {
                tick.tick().await;
                let mut calls = tokio::task::JoinSet::new();
                for _ in 0..per_tick {
                    n += 1;
                    let agent = if n.is_multiple_of(20) { "nap" } else { "noop" };
                    let req = one(agent, format!("topo-soak-{n}"), 2000);
                    let mut clients = clients.clone();
                    let first = n % 2;
                    calls.spawn(async move { submit_task(&mut clients, first, req).await });
                }
                let done = calls.join_all().await.len();
                accepted.fetch_add(done, Ordering::Relaxed);
            }
        })
    };
    let counts = || async {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM sched_runs WHERE idempotency_key LIKE 'topo-%' GROUP BY state",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        rows.into_iter().collect::<BTreeMap<String, i64>>()
    };
    let mut samples: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut kills = 0;
    let mut next_kill = start + Duration::from_secs(20);
    eprintln!("soak: {seconds} s at {rate} tasks/s; RSS in MiB of {long_lived:?}");
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if Instant::now() >= next_kill && Instant::now() + Duration::from_secs(5) < until {
            let (id, to) = &executors[kills % executors.len()];
            t.kill(id);
            tokio::time::sleep(Duration::from_secs(1)).await;
            t.executor(id, to);
            kills += 1;
            next_kill += Duration::from_secs(20);
        }
        let rss: Vec<u64> = pids.iter().map(|(_, pid)| rss_kib(*pid)).collect();
        let at = start.elapsed().as_secs();
        let c = counts().await;
        eprintln!(
            "soak: {at:>4} s accepted {:>6} succeeded {:>6} failed {:>3} running {:>5} | RSS {}",
            accepted.load(Ordering::Relaxed),
            c.get("succeeded").unwrap_or(&0),
            c.get("failed").unwrap_or(&0),
            c.get("running").unwrap_or(&0),
            rss.iter()
                .map(|k| format!("{:.1}", *k as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(" ")
        );
        samples.push((at, rss));
    }
    submitter.await.unwrap();
    let accepted = accepted.load(Ordering::Relaxed) as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = counts().await;
        let ended = c.get("succeeded").unwrap_or(&0) + c.get("failed").unwrap_or(&0);
        if ended == accepted && !c.contains_key("running") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "runs did not end: {c:?} of {accepted}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = counts().await;
    let twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT task_id, attempt FROM sched_events \
         WHERE kind IN ('task_succeeded', 'task_failed', 'task_dead') AND attempt > 0 \
         GROUP BY task_id, attempt HAVING count(*) > 1) AS d",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM sched_tasks WHERE state = 'dead'")
        .fetch_one(&db)
        .await
        .unwrap();
    eprintln!(
        "soak: done: accepted {accepted}, succeeded {}, failed {} (dead tasks {dead}), attempts recorded twice {twice}, executor kills {kills}",
        c.get("succeeded").unwrap_or(&0),
        c.get("failed").unwrap_or(&0),
    );
    assert_eq!(twice, 0, "no attempt's outcome is recorded twice");
    assert_eq!(
        c.get("succeeded").unwrap_or(&0) + c.get("failed").unwrap_or(&0),
        accepted
    );
    // Memory after warm-up: the last sample against the largest of the
    // samples at the end of the first quarter, with 10% and 4 MiB for
    // allocator noise.
    let warm = seconds / 4;
    let Some((_, at_warm)) = samples.iter().rev().find(|(at, _)| *at <= warm.max(5)) else {
        return;
    };
    let (_, last) = samples.last().unwrap();
    for (i, (name, _)) in pids.iter().enumerate() {
        let limit = at_warm[i] + at_warm[i] / 10 + 4096;
        assert!(
            last[i] <= limit,
            "{name}: RSS grew after warm-up: {} KiB at {warm} s, {} KiB at the end",
            at_warm[i],
            last[i]
        );
    }
}
