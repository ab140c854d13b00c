//! Cron schedules: created, read, paused, resumed and deleted here; their
//! due ticks start runs of a stored workflow through the path `SubmitRun`
//! takes ([`SchedulerService::fire_due`], driven by [`run_ticker`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use devcycle::authz::Caller;
use devcycle::page;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::time::{now_ms, to_timestamp};
use devcycle::validate::{self, FieldError};
use tokio_util::sync::CancellationToken;

use super::SchedulerService;
use super::access::scopes;
use super::start::Start;
use crate::cron;
use crate::error::{Error, Result};
use crate::spec;
use crate::store::{Op, ScheduleRow};

/// How long a scheduler holds a due schedule while it acts on the tick.
/// Starting a run takes milliseconds; a holder that dies leaves the tick to
/// another scheduler after this long (and within the catch-up window, it
/// still fires, as the same run: the tick is its idempotency key).
const CLAIM_MS: i64 = 30_000;
/// Schedules acted on per pass.
const PASS: usize = 100;
const DEFAULT_CATCHUP_S: u32 = 60;
const MAX_CATCHUP_S: u32 = 7 * 24 * 3600;
/// `next_fire` of a schedule whose expression names no later time.
const NEVER: i64 = i64::MAX;

pub(super) async fn create_schedule(
    svc: &SchedulerService,
    caller: &Caller,
    r: pb::CreateScheduleRequest,
) -> Result<pb::CreateScheduleResponse> {
    let s = validate::present("schedule", r.schedule)?;
    validate::dns_label("schedule.name", &s.name)?;
    let ticks = cron::parse(&s.cron, &s.time_zone, "schedule")?;
    let overlap = overlap_name(s.overlap)?;
    let catchup_s = match s.catchup_window_s {
        0 => DEFAULT_CATCHUP_S,
        n if n > MAX_CATCHUP_S => {
            return Err(FieldError::new(
                "schedule.catchup_window_s",
                format!("{n} is more than 7 days ({MAX_CATCHUP_S} s)"),
            )
            .into());
        }
        n => n,
    };
    validate::dns_label("schedule.workflow_name", &s.workflow_name)?;
    // The workflow must exist and accept the inputs now, not at 3 a.m.
    let (wf, _, _) = svc
        .workflow_spec(Some(pb::submit_run_request::Workflow::WorkflowName(
            s.workflow_name.clone(),
        )))
        .await
        .map_err(|e| match e {
            Error::NotFound(m) => Error::NotFound(format!("schedule.{m}")),
            other => other,
        })?;
    spec::plan_run(&wf, &s.inputs, "workflow").map_err(|e| {
        match e.field.strip_prefix("inputs") {
            Some(rest) => FieldError::new(format!("schedule.inputs{rest}"), e.reason),
            None => e,
        }
    })?;
    let now = now_ms();
    let row = ScheduleRow {
        name: s.name.clone(),
        id: uuid::Uuid::now_v7().to_string(),
        cron: s.cron.trim().to_owned(),
        time_zone: s.time_zone,
        workflow: s.workflow_name,
        inputs: serde_json::to_string(&s.inputs).expect("a map of strings is JSON"),
        overlap: overlap.into(),
        catchup_ms: i64::from(catchup_s) * 1000,
        paused: s.paused,
        next_fire: ticks.next_after(now).unwrap_or(NEVER),
        last_fire: 0,
        last_run_id: String::new(),
        owner: caller.actor(),
        create_time: now,
        fired: 0,
        skipped: 0,
        missed: 0,
        last_error: String::new(),
        claimed_until: 0,
        rev: 1,
    };
    if !svc.store.create_schedule(&row).await? {
        return Err(Error::AlreadyExists(format!(
            "schedule.name: schedule {} exists",
            s.name
        )));
    }
    svc.schedules_changed.notify_one();
    Ok(pb::CreateScheduleResponse {
        schedule: Some(schedule_pb(row)),
    })
}

pub(super) async fn get_schedule(
    svc: &SchedulerService,
    r: pb::GetScheduleRequest,
) -> Result<pb::GetScheduleResponse> {
    Ok(pb::GetScheduleResponse {
        schedule: Some(schedule_pb(svc.schedule(&r.name).await?)),
    })
}

pub(super) async fn list_schedules(
    svc: &SchedulerService,
    r: pb::ListSchedulesRequest,
) -> Result<pb::ListSchedulesResponse> {
    let size = page::page_size(r.page_size)?;
    let after = page::decode_token(&r.page_token)?.unwrap_or_default();
    let mut rows = svc.store.list_schedules(&after, size + 1).await?;
    let next_page_token = page::finish(&mut rows, size, |s| s.name.clone());
    Ok(pb::ListSchedulesResponse {
        schedules: rows.into_iter().map(schedule_pb).collect(),
        next_page_token,
    })
}

