//! A control group per task: memory, process count and CPU limits that
//! hold for the task's whole process tree, and a way to kill all of it.
//! cgroup v1 (one directory per controller) and v2 (one directory) are both
//! used when the executor's own cgroup is writable.

use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Where this executor may create task cgroups.
#[derive(Debug, Clone)]
pub struct Roots {
    pub version: Version,
    /// v1: memory, pids, cpu (if writable); v2: the one directory.
    pub memory: PathBuf,
    pub pids: PathBuf,
    pub cpu: Option<PathBuf>,
}

impl Roots {
    /// Finds writable cgroup directories under the executor's own cgroups.
    pub fn detect() -> Option<Self> {
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
            let dir = PathBuf::from(format!("/sys/fs/cgroup{path}"));
            let controllers =
                fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
            if !(controllers.contains("memory") && controllers.contains("pids") && writable(&dir)) {
                return None;
            }
            return Some(Self {
                version: Version::V2,
                memory: dir.clone(),
                pids: dir.clone(),
                cpu: controllers.contains("cpu").then_some(dir),
            });
        }
        let v1 = |controller: &str| -> Option<PathBuf> {
            let path = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                ctrls
                    .split(',')
                    .any(|c| c == controller)
                    .then(|| path.to_owned())
            })?;
            let dir = PathBuf::from(format!("/sys/fs/cgroup/{controller}{path}"));
            writable(&dir).then_some(dir)
        };
        Some(Self {
            version: Version::V1,
            memory: v1("memory")?,
            pids: v1("pids")?,
            cpu: v1("cpu"),
        })
    }
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!("devcycle-probe-{}", uuid::Uuid::new_v4().simple()));
    if fs::create_dir(&probe).is_err() {
        return false;
    }
    let _ = fs::remove_dir(&probe);
    true
}

/// One task's cgroup(s).
pub struct TaskCgroup {
    version: Version,
    dirs: Vec<PathBuf>,
    memory: PathBuf,
    pids: PathBuf,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    pub max_processes: u32,
    /// CPUs' worth of time per period, e.g. 1.0 = one core; 0 = unlimited.
    pub cpus: f64,
}

impl TaskCgroup {
    pub fn create(roots: &Roots, name: &str, limits: Limits) -> std::io::Result<Self> {
        let make = |base: &Path| -> std::io::Result<PathBuf> {
            let d = base.join(name);
            match fs::create_dir(&d) {
                Ok(()) => Ok(d),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(d),
                Err(e) => Err(e),
            }
        };
        let memory = make(&roots.memory)?;
        let pids = if roots.pids == roots.memory {
            memory.clone()
        } else {
            make(&roots.pids)?
        };
        let cpu = match &roots.cpu {
            Some(c) if *c == roots.memory => Some(memory.clone()),
            Some(c) => Some(make(c)?),
            None => None,
        };
        let mut dirs = vec![memory.clone()];
        if pids != memory {
            dirs.push(pids.clone());
        }
        if let Some(c) = &cpu
            && !dirs.contains(c)
        {
            dirs.push(c.clone());
        }
        let cg = Self {
            version: roots.version.clone(),
            dirs,
            memory,
            pids,
        };
        match cg.version {
            Version::V1 => {
                fs::write(
                    cg.memory.join("memory.limit_in_bytes"),
                    limits.memory_bytes.to_string(),
                )?;
                // Without this, a task could push memory to swap and dodge the limit.
                let _ = fs::write(
                    cg.memory.join("memory.memsw.limit_in_bytes"),
                    limits.memory_bytes.to_string(),
                );
                fs::write(cg.pids.join("pids.max"), limits.max_processes.to_string())?;
                if let Some(c) = &cpu
                    && limits.cpus > 0.0
                {
                    let _ = fs::write(c.join("cpu.cfs_period_us"), "100000");
                    let _ = fs::write(
                        c.join("cpu.cfs_quota_us"),
                        ((limits.cpus * 100_000.0) as u64).to_string(),
                    );
                }
            }
            Version::V2 => {
                fs::write(
                    cg.memory.join("memory.max"),
                    limits.memory_bytes.to_string(),
                )?;
                let _ = fs::write(cg.memory.join("memory.swap.max"), "0");
                fs::write(cg.pids.join("pids.max"), limits.max_processes.to_string())?;
                if cpu.is_some() && limits.cpus > 0.0 {
                    let _ = fs::write(
                        cg.memory.join("cpu.max"),
                        format!("{} 100000", (limits.cpus * 100_000.0) as u64),
                    );
                }
            }
        }
        Ok(cg)
    }

    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Processes killed by the memory limit.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match self.version {
            Version::V1 => ("memory.oom_control", "oom_kill"),
            Version::V2 => ("memory.events", "oom_kill"),
        };
        counter(&self.memory.join(file), key)
    }

    /// Forks refused by the process limit.
    pub fn pids_refused(&self) -> u64 {
        counter(&self.pids.join("pids.events"), "max")
    }

    /// Kills every process in the group, wherever it moved in the tree.
    pub fn kill_all(&self) {
        if self.version == Version::V2 && fs::write(self.memory.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for dir in &self.dirs {
            for pid in fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.iter().all(|d| {
            fs::read_to_string(d.join("cgroup.procs"))
                .map(|s| s.trim().is_empty())
                .unwrap_or(true)
        })
    }

    /// Removes the group once its processes are gone.
    pub async fn remove(self) {
        for _ in 0..50 {
            self.kill_all();
            if self.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for d in &self.dirs {
            let _ = fs::remove_dir(d);
        }
    }
}

fn counter(file: &Path, key: &str) -> u64 {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}
