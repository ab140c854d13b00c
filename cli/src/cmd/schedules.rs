//! `devcycle schedule ...`: cron schedules that start workflow runs.

use clap::{Subcommand, ValueEnum};
use devcycle::proto::scheduler::v1 as pb;
use devcycle_scheduler::spec_file;
use serde_json::{Value, json};

use crate::connect::Clients;
use crate::output::{self, Render, print_list, time};
use crate::page;

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// Start a run of a stored workflow on every tick of a cron expression.
    Create {
        name: String,
        /// Five fields (minute hour day month weekday), or six with seconds
        /// first; or @hourly, @daily, @weekly, @monthly, @yearly.
        #[arg(long)]
        cron: String,
        /// The stored workflow each tick runs.
        #[arg(long)]
        workflow: String,
        /// name=value; the value is JSON, or a string if it is not JSON.
        #[arg(long = "input", value_parser = spec_file::input_arg)]
        inputs: Vec<(String, String)>,
        /// IANA time zone the fields are read in; default UTC.
        #[arg(long = "tz")]
        time_zone: Option<String>,
        /// What a tick does while the previous run has not ended.
        #[arg(long, value_enum, default_value_t = Overlap::Skip)]
        overlap: Overlap,
        /// A tick missed by at most this many seconds still fires; default 60.
        #[arg(long)]
        catchup_window: Option<u32>,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
    },
    /// List schedules.
    List,
    /// Show one schedule.
    Get { name: String },
    /// Stop firing until resumed.
    Pause { name: String },
    /// Fire again, from the next tick on.
    Resume { name: String },
    /// Delete a schedule; the runs it started are kept.
    Delete { name: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Overlap {
    Skip,
    Allow,
    CancelPrevious,
}

impl From<Overlap> for pb::OverlapPolicy {
    fn from(o: Overlap) -> Self {
        match o {
            Overlap::Skip => Self::Skip,
            Overlap::Allow => Self::Allow,
            Overlap::CancelPrevious => Self::CancelPrevious,
        }
    }
}

fn overlap(s: &pb::Schedule) -> &'static str {
    match pb::OverlapPolicy::try_from(s.overlap) {
        Ok(pb::OverlapPolicy::Allow) => "allow",
        Ok(pb::OverlapPolicy::CancelPrevious) => "cancel-previous",
        _ => "skip",
    }
}

impl Render for pb::Schedule {
    fn columns() -> &'static [&'static str] {
        &[
            "NAME", "CRON", "TZ", "WORKFLOW", "STATE", "NEXT", "LAST RUN", "FIRED",
        ]
    }
    fn row(&self) -> Vec<String> {
        let tz = if self.time_zone.is_empty() {
            "UTC"
        } else {
            &self.time_zone
        };
        vec![
            self.name.clone(),
            self.cron.clone(),
            tz.to_owned(),
            self.workflow_name.clone(),
            if self.paused { "paused" } else { "active" }.into(),
            time(&self.next_fire_time),
            self.last_run_id.clone(),
            self.fired.to_string(),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name, "cron": self.cron, "time_zone": self.time_zone,
            "workflow": self.workflow_name, "inputs": self.inputs,
            "overlap": overlap(self), "catchup_window_s": self.catchup_window_s,
            "paused": self.paused, "next_fire_time": time(&self.next_fire_time),
            "last_fire_time": time(&self.last_fire_time), "last_run_id": self.last_run_id,
            "owner": self.owner, "create_time": time(&self.create_time),
            "fired": self.fired, "skipped": self.skipped, "missed": self.missed,
            "last_error": self.last_error,
        })
    }
}

/// One schedule: JSON, or its fields one per line.
fn show(s: &pb::Schedule, as_json: bool) {
    if as_json {
        output::json(&s.json());
        return;
    }
    let Value::Object(fields) = s.json() else {
        return;
    };
    for (k, v) in fields {
        let v = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        println!("{k}: {v}");
    }
}

pub async fn run(cmd: ScheduleCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut c = clients.scheduler()?;
    let schedule = match cmd {
        ScheduleCmd::Create {
            name,
            cron,
            workflow,
            inputs,
            time_zone,
            overlap,
            catchup_window,
            paused,
        } => {
            let schedule = pb::Schedule {
                name,
                cron,
                time_zone: time_zone.unwrap_or_default(),
                workflow_name: workflow,
                inputs: inputs.into_iter().collect(),
                overlap: pb::OverlapPolicy::from(overlap) as i32,
                catchup_window_s: catchup_window.unwrap_or(0),
                paused,
                ..Default::default()
            };
            let req = pb::CreateScheduleRequest {
                schedule: Some(schedule),
            };
            c.create_schedule(req).await?.into_inner().schedule
        }
        ScheduleCmd::List => {
            let all = page::all(None, async |page_token, page_size| {
                let req = pb::ListSchedulesRequest {
                    page_size,
                    page_token,
                };
                c.list_schedules(req).await
            })
            .await?;
            print_list(&all, as_json);
            return Ok(());
        }
        ScheduleCmd::Get { name } => {
            let req = pb::GetScheduleRequest { name };
            c.get_schedule(req).await?.into_inner().schedule
        }
        ScheduleCmd::Pause { name } => {
            let req = pb::PauseScheduleRequest { name };
            c.pause_schedule(req).await?.into_inner().schedule
        }
        ScheduleCmd::Resume { name } => {
            let req = pb::ResumeScheduleRequest { name };
            c.resume_schedule(req).await?.into_inner().schedule
        }
        ScheduleCmd::Delete { name } => {
            c.delete_schedule(pb::DeleteScheduleRequest { name: name.clone() })
                .await?;
            if as_json {
                output::json(&json!({ "deleted": name }));
            } else {
                println!("schedule {name} deleted");
            }
            return Ok(());
        }
    };
    show(&schedule.unwrap_or_default(), as_json);
    Ok(())
}
