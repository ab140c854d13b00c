//! The `process` runtime: an agent program in a sandbox. Input JSON on
//! stdin, output JSON on stdout, logs on stderr; a fresh workspace per task.
//!
//! Layers, each used when available and always reported:
//! - bubblewrap namespaces: a private PID, IPC and UTS namespace, no network
//!   unless the agent asks for it, a read-only system (`/usr`, `/bin`,
//!   `/lib*`, `/etc`), a private `/tmp`, and the workspace as the only
//!   writable place; nothing else of the host is visible;
//! - a cgroup per task: memory, process count and CPU for the whole tree;
//! - rlimits, always: CPU time, open files, file size, no core dumps (and
//!   address space when there is no memory cgroup);
//! - a process group, killed whole (grandchildren included) on timeout,
//!   cancellation, output overflow, and when the agent exits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use devcycle::proto::registry::v1 as reg;
use devcycle::proto::scheduler::v1 as pb;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

mod host;
pub use host::{Capabilities, Limits};

use super::cgroup::{self, TaskCgroup};
use super::{Failure, Finished, Grants, TaskRun, kinds};

/// Exit status of the wrapper when joining the cgroup or setting limits failed.
const SETUP_FAILED: i32 = 125;
const MAX_LOG_LINE: usize = 4096;

pub struct ProcessSpec<'a> {
    pub runtime: &'a reg::ProcessRuntime,
    pub limits: Limits,
    /// Where relative commands (`bin/lint.py`) are found; bound read-only.
    pub agent_dir: &'a Path,
    /// More host directories bound read-only.
    pub read_only: &'a [PathBuf],
    pub work_dir: &'a Path,
    pub grants: &'a Grants,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `${env:NAME}` in an agent's environment takes the executor's variable,
/// if the operator shares it with agents.
fn expand_env(key: &str, v: &str, grants: &Grants) -> Result<String, Failure> {
    if devcycle::validate::is_loader_variable(key) {
        return Err(Failure::permanent(
            kinds::SANDBOX,
            format!(
                "runtime.process.env.{key}: loader and libc variables are not passed to agents"
            ),
        ));
    }
    match v.strip_prefix("${env:").and_then(|r| r.strip_suffix('}')) {
        Some(name) => grants.secret(name, &format!("runtime.process.env.{key}")),
        None => Ok(v.to_owned()),
    }
}

/// System directories bound read-only into every sandbox. Of `/etc`, only
/// what programs need to run, resolve names and verify TLS: the rest of a
/// host's `/etc` is its own business.
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64"];
const ETC_FILES: &[&str] = &[
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/ssl",
    "/etc/pki",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/localtime",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/passwd",
    "/etc/group",
    "/etc/mime.types",
    "/etc/python3",
    "/etc/gitconfig",
];

pub async fn run(task: &TaskRun, spec: ProcessSpec<'_>, caps: &Capabilities) -> Finished {
    let p = spec.runtime;
    let mut enforcement = pb::Enforcement {
        rlimits: true,
        ..Default::default()
    };
    if caps.bwrap.is_none() && (p.require_isolation || !spec.grants.unsandboxed) {
        let why = if p.require_isolation {
            "the agent requires isolation and this executor has no working bubblewrap"
        } else {
            "this executor has no working bubblewrap and does not run agents unsandboxed \
             (install bubblewrap, or set executor.allow_unsandboxed)"
        };
        return Finished::failed(
            Failure::permanent(kinds::ISOLATION_UNAVAILABLE, why),
            enforcement,
        );
    }
    let mut agent_env = BTreeMap::new();
    for (k, v) in &p.env {
        match expand_env(k, v, spec.grants) {
            Ok(v) => {
                agent_env.insert(k.clone(), v);
            }
            Err(f) => return Finished::failed(f, enforcement),
        }
    }
    let workspace = spec
        .work_dir
        .join(format!("{}-{}", task.task_id, task.attempt));
    let _ = tokio::fs::remove_dir_all(&workspace).await;
    if let Err(e) = tokio::fs::create_dir_all(&workspace).await {
        return Finished::failed(
            Failure::retry(kinds::SANDBOX, format!("cannot create the workspace: {e}")),
            enforcement,
        );
    }
    let cgroup = match &caps.cgroups {
        Some(roots) => match TaskCgroup::create(
            roots,
            &format!("devcycle-{}-{}", task.task_id, task.attempt),
            cgroup::Limits {
                memory_bytes: spec.limits.memory_bytes,
                max_processes: spec.limits.max_processes,
                cpus: 0.0,
            },
        ) {
            Ok(cg) => Some(cg),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the task's cgroup; running with rlimits only");
                None
            }
        },
        None => None,
    };
    let finished = run_in(
        task,
        &spec,
        caps,
        &workspace,
        cgroup.as_ref(),
        agent_env,
        &mut enforcement,
    )
    .await;
    if let Some(cg) = cgroup {
        cg.remove().await;
    }
    let _ = tokio::fs::remove_dir_all(&workspace).await;
    finished
}

