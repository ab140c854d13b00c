//! One batch, one transaction: load what the batch touches, let the state
//! machine decide, write back what changed.

use std::collections::BTreeSet;

use hashbrown::{HashMap, HashSet};

use super::{Applied, Batch, Claim, HeldLease, Op, OpResult, TxOps};
use crate::error::Result;
use crate::machine::{Machine, Reject};
use crate::model::*;

/// Overdue tasks handled per batch; the rest wait for the next one.
const SWEEP_LIMIT: usize = 512;

pub async fn apply_batch<T: TxOps>(tx: &mut T, batch: Batch) -> Result<Applied> {
    let now = batch.now;
    let mut m = Machine::new(now);
    // Most batches touch one run per item: sized once, never rehashed.
    let tasks: usize = batch.submits.iter().map(|s| s.tasks.len()).sum();
    m.reserve(
        batch.submits.len() + batch.ops.len(),
        tasks + batch.ops.len(),
    );
    let mut out = Applied::default();

    // New runs. Their tasks are claimable right away, in memory. Runs with
    // an idempotency key are inserted first, to find the key taken; the
    // others are written once, with everything else, at the end.
    let mut agents = Vec::new();
    if !batch.submits.is_empty() {
        let keyed: Vec<RunRow> = batch
            .submits
            .iter()
            .filter(|s| s.run.idempotency_key.is_some())
            .map(|s| s.run.clone())
            .collect();
        let mut taken = if keyed.is_empty() {
            Vec::new()
        } else {
            tx.insert_runs(&keyed).await?
        }
        .into_iter();
        for s in batch.submits {
            let existing = if s.run.idempotency_key.is_some() {
                taken.next().flatten()
            } else {
                None
            };
            match existing {
                Some(id) => out.submitted.push((id, false)),
                None => {
                    out.submitted.push((s.run.id.clone(), true));
                    agents.extend(s.agents);
                    m.start_run(s.run, s.tasks);
                }
            }
        }
    }

    // Operations on existing runs: wait for their locks.
    if !batch.ops.is_empty() {
        let mut task_ids = Vec::new();
        let mut run_ids = BTreeSet::new();
        // Per reconciling worker: the tasks the database says it holds.
        let mut leased_to: HashMap<String, Vec<String>> = HashMap::new();
        for op in &batch.ops {
            match op.inner() {
                Op::Complete { lease, .. }
                | Op::Heartbeat { lease }
                | Op::Release { lease, .. }
                | Op::Progress { lease, .. } => task_ids.push(lease.task_id.clone()),
                Op::Retry { task_id } | Op::Decide { task_id, .. } => {
                    task_ids.push(task_id.clone())
                }
                Op::CancelRun { run_id, .. } => {
                    run_ids.insert(run_id.clone());
                }
                Op::Worker { .. } => unreachable!("inner() unwraps senders"),
                Op::Reconcile { worker_id, .. } => {
                    if !leased_to.contains_key(worker_id) {
                        let ids = tx.leased_to(worker_id).await?;
                        task_ids.extend(ids.iter().cloned());
                        leased_to.insert(worker_id.clone(), ids);
                    }
                }
            }
        }
        let kept = tx.cache();
        let unknown: Vec<String> = task_ids
            .into_iter()
            .filter(|t| {
                let known = batch.known_runs.get(t).map(String::as_str);
                match known.or_else(|| kept.as_ref()?.run_of(t)) {
                    Some(r) => {
                        run_ids.insert(r.to_owned());
                        false
                    }
                    None => true,
                }
            })
            .collect();
        if !unknown.is_empty() {
            run_ids.extend(tx.run_ids_of(&unknown).await?);
        }
        let run_ids: Vec<String> = run_ids.into_iter().filter(|r| !m.has_run(r)).collect();
        load_runs(tx, &mut m, run_ids, false).await?;
        for op in batch.ops {
            let (sender, op) = match op {
                Op::Worker { worker_id, op } => (Some(worker_id), *op),
                op => (None, op),
            };
            if let (Some(w), Some(lease)) = (&sender, op.lease())
                && let Some(t) = m.task(&lease.task_id)
                && t.worker_id != *w
            {
                out.results.push(OpResult::Rejected(Reject::Stale(format!(
                    "task {} is not leased to worker {w}",
                    lease.task_id
                ))));
                continue;
            }
            let r = match op {
                Op::Complete { lease, outcome } => {
                    m.complete(&lease, outcome).map(|_| OpResult::Done)
                }
                Op::Heartbeat { lease } => m.heartbeat(&lease).map(OpResult::Extended),
                Op::Release { lease, undelivered } => {
                    let why = if undelivered {
                        "lease not delivered; returned without using an attempt"
                    } else {
                        "released by the worker"
                    };
                    m.release(&lease, why).map(|_| OpResult::Done)
                }
                Op::Progress {
                    lease,
                    percent,
                    message,
                } => m
                    .progress(&lease, percent, &message)
                    .map(|_| OpResult::Done),
                Op::CancelRun { run_id, reason } => {
                    if m.has_run(&run_id) {
                        m.cancel_run(&run_id, &reason).map(|_| OpResult::Done)
                    } else {
                        Err(Reject::NotFound(format!("run {run_id} does not exist")))
                    }
                }
                Op::Retry { task_id } => m.retry(&task_id).map(|_| OpResult::Done),
                Op::Decide { task_id, decision } => {
                    m.decide(&task_id, &decision).map(|_| OpResult::Done)
                }
                Op::Worker { .. } => unreachable!("unwrapped above"),
                Op::Reconcile {
                    worker_id,
                    held,
                    resumed,
                } => {
                    let ids = leased_to.get(&worker_id).map(Vec::as_slice).unwrap_or(&[]);
                    let mut kept = Vec::new();
                    for (lease, run_id) in m.reconcile(&worker_id, ids, &held, resumed) {
                        let log_lines = tx.log_lines(&lease.task_id, lease.attempt).await?;
                        kept.push(HeldLease {
                            lease,
                            run_id,
                            log_lines,
                        });
                    }
                    Ok(OpResult::Held(kept))
                }
            };
            out.results.push(r.unwrap_or_else(OpResult::Rejected));
        }
    }

    // Overdue leases and deadlines; runs another scheduler holds are left
    // for a later sweep.
    if batch.sweep {
        let ids = tx.overdue(now, SWEEP_LIMIT).await?;
        if !ids.is_empty() {
            let runs: Vec<String> = tx
                .run_ids_of(&ids)
                .await?
                .into_iter()
                .filter(|r| !m.has_run(r))
                .collect();
            load_runs(tx, &mut m, runs, true).await?;
            for id in ids {
                let Some(t) = m.task(&id) else { continue };
                let _ = if t.state == TaskState::Leased {
                    m.expire(&id)
                } else {
                    m.schedule_timeout(&id)
                };
            }
        }
    }

    if !batch.claims.is_empty() {
        claim(tx, &mut m, &batch.claims, batch.claim_from_db, &mut out).await?;
    }

    let runs = m.changed_runs();
    let tasks = m.changed_tasks();
    let mut events = std::mem::take(&mut m.events);
    tx.write(&runs, &tasks, &mut events, &batch.logs, &agents)
        .await?;
    out.failed = failed_attempts(&tasks, &events);
    out.events = events;
    out.cancels = std::mem::take(&mut m.cancels);
    let mut notices = batch.notices;
    notices.extend(super::notice::cancels(&out.cancels));
    if !notices.is_empty() {
        tx.announce(&notices).await?;
    }
    out.finished = std::mem::take(&mut m.finished)
        .into_iter()
        .filter_map(|id| m.run_snapshot(&id))
        .collect();
    out.ready_left |= m.any_claimable_in_memory();
    // Timers this batch set, so the engine wakes for them.
    for t in &tasks {
        let due = match t.state {
            TaskState::Leased => t.lease_expires,
            TaskState::Failed => t.ready_at,
            TaskState::Ready | TaskState::Waiting if t.schedule_deadline > 0 => t.schedule_deadline,
            _ => continue,
        };
        out.next_due = Some(out.next_due.map_or(due, |d| d.min(due)));
    }
    if batch.sweep {
        out.swept = true;
        let due = tx.next_due(now).await?;
        out.next_due = match (out.next_due, due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    // Every statement succeeded: what the batch wrote is what it keeps.
    if let Some(kept) = tx.cache() {
        kept.keep(m.into_whole_runs());
    }
    Ok(out)
}

/// Loads runs whole: those kept from earlier batches, the rest from the
/// database.
async fn load_runs<T: TxOps>(
    tx: &mut T,
    m: &mut Machine,
    mut ids: Vec<String>,
    skip_locked: bool,
) -> Result<()> {
    if let Some(kept) = tx.cache() {
        ids.retain(|id| match kept.take(id) {
            Some((run, tasks)) => {
                m.load_run(run, tasks);
                false
            }
            None => true,
        });
    }
    if !ids.is_empty() {
        for (run, tasks) in tx.load_runs(&ids, skip_locked).await? {
            m.load_run(run, tasks);
        }
    }
    Ok(())
}

/// The attempts that failed in this batch: `TaskFailed` (to be retried) and
/// `TaskDead` events, with their tasks' agents. Most batches have none.
fn failed_attempts(tasks: &[TaskRow], events: &[EventRow]) -> Vec<super::FailedAttempt> {
    let failed = |e: &&EventRow| matches!(e.kind, EventKind::TaskFailed | EventKind::TaskDead);
    if !events.iter().any(|e| failed(&e)) {
        return Vec::new();
    }
    let by_id: HashMap<&str, &TaskRow> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    events
        .iter()
        .filter(failed)
        .filter_map(|e| {
            let t = by_id.get(e.task_id.as_str())?;
            let kind = t.error.as_ref().map(|e| e.kind.as_str()).unwrap_or("");
            Some(super::FailedAttempt {
                agent: t.agent.clone(),
                dead: e.kind == EventKind::TaskDead,
                lease_expired: kind == devcycle::kinds::HEARTBEAT_TIMEOUT
                    || kind == devcycle::kinds::START_TO_CLOSE_TIMEOUT,
            })
        })
        .collect()
}

/// Hands claimable tasks to workers: this batch's own first (sync match),
/// then the database's, best first, within concurrency and rate limits.
async fn claim<T: TxOps>(
    tx: &mut T,
    m: &mut Machine,
    claims: &[Claim],
    from_db: bool,
    out: &mut Applied,
) -> Result<()> {
    let now = m.now();
    let wanted: usize = claims.iter().map(|c| c.max as usize).sum();
    let mut pool = m.claimable_in_memory();
    if from_db && pool.len() < wanted {
        let mut fetched: Vec<String> = Vec::new();
        let mut filters: Vec<&Vec<String>> = Vec::new();
        for c in claims {
            if filters.contains(&&c.agents) {
                continue;
            }
            filters.push(&c.agents);
            let exclude: Vec<String> = pool.iter().chain(&fetched).cloned().collect();
            let limit = c.max as usize * 2 + 8;
            let ids = tx.claimable(now, &c.agents, &exclude, limit).await?;
            if ids.len() < limit {
                out.db_drained = true;
            }
            fetched.extend(ids);
        }
        if !fetched.is_empty() {
            let mut fresh: Vec<String> = fetched
                .iter()
                .filter(|id| m.task(id).is_none())
                .cloned()
                .collect();
            if let Some(kept) = tx.cache() {
                fresh.retain(|id| {
                    if m.task(id).is_some() {
                        return false;
                    }
                    let Some(run_id) = kept.run_of(id).map(str::to_owned) else {
                        return true;
                    };
                    let (run, tasks) = kept.take(&run_id).expect("kept run of a kept task");
                    m.load_run(run, tasks);
                    false
                });
            }
            for (run, tasks) in tx.load_tasks(&fresh).await? {
                m.load_part(run, tasks);
            }
            pool.extend(fetched);
            pool.retain(|id| {
                m.task(id)
                    .is_some_and(|t| t.state.is_claimable() && t.ready_at <= now)
            });
            pool.sort_by(|a, b| {
                let (a, b) = (m.task(a).expect("kept"), m.task(b).expect("kept"));
                b.priority
                    .cmp(&a.priority)
                    .then(a.ready_at.cmp(&b.ready_at))
                    .then(a.id.cmp(&b.id))
            });
            pool.dedup();
        }
    }
    if pool.is_empty() {
        return Ok(());
    }

    let keys: Vec<String> = pool
        .iter()
        .filter_map(|id| m.task(id))
        .filter(|t| t.concurrency_limit > 0)
        .map(|t| t.concurrency_key.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut running = if keys.is_empty() {
        HashMap::new()
    } else {
        tx.running_per_key(&keys).await?
    };
    let agents: Vec<String> = pool
        .iter()
        .filter_map(|id| m.task(id))
        .map(|t| t.agent.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut buckets = tx.rate_limits(&agents).await?;
    let mut touched_buckets = HashSet::new();

    let mut taken = HashSet::new();
    for c in claims {
        let mut granted = 0;
        for id in &pool {
            if granted >= c.max {
                break;
            }
            if taken.contains(id) {
                continue;
            }
            let t = m.task(id).expect("pooled tasks are loaded");
            if !c.agents.is_empty() && !c.agents.contains(&t.agent) {
                continue;
            }
            if t.concurrency_limit > 0 {
                let n = running.entry(t.concurrency_key.clone()).or_insert(0);
                if *n >= t.concurrency_limit {
                    continue;
                }
            }
            if let Some((limit, tat)) = buckets.get_mut(&t.agent) {
                match gcra(limit, *tat, now) {
                    Ok(next) => {
                        *tat = next;
                        touched_buckets.insert(t.agent.clone());
                    }
                    Err(retry_at) => {
                        out.next_due = Some(out.next_due.map_or(retry_at, |d| d.min(retry_at)));
                        continue;
                    }
                }
            }
            let key = (t.concurrency_limit > 0).then(|| t.concurrency_key.clone());
            if let Ok(row) = m.lease(id, &c.worker_id) {
                if let Some(k) = key {
                    *running.entry(k).or_insert(0) += 1;
                }
                taken.insert(id.clone());
                out.leased.push(row);
                granted += 1;
            }
        }
    }
    out.ready_left |= pool.iter().any(|id| !taken.contains(id));
    if !touched_buckets.is_empty() {
        let tats: Vec<(String, f64)> = touched_buckets
            .into_iter()
            .map(|a| {
                let tat = buckets[&a].1;
                (a, tat)
            })
            .collect();
        tx.save_rate_tats(&tats).await?;
    }
    Ok(())
}

/// GCRA: `Ok(new theoretical arrival time)` if a start is allowed now,
/// `Err(time it will be)` otherwise. Times in milliseconds.
fn gcra(limit: &RateLimit, tat: f64, now: i64) -> std::result::Result<f64, i64> {
    let interval = 1000.0 / limit.per_second;
    let burst = if limit.burst == 0 {
        limit.per_second.max(1.0).floor()
    } else {
        f64::from(limit.burst)
    };
    let tolerance = (burst - 1.0).max(0.0) * interval;
    let now = now as f64;
    let tat = tat.max(now);
    if tat - now > tolerance {
        Err((tat - tolerance).ceil() as i64)
    } else {
        Ok(tat + interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_burst_then_paces() {
        let limit = RateLimit {
            per_second: 10.0,
            burst: 3,
        };
        let mut tat = 0.0;
        for _ in 0..3 {
            tat = gcra(&limit, tat, 1000).expect("within burst");
        }
        let retry = gcra(&limit, tat, 1000).expect_err("burst used up");
        assert_eq!(retry, 1100);
        assert!(gcra(&limit, tat, 1100).is_ok());
    }
}