pub(super) async fn pause_schedule(
    svc: &SchedulerService,
    caller: &Caller,
    r: pb::PauseScheduleRequest,
) -> Result<pb::PauseScheduleResponse> {
    Ok(pb::PauseScheduleResponse {
        schedule: Some(schedule_pb(svc.set_paused(caller, &r.name, true).await?)),
    })
}

pub(super) async fn resume_schedule(
    svc: &SchedulerService,
    caller: &Caller,
    r: pb::ResumeScheduleRequest,
) -> Result<pb::ResumeScheduleResponse> {
    Ok(pb::ResumeScheduleResponse {
        schedule: Some(schedule_pb(svc.set_paused(caller, &r.name, false).await?)),
    })
}

pub(super) async fn delete_schedule(
    svc: &SchedulerService,
    caller: &Caller,
    r: pb::DeleteScheduleRequest,
) -> Result<pb::DeleteScheduleResponse> {
    let s = svc.schedule(&r.name).await?;
    check_changer(caller, &s)?;
    svc.store.delete_schedule(&s.name).await?;
    Ok(pb::DeleteScheduleResponse {})
}

impl SchedulerService {
    async fn schedule(&self, name: &str) -> Result<ScheduleRow> {
        validate::dns_label("name", name)?;
        self.store
            .get_schedule(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("schedule {name} does not exist")))
    }

    /// Pauses, or resumes from the first tick after now: ticks that passed
    /// while paused are neither fired nor counted as missed.
    async fn set_paused(&self, caller: &Caller, name: &str, paused: bool) -> Result<ScheduleRow> {
        let mut s = self.schedule(name).await?;
        check_changer(caller, &s)?;
        if !paused {
            let ticks = cron::parse(&s.cron, &s.time_zone, "schedule")
                .map_err(|e| Error::Corrupt(format!("stored schedule {name}: {e}")))?;
            s.next_fire = ticks.next_after(now_ms()).unwrap_or(NEVER);
        }
        s.paused = paused;
        if !self.store.pause_schedule(name, paused, s.next_fire).await? {
            return Err(Error::NotFound(format!("schedule {name} does not exist")));
        }
        self.schedules_changed.notify_one();
        Ok(s)
    }

    /// Acts on the schedules due at `now`: each is claimed first, so one
    /// scheduler decides each tick however many share the database.
    /// Returns how many ticks were recorded.
    pub(crate) async fn fire_due(&self, now: i64) -> Result<usize> {
        let mut recorded = 0;
        for s in self.store.due_schedules(now, PASS).await? {
            if !self.store.claim_schedule(&s, now + CLAIM_MS).await? {
                continue;
            }
            let held = ScheduleRow {
                rev: s.rev + 1,
                ..s
            };
            let name = held.name.clone();
            match self.tick(held, now).await {
                Ok(done) => recorded += usize::from(self.store.record_tick(&done).await?),
                // Left claimed: another pass retries when the claim lapses.
                Err(e) => tracing::warn!(schedule = %name, error = %e, "schedule tick failed"),
            }
        }
        Ok(recorded)
    }

    /// The schedule after its due tick: a run started, a tick skipped or
    /// missed, or the reason a run could not start. Errors are the
    /// mesh's own (the database, shutting down): the tick is retried.
    async fn tick(&self, mut s: ScheduleRow, now: i64) -> Result<ScheduleRow> {
        let ticks = cron::parse(&s.cron, &s.time_zone, "schedule")
            .map_err(|e| Error::Corrupt(format!("stored schedule {}: {e}", s.name)))?;
        let due = cron::due(&ticks, s.next_fire, now, s.catchup_ms);
        s.next_fire = due.next.unwrap_or(NEVER);
        let tick = due.latest;
        let key = format!("schedule/{}/{tick}", s.id);
        if !due.fire {
            // Too old to fire now, but a holder that died after starting
            // its run did fire it: record that run, not a miss.
            match self.store.run_by_key(&s.owner, &key).await? {
                Some(run_id) => {
                    s.missed += due.missed as i64 - 1;
                    s.record_fired(tick, run_id);
                }
                None => s.missed += due.missed as i64,
            }
            return Ok(s);
        }
        s.missed += due.missed as i64;
        s.last_fire = tick;
        if self.previous_running(&s).await? {
            match s.overlap.as_str() {
                "allow" => {}
                "cancel_previous" => {
                    let cancel = Op::CancelRun {
                        run_id: s.last_run_id.clone(),
                        reason: format!("schedule {} started the next run", s.name),
                    };
                    match self.op(cancel).await {
                        // It ended meanwhile.
                        Ok(()) | Err(Error::FailedPrecondition(_) | Error::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                _ => {
                    s.skipped += 1;
                    return Ok(s);
                }
            }
        }
        let inputs: HashMap<String, String> = serde_json::from_str(&s.inputs)
            .map_err(|e| Error::Corrupt(format!("stored schedule {} inputs: {e}", s.name)))?;
        match self
            .start_stored(s.owner.clone(), &s.workflow, &inputs, &key)
            .await
        {
            Ok((run_id, _)) => s.record_fired(tick, run_id),
            Err(e @ (Error::Invalid(_) | Error::NotFound(_) | Error::FailedPrecondition(_))) => {
                s.last_error = e.to_string();
            }
            Err(e) => return Err(e),
        }
        Ok(s)
    }

    async fn previous_running(&self, s: &ScheduleRow) -> Result<bool> {
        if s.last_run_id.is_empty() {
            return Ok(false);
        }
        Ok(matches!(
            self.store.get_run(&s.last_run_id).await?,
            Some((run, _)) if !run.state.is_terminal()
        ))
    }

    /// Starts a run of stored workflow `name` as `actor`, or finds the one
    /// `key` started; returns its id and whether it is new.
    pub(crate) async fn start_stored(
        &self,
        actor: String,
        name: &str,
        inputs: &HashMap<String, String>,
        key: &str,
    ) -> Result<(String, bool)> {
        let which = pb::submit_run_request::Workflow::WorkflowName(name.to_owned());
        let (spec, revision, prefix) = self.workflow_spec(Some(which)).await?;
        let start = Start {
            spec,
            revision,
            prefix,
            inputs,
            key,
            workflow_name: name.to_owned(),
            wait: false,
        };
        let started = self.start(actor, start).await?;
        Ok((started.run_id, started.created))
    }
}

/// Fires due ticks until `stop`. Wakes at the earliest tick, or when a
/// schedule is created or resumed here. Schedulers that share their
/// database also wake every second, for schedules created on another; a
/// store with one writer (SQLite: one process per file) has no other, so
/// an idle mesh without schedules never wakes for them.
pub(crate) async fn run_ticker(svc: Arc<SchedulerService>, stop: CancellationToken) {
    let shared = svc.store.concurrent_writers();
    loop {
        let pass = svc.fire_due(now_ms()).await;
        if let Err(e) = &pass {
            tracing::warn!(error = %e, "schedules: a pass failed");
        }
        let wait_ms = match (pass, svc.store.next_schedule_fire().await) {
            (Ok(_), Ok(Some(t))) if shared => Some(t.saturating_sub(now_ms()).clamp(1, 1000)),
            (Ok(_), Ok(Some(t))) => Some(t.saturating_sub(now_ms()).max(1)),
            (Ok(_), Ok(None)) if !shared => None,
            _ => Some(1000),
        };
        let sleep = async {
            match wait_ms {
                // Far ticks (NEVER) are woken for by a change, or not at all.
                Some(ms) if ms < 86_400_000 => {
                    tokio::time::sleep(Duration::from_millis(ms as u64)).await
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = sleep => {}
            () = svc.schedules_changed.notified() => {}
        }
    }
}

impl ScheduleRow {
    fn record_fired(&mut self, tick: i64, run_id: String) {
        self.last_fire = tick;
        self.last_run_id = run_id;
        self.fired += 1;
        self.last_error.clear();
    }
}

/// Only the owner, maintainers and admins change a schedule.
fn check_changer(caller: &Caller, s: &ScheduleRow) -> Result<()> {
    if scopes(caller).write.is_none() || caller.actor() == s.owner {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "schedule {} belongs to {}; only its owner, maintainers and admins may change it",
        s.name, s.owner
    )))
}

fn overlap_name(v: i32) -> Result<&'static str, FieldError> {
    use pb::OverlapPolicy as P;
    match P::try_from(v) {
        Ok(P::Unspecified | P::Skip) => Ok("skip"),
        Ok(P::Allow) => Ok("allow"),
        Ok(P::CancelPrevious) => Ok("cancel_previous"),
        Err(_) => Err(FieldError::new(
            "schedule.overlap",
            format!("{v} is not an overlap policy"),
        )),
    }
}

fn schedule_pb(s: ScheduleRow) -> pb::Schedule {
    use pb::OverlapPolicy as P;
    let overlap = match s.overlap.as_str() {
        "allow" => P::Allow,
        "cancel_previous" => P::CancelPrevious,
        _ => P::Skip,
    };
    let time = |ms: i64| (ms > 0 && ms != NEVER).then(|| to_timestamp(ms));
    pb::Schedule {
        name: s.name,
        cron: s.cron,
        time_zone: s.time_zone,
        workflow_name: s.workflow,
        inputs: serde_json::from_str(&s.inputs).unwrap_or_default(),
        overlap: overlap as i32,
        catchup_window_s: (s.catchup_ms / 1000) as u32,
        paused: s.paused,
        next_fire_time: if s.paused { None } else { time(s.next_fire) },
        last_fire_time: time(s.last_fire),
        last_run_id: s.last_run_id,
        owner: s.owner,
        create_time: time(s.create_time),
        fired: s.fired as u64,
        skipped: s.skipped as u64,
        missed: s.missed as u64,
        last_error: s.last_error,
    }
}
