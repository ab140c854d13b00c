//! `devcycle bench`: no-op tasks through the real mesh — client → scheduler
//! → executor → scheduler → client, mTLS on every hop, every state change
//! committed. The mesh runs as a separate `devcycle up` process so that its
//! memory is measured alone.
//!
//! Phases: warm-up, latency (one task at a time), throughput (a burst),
//! then on request growth (`--grow`: throughput per window as the tables
//! fill) and queued memory (`--queued`: tasks no worker serves).

mod load;
mod mesh;

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use devcycle::proto::scheduler::v1 as pb;
use serde_json::{Value, json};

use load::{Client, burst, line, one, percentiles};
use mesh::{Mesh, NOOP, PARKED};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Tasks in the throughput burst.
    #[arg(long, default_value_t = 20_000)]
    burst: usize,
    /// Tasks submitted one at a time for latency.
    #[arg(long, default_value_t = 2_000)]
    sequential: usize,
    /// Submits in flight during the burst.
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Client connections used by the burst.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Executor slots.
    #[arg(long, default_value_t = 256)]
    slots: u32,
    /// Run the scheduler on PostgreSQL instead of SQLite (a URL whose
    /// database the benchmark may create tables in).
    #[arg(long)]
    postgres: Option<String>,
    /// After the burst, run this many more tasks in windows of `--window`
    /// and report each window's throughput, to show whether cost grows
    /// with the tables (e.g. 1000000). Counts of stored tasks assume the
    /// database was empty.
    #[arg(long, default_value_t = 0)]
    grow: usize,
    /// Tasks per window of `--grow`.
    #[arg(long, default_value_t = 100_000)]
    window: usize,
    /// Right after the warm-up, queue this many tasks for an agent no worker
    /// serves and report the mesh's memory per 100,000 queued tasks (e.g.
    /// 100000). They stay queued through the later phases.
    #[arg(long, default_value_t = 0)]
    queued: usize,
}

const MIB: f64 = 1024.0;

/// Lets the mesh finish what a phase left behind before memory is read.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

