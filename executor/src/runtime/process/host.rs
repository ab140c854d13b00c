//! What the host offers the process runtime (found once at start-up), and
//! the limits a run gets.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use devcycle::proto::registry::v1 as reg;

use crate::runtime::cgroup;

/// What this machine offers, found once at start-up.
#[derive(Debug, Clone)]
pub struct Capabilities {
    pub bwrap: Option<PathBuf>,
    pub cgroups: Option<cgroup::Roots>,
}

impl Capabilities {
    /// `bwrap`: the bubblewrap binary to use, if it works here.
    pub fn detect(bwrap: &str, use_cgroups: bool) -> Self {
        let bwrap = which(bwrap).filter(|b| {
            std::process::Command::new(b)
                .args([
                    "--unshare-pid",
                    "--unshare-net",
                    "--ro-bind",
                    "/",
                    "/",
                    "--",
                    "/bin/true",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        Self {
            bwrap,
            cgroups: if use_cgroups {
                cgroup::Roots::detect()
            } else {
                None
            },
        }
    }

    pub fn none() -> Self {
        Self {
            bwrap: None,
            cgroups: None,
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.exists().then_some(p);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// Limits for one run: the agent's own, or the executor's defaults.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub wall: Duration,
    pub memory_bytes: u64,
    pub cpu_time: Duration,
    pub max_processes: u32,
    pub max_open_files: u32,
    pub max_output_bytes: u64,
}

impl Limits {
    pub fn resolve(
        agent: &reg::ResourceLimits,
        defaults: &Limits,
        start_to_close: Duration,
    ) -> Self {
        let pick = |v: u64, d: u64| if v == 0 { d } else { v };
        let wall =
            Duration::from_millis(pick(agent.wall_time_ms, defaults.wall.as_millis() as u64));
        Self {
            wall: if start_to_close.is_zero() {
                wall
            } else {
                wall.min(start_to_close)
            },
            memory_bytes: pick(agent.memory_bytes, defaults.memory_bytes),
            cpu_time: Duration::from_millis(pick(
                agent.cpu_time_ms,
                defaults.cpu_time.as_millis() as u64,
            )),
            max_processes: if agent.max_processes == 0 {
                defaults.max_processes
            } else {
                agent.max_processes
            },
            max_open_files: if agent.max_open_files == 0 {
                defaults.max_open_files
            } else {
                agent.max_open_files
            },
            max_output_bytes: pick(agent.max_output_bytes, defaults.max_output_bytes),
        }
    }
}