async fn run_in(
    task: &TaskRun,
    spec: &ProcessSpec<'_>,
    caps: &Capabilities,
    workspace: &Path,
    cgroup: Option<&TaskCgroup>,
    agent_env: BTreeMap<String, String>,
    enforcement: &mut pb::Enforcement,
) -> Finished {
    let p = spec.runtime;
    let l = &spec.limits;
    let mut notes = vec![format!(
        "rlimits: cpu {}s, {} open files, 1 GiB files, no core",
        l.cpu_time.as_secs().max(1),
        l.max_open_files
    )];

    // The wrapper joins the cgroup and sets rlimits, then becomes the agent.
    let mut script = String::new();
    if let Some(cg) = cgroup {
        for f in cg.procs_files() {
            script.push_str(&format!(
                "echo $$ > {} || exit {SETUP_FAILED}\n",
                quote(&f.to_string_lossy())
            ));
        }
        enforcement.cgroup = true;
        notes.push(format!(
            "cgroup: {} MiB memory, {} processes",
            l.memory_bytes >> 20,
            l.max_processes
        ));
    }
    script.push_str(&format!(
        "ulimit -t {} && ulimit -n {} && ulimit -c 0 && ulimit -f 2097152 || exit {SETUP_FAILED}\n",
        l.cpu_time.as_secs().max(1),
        l.max_open_files
    ));
    if cgroup.is_none() {
        // Without a memory cgroup, the address space is the only memory bound.
        script.push_str(&format!(
            "ulimit -v {} || exit {SETUP_FAILED}\n",
            (l.memory_bytes / 1024).max(1)
        ));
        notes.push(format!("address space {} MiB", l.memory_bytes >> 20));
    }
    script.push_str("exec \"$@\"\n");

    let command = if p.command.contains('/') && !p.command.starts_with('/') {
        spec.agent_dir
            .join(&p.command)
            .to_string_lossy()
            .into_owned()
    } else {
        p.command.clone()
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(&script).arg("devcycle-sandbox");
    let inside = match &caps.bwrap {
        Some(bwrap) => {
            enforcement.namespaces = true;
            enforcement.network_isolated = !p.network_allowed;
            cmd.arg(bwrap);
            cmd.args([
                "--die-with-parent",
                "--new-session",
                "--unshare-pid",
                "--unshare-ipc",
                "--unshare-uts",
            ]);
            if !p.network_allowed {
                cmd.arg("--unshare-net");
            }
            for dir in SYSTEM_DIRS.iter().chain(ETC_FILES) {
                cmd.args(["--ro-bind-try", dir, dir]);
            }
            // Mounts apply in order: the private /tmp first, so that an
            // agent directory or read-only path under /tmp stays visible.
            cmd.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
            let agent_dir = spec.agent_dir.to_string_lossy();
            if spec.agent_dir.is_dir() {
                cmd.args(["--ro-bind", &agent_dir, &agent_dir]);
            }
            for dir in spec.read_only {
                cmd.arg("--ro-bind-try").arg(dir).arg(dir);
            }
            // The executor's data, keys and secret files stay out of reach
            // even when a bound directory (or a system one) holds them:
            // mounted after every bind, a hidden path covers what is under
            // it. Only the agent directory itself is bound again.
            for hidden in &spec.grants.hidden {
                if hidden.is_dir() {
                    cmd.arg("--tmpfs").arg(hidden);
                } else if hidden.exists() {
                    cmd.arg("--ro-bind").arg("/dev/null").arg(hidden);
                }
            }
            if spec
                .grants
                .hidden
                .iter()
                .any(|h| spec.agent_dir.starts_with(h))
            {
                cmd.args(["--ro-bind", &agent_dir, &agent_dir]);
            }
            cmd.arg("--bind").arg(workspace).arg("/workspace");
            cmd.args(["--chdir", "/workspace", "--"]);
            notes.push(format!(
                "bubblewrap: pid/ipc/uts namespaces{}, read-only system, private /tmp, writable /workspace only",
                if p.network_allowed { "" } else { ", no network" }
            ));
            PathBuf::from("/workspace")
        }
        None => {
            notes.push("no namespaces: bubblewrap is not available".into());
            workspace.to_owned()
        }
    };
    cmd.arg(&command).args(&p.args);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &inside)
        .env("TMPDIR", "/tmp")
        .env("LANG", "C.UTF-8")
        .env("DEVCYCLE_WORKSPACE", &inside)
        .env("DEVCYCLE_TASK_ID", &task.task_id)
        .env("DEVCYCLE_RUN_ID", &task.run_id)
        .env("DEVCYCLE_ATTEMPT", task.attempt.to_string())
        .env("DEVCYCLE_AGENT", &task.agent.agent);
    cmd.envs(agent_env);
    if !task.traceparent.is_empty() {
        cmd.env("TRACEPARENT", &task.traceparent);
    }
    cmd.current_dir(workspace)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    enforcement.notes = notes.join("; ");

    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Finished::failed(
                Failure::permanent(kinds::SPAWN, format!("cannot start {command}: {e}")),
                enforcement.clone(),
            );
        }
    };
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    task.set_pid(child.id().unwrap_or(0));
    let kill_tree = || {
        if let Some(pg) = pgid {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        if let Some(cg) = cgroup {
            cg.kill_all();
        }
    };

    let mut stdin = child.stdin.take();
    let input = task.input.clone().into_bytes();
    tokio::spawn(async move {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&input).await;
            let _ = s.shutdown().await;
        }
    });
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let max_out = l.max_output_bytes as usize;
    let mut output = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match stdout.read(&mut chunk).await {
                Ok(0) | Err(_) => return (buf, false),
                Ok(n) => {
                    if buf.len() + n > max_out {
                        return (buf, true);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    });
    let stderr = child.stderr.take().expect("stderr is piped");
    let logs = task.logs.clone();
    let errors = tokio::spawn(async move {
        let mut last = String::new();
        let mut lines = BufReader::new(stderr).split(b'\n');
        while let Ok(Some(line)) = lines.next_segment().await {
            let mut line = String::from_utf8_lossy(&line).into_owned();
            if line.len() > MAX_LOG_LINE {
                let mut end = MAX_LOG_LINE;
                while !line.is_char_boundary(end) {
                    end -= 1;
                }
                line.truncate(end);
            }
            if !line.trim().is_empty() {
                last.clone_from(&line);
            }
            logs.line("stderr", line);
        }
        last
    });

    enum End {
        Exited(std::io::Result<std::process::ExitStatus>),
        Timeout,
        Cancelled,
        OutputLimit,
    }
    let mut out_bytes = None;
    let end = loop {
        tokio::select! {
            res = child.wait() => break End::Exited(res),
            o = &mut output, if out_bytes.is_none() => {
                let (bytes, overflow) = o.unwrap_or_default();
                out_bytes = Some(bytes);
                if overflow {
                    break End::OutputLimit;
                }
            }
            _ = tokio::time::sleep_until((started + l.wall).into()) => break End::Timeout,
            _ = task.cancel.cancelled() => break End::Cancelled,
        }
    };
    // Everything the agent started goes with it, grandchildren included.
    kill_tree();
    let _ = child.wait().await;
    let (out_bytes, overflow) = match out_bytes {
        Some(b) => (b, false),
        None => tokio::time::timeout(Duration::from_secs(2), output)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
    };
    // The reader stopping at the limit closes the pipe, so the agent may
    // die of SIGPIPE before the overflow is seen: the overflow wins.
    let end = match end {
        End::Exited(_) if overflow => End::OutputLimit,
        end => end,
    };
    let last_err = tokio::time::timeout(Duration::from_secs(2), errors)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    kill_tree();
    let oom = cgroup.map(|c| c.oom_kills()).unwrap_or(0);
    let refused = cgroup.map(|c| c.pids_refused()).unwrap_or(0);
    let took = started.elapsed();
    let enforcement = enforcement.clone();
    let failure = |f: Failure| Finished::failed(f, enforcement.clone());
    match end {
        End::Cancelled => failure(Failure::permanent(
            kinds::CANCELLED,
            "the task was cancelled",
        )),
        End::OutputLimit => failure(Failure::permanent(
            kinds::OUTPUT_LIMIT,
            format!("stdout exceeded {} bytes", l.max_output_bytes),
        )),
        _ if oom > 0 => failure(Failure::permanent(
            kinds::MEMORY_LIMIT,
            format!("killed at the memory limit of {} MiB", l.memory_bytes >> 20),
        )),
        _ if refused > 0 => failure(Failure::permanent(
            kinds::PROCESS_LIMIT,
            format!(
                "refused {refused} forks at the limit of {} processes",
                l.max_processes
            ),
        )),
        End::Timeout => failure(Failure::retry(
            kinds::TIMEOUT,
            format!("killed after {} ms of wall time", l.wall.as_millis()),
        )),
        End::Exited(Err(e)) => failure(Failure::retry(
            kinds::SANDBOX,
            format!("waiting for the agent: {e}"),
        )),
        End::Exited(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt;
            if status.code() == Some(SETUP_FAILED)
                && took < Duration::from_secs(1)
                && last_err.contains("devcycle-sandbox")
            {
                return failure(Failure::retry(
                    kinds::SANDBOX,
                    format!("sandbox setup failed: {last_err}"),
                ));
            }
            // bubblewrap reports a signalled agent as 128 + signal.
            let signal = status.signal().or_else(|| {
                status
                    .code()
                    .filter(|c| caps.bwrap.is_some() && (129..=192).contains(c))
                    .map(|c| c - 128)
            });
            if let Some(sig) = signal {
                let kind = if sig == Signal::SIGXCPU as i32
                    || (sig == Signal::SIGKILL as i32 && l.cpu_time <= took)
                {
                    kinds::CPU_LIMIT
                } else {
                    kinds::SIGNAL
                };
                return failure(Failure::retry(
                    kind,
                    format!("killed by signal {sig}; {last_err}"),
                ));
            }
            match status.code() {
                Some(0) => {
                    let text = String::from_utf8_lossy(&out_bytes);
                    let text = text.trim();
                    let text = if text.is_empty() { "{}" } else { text };
                    match serde_json::from_str::<serde_json::Value>(text) {
                        Ok(v) => Finished::ok(v.to_string(), enforcement),
                        Err(e) => failure(Failure::permanent(
                            kinds::INVALID_OUTPUT,
                            format!("stdout is not JSON: {e}"),
                        )),
                    }
                }
                Some(code) => failure(Failure::retry(
                    kinds::EXIT_CODE,
                    format!(
                        "exited with status {code}{}",
                        if last_err.is_empty() {
                            String::new()
                        } else {
                            format!(": {last_err}")
                        }
                    ),
                )),
                None => failure(Failure::retry(kinds::SIGNAL, "ended without a status")),
            }
        }
    }
}
