//! Load: no-op tasks submitted one at a time or in bursts, each task's
//! submit → result time recorded in an HdrHistogram (microseconds, three
//! significant digits).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use devcycle::proto::scheduler::v1 as pb;
use devcycle::proto::scheduler::v1::scheduler_client::SchedulerClient;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tonic::transport::Channel;

pub type Client = SchedulerClient<Channel>;

/// A histogram of latencies in microseconds, from 1 µs to 10 minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

fn task(agent: &str, wait: bool) -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest {
        task: Some(pb::TaskSpec {
            id: "t".into(),
            target: Some(pb::task_spec::Target::Agent(pb::AgentRef {
                name: agent.into(),
                version: String::new(),
            })),
            ..Default::default()
        }),
        wait,
        ..Default::default()
    }
}

/// Submits one task. With `wait`, returns once it has succeeded; without,
/// once it is queued.
pub async fn one(c: &mut Client, agent: &str, wait: bool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let run = c
        .submit_task(task(agent, wait))
        .await?
        .into_inner()
        .run
        .context("no run")?;
    if wait && run.state != pb::RunState::Succeeded as i32 {
        bail!("a no-op task did not succeed: {run:?}");
    }
    Ok(started.elapsed())
}

/// Records `d` in `h`, saturating at the histogram's bound.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(d.as_micros().max(1) as u64);
}

pub struct Burst {
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl Burst {
    pub fn per_second(&self, n: usize) -> f64 {
        n as f64 / self.elapsed.as_secs_f64()
    }
}

/// Submits `n` tasks with `concurrency` in flight, spread over `clients`.
pub async fn burst(
    clients: &[Client],
    n: usize,
    concurrency: usize,
    agent: &'static str,
    wait: bool,
) -> anyhow::Result<Burst> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency.max(1) {
        let mut c = clients[w % clients.len()].clone();
        let next = Arc::clone(&next);
        workers.push(tokio::spawn(async move {
            let mut h = histogram();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                record(&mut h, one(&mut c, agent, wait).await?);
            }
            anyhow::Ok(h)
        }));
    }
    let mut latency = histogram();
    for w in workers {
        latency.add(w.await??)?;
    }
    Ok(Burst {
        elapsed: started.elapsed(),
        latency,
    })
}

/// A histogram's percentiles in milliseconds.
pub fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| v as f64 / 1000.0;
    json!({
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// One line: `p50 0.58 ms  p90 …  max …`.
pub fn line(h: &Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    )
}