pub async fn run(args: BenchArgs, as_json: bool) -> anyhow::Result<()> {
    if args.grow > 0 && args.window == 0 {
        bail!("--window must be at least 1");
    }
    let mesh = mesh::start(&args)?;
    let agents: &[&str] = if args.queued > 0 {
        &[NOOP, PARKED]
    } else {
        &[NOOP]
    };
    mesh.deploy_noops(agents).await?;
    let mut c = mesh.scheduler()?;

    // Warm up: connections, caches, the executor's stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while one(&mut c, NOOP, true).await.is_err() {
        if Instant::now() > deadline {
            bail!("the mesh did not run a no-op task within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..200 {
        one(&mut c, NOOP, true).await?;
    }
    settle().await;
    let idle_rss = mesh.rss_kib();
    let clients: Vec<Client> = (0..args.connections.max(1))
        .map(|_| mesh.scheduler())
        .collect::<anyhow::Result<_>>()?;
    // Queued memory first, while little else has passed through the mesh.
    let parked = if args.queued > 0 {
        Some(queued(&args, &mesh, &clients).await?)
    } else {
        None
    };

    // Latency: one at a time.
    let mut lat = load::histogram();
    for _ in 0..args.sequential {
        load::record(&mut lat, one(&mut c, NOOP, true).await?);
    }

    // Throughput: a burst, `concurrency` in flight over a few connections.
    let cpu_before = mesh.cpu_ms();
    let b = burst(&clients, args.burst, args.concurrency, NOOP, true).await?;
    let throughput = b.per_second(args.burst);
    // Steadier than throughput on a shared machine: what a task costs.
    let cpu_per_task = (mesh.cpu_ms() - cpu_before) as f64 * 1000.0 / args.burst.max(1) as f64;
    settle().await;
    let after_rss = mesh.rss_kib();

    let engine = if args.postgres.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let mut report = json!({
        "engine": engine,
        "burst_tasks": args.burst,
        "burst_seconds": b.elapsed.as_secs_f64(),
        "tasks_per_second": throughput.round(),
        "cpu_us_per_task": cpu_per_task.round(),
        "sequential_tasks": args.sequential,
        "p50_ms": lat.value_at_quantile(0.50) as f64 / 1000.0,
        "p90_ms": lat.value_at_quantile(0.90) as f64 / 1000.0,
        "p99_ms": lat.value_at_quantile(0.99) as f64 / 1000.0,
        "sequential_latency": percentiles(&lat),
        "burst_latency": percentiles(&b.latency),
        "idle_rss_mib": idle_rss as f64 / MIB,
        "after_burst_rss_mib": after_rss as f64 / MIB,
        "concurrency": args.concurrency,
        "connections": args.connections,
        "executor_slots": args.slots,
    });
    if !as_json {
        println!("devcycle bench ({engine}): no-op tasks through the mesh, mTLS on every hop");
        println!(
            "  throughput  {:>9.0} tasks/s  ({} tasks in {:.2} s, {} in flight)",
            throughput,
            args.burst,
            b.elapsed.as_secs_f64(),
            args.concurrency
        );
        println!("  mesh CPU    {cpu_per_task:>9.0} µs per task in the burst");
        println!(
            "  latency     {}  ({} tasks one at a time)",
            line(&lat),
            args.sequential
        );
        println!("  in burst    {}", line(&b.latency));
        println!(
            "  mesh RSS    {:.1} MiB idle, {:.1} MiB after the burst",
            idle_rss as f64 / MIB,
            after_rss as f64 / MIB
        );
    }

    if let Some(q) = parked {
        let f = |v: &Value| v.as_f64().unwrap_or(0.0);
        if !as_json {
            println!(
                "  queued      {} tasks at {}/s; RSS {:.1} → {:.1} (half) → {:.1} MiB: {:.1} MiB per 100k queued",
                q["tasks"],
                q["submits_per_second"],
                f(&q["rss_before_mib"]),
                f(&q["rss_half_mib"]),
                f(&q["rss_after_mib"]),
                f(&q["mib_per_100k"]),
            );
        }
        report["queued"] = q;
    }
    let stored = 201 + args.queued + args.sequential + args.burst;
    if args.grow > 0 {
        report["grow"] = grow(&args, &mesh, &clients, stored, as_json).await?;
    }
    if as_json {
        crate::output::json(&report);
    }
    Ok(())
}

/// Runs `--grow` tasks in windows; each window's throughput and latency
/// under load, with the tasks already stored when it began.
async fn grow(
    args: &BenchArgs,
    mesh: &Mesh,
    clients: &[Client],
    mut stored: usize,
    quiet: bool,
) -> anyhow::Result<Value> {
    if !quiet {
        println!(
            "  growth      {} tasks in windows of {}",
            args.grow, args.window
        );
        println!("    stored before    tasks/s      p50 ms    p99 ms   RSS MiB");
    }
    let mut windows = Vec::new();
    let mut left = args.grow;
    while left > 0 {
        let n = left.min(args.window);
        let b = burst(clients, n, args.concurrency, NOOP, true).await?;
        let rss = mesh.rss_kib() as f64 / MIB;
        let mut w = percentiles(&b.latency);
        w["stored_before"] = json!(stored);
        w["tasks"] = json!(n);
        w["tasks_per_second"] = json!(b.per_second(n).round());
        w["rss_mib"] = json!(rss);
        if !quiet {
            println!(
                "    {:>13}  {:>9.0}  {:>10.3}  {:>8.3}  {:>8.1}",
                stored,
                b.per_second(n),
                b.latency.value_at_quantile(0.5) as f64 / 1000.0,
                b.latency.value_at_quantile(0.99) as f64 / 1000.0,
                rss
            );
        }
        windows.push(w);
        stored += n;
        left -= n;
    }
    Ok(Value::Array(windows))
}

/// Queues `--queued` tasks no worker serves, in two halves, and reads the
/// memory they cost. The first half also pays for the mesh's growth under
/// `--concurrency` submits in flight (buffers, streams, allocator arenas),
/// which any first burst pays; the second half's growth is the queued
/// tasks' own, and gives the figure per 100,000.
async fn queued(args: &BenchArgs, mesh: &Mesh, clients: &[Client]) -> anyhow::Result<Value> {
    let before = mesh.rss_kib() as f64 / MIB;
    let since = std::time::SystemTime::now();
    let first = args.queued / 2;
    let b1 = burst(clients, first, args.concurrency, PARKED, false).await?;
    settle().await;
    let mid = mesh.rss_kib() as f64 / MIB;
    let second = args.queued - first;
    let b2 = burst(clients, second, args.concurrency, PARKED, false).await?;
    settle().await;
    let after = mesh.rss_kib() as f64 / MIB;
    // The figure is only about queued tasks if none of them ran.
    let ran = clients[0]
        .clone()
        .list_runs(pb::ListRunsRequest {
            state: pb::RunState::Succeeded as i32,
            created_after: Some(since.into()),
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .runs;
    if !ran.is_empty() {
        bail!("a task for {PARKED} ran; the executor was meant to serve {NOOP} only");
    }
    let elapsed = (b1.elapsed + b2.elapsed).as_secs_f64();
    Ok(json!({
        "tasks": args.queued,
        "submits_per_second": (args.queued as f64 / elapsed).round(),
        "rss_before_mib": before,
        "rss_half_mib": mid,
        "rss_after_mib": after,
        "mib_per_100k": (after - mid) * 100_000.0 / second.max(1) as f64,
    }))
}
