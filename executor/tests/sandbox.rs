//! The process sandbox against hostile agents: each is contained, reported
//! with the right failure kind, and the next task runs normally.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use devcycle::proto::registry::v1 as reg;
use devcycle_executor::runtime::{self, Env, Finished, LogSink, TaskRun, kinds};
use devcycle_executor::{Capabilities, Limits};
use tokio_util::sync::CancellationToken;

fn env(work: &std::path::Path, caps: Capabilities) -> Env {
    Env {
        caps,
        defaults: Limits {
            wall: Duration::from_secs(10),
            memory_bytes: 128 << 20,
            cpu_time: Duration::from_secs(10),
            max_processes: 32,
            max_open_files: 256,
            max_output_bytes: 64 * 1024,
        },
        agent_dir: work.join("agents"),
        read_only: vec![],
        work_dir: work.join("tasks"),
        http: reqwest::Client::new(),
        grants: runtime::Grants::default(),
    }
}

fn caps() -> Capabilities {
    let caps = Capabilities::detect("bwrap", true);
    assert!(
        caps.bwrap.is_some(),
        "bubblewrap is needed for these tests (scripts/test.sh installs it)"
    );
    assert!(
        caps.cgroups.is_some(),
        "a writable cgroup hierarchy is needed for these tests"
    );
    caps
}

struct Agent {
    script: String,
    /// A program in the agent directory to run instead of `sh -c script`.
    program: Option<String>,
    network: bool,
    isolation: bool,
    limits: reg::ResourceLimits,
}

fn sh(script: &str) -> Agent {
    Agent {
        script: script.into(),
        program: None,
        network: false,
        isolation: false,
        limits: reg::ResourceLimits::default(),
    }
}

async fn run_with(
    agent: Agent,
    input: &str,
    env: &Env,
    cancel: CancellationToken,
) -> (Finished, Vec<String>) {
    let version = reg::AgentVersion {
        agent: "probe".into(),
        version: "1.0.0".into(),
        runtime: Some(reg::Runtime {
            kind: Some(reg::runtime::Kind::Process(reg::ProcessRuntime {
                command: agent.program.unwrap_or_else(|| "/bin/sh".into()),
                args: if agent.script.is_empty() {
                    vec![]
                } else {
                    vec!["-c".into(), agent.script]
                },
                network_allowed: agent.network,
                require_isolation: agent.isolation,
                ..Default::default()
            })),
        }),
        limits: Some(agent.limits),
        ..Default::default()
    };
    let (logs, mut lines) = LogSink::new();
    let task = TaskRun {
        task_id: uuid::Uuid::new_v4().to_string(),
        attempt: 1,
        run_id: "run".into(),
        agent: Arc::new(version),
        input: input.into(),
        start_to_close: Duration::ZERO,
        cancel,
        logs,
        pid: Arc::new(AtomicU32::new(0)),
        traceparent: String::new(),
    };
    let done = runtime::run(&task, env).await;
    drop(task);
    let mut out = Vec::new();
    while let Some((_, l)) = lines.recv().await {
        out.push(l);
    }
    (done, out)
}

async fn run(agent: Agent, env: &Env) -> (Finished, Vec<String>) {
    run_with(agent, "{}", env, CancellationToken::new()).await
}

#[track_caller]
fn failed(f: &Finished, kind: &str) {
    match &f.outcome {
        Err(e) => assert_eq!(e.kind, kind, "{e:?}"),
        Ok(o) => panic!("expected {kind}, succeeded with {o}"),
    }
}

fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| {
            String::from_utf8_lossy(c)
                .replace('\0', " ")
                .contains(marker)
        })
        .count()
}

#[tokio::test]
async fn hostile_agents_are_contained() {
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), caps());

    // A well-behaved agent: input on stdin, output on stdout, logs on stderr.
    let (ok, logs) = run(
        sh("echo working >&2; cat; echo hi > /workspace/f && cat /workspace/f >&2"),
        &env,
    )
    .await;
    assert_eq!(ok.outcome, Ok("{}".into()));
    assert_eq!(logs, ["working", "hi"]);
    let e = &ok.enforcement;
    assert!(
        e.namespaces && e.network_isolated && e.cgroup && e.rlimits,
        "{e:?}"
    );

    let mut fork = sh("f() { f | f & }; f; sleep 5");
    fork.limits.wall_time_ms = 3000;
    let (r, _) = run(fork, &env).await;
    failed(&r, kinds::PROCESS_LIMIT);

    let mut mem = sh("python3 -c 'x = bytearray(512 * 1024 * 1024); print(len(x))'");
    mem.limits.memory_bytes = 64 << 20;
    let (r, _) = run(mem, &env).await;
    failed(&r, kinds::MEMORY_LIMIT);

    let mut spin = sh("while :; do :; done");
    spin.limits.wall_time_ms = 1000;
    let started = Instant::now();
    let (r, _) = run(spin, &env).await;
    failed(&r, kinds::TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(5));

    let secret = dir.path().join("host-secret.txt");
    std::fs::write(&secret, "the host's secret").unwrap();
    let (r, logs) = run(
        sh(&format!(
            "cat {} /etc/shadow /root/.bashrc",
            secret.display()
        )),
        &env,
    )
    .await;
    failed(&r, kinds::EXIT_CODE);
    assert!(logs.iter().any(|l| l.contains("No such file")), "{logs:?}");
    assert!(!format!("{r:?}{logs:?}").contains("the host's secret"));

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect =
        format!("python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2)\"");
    let (r, _) = run(sh(&connect), &env).await;
    failed(&r, kinds::EXIT_CODE);
    assert!(listener.accept().is_err(), "no connection reached the host");
    let mut allowed = sh(&connect);
    allowed.network = true;
    let (r, _) = run(allowed, &env).await;
    assert!(
        r.outcome.is_ok(),
        "with network allowed the connection works: {r:?}"
    );
    assert!(listener.accept().is_ok());

    let (r, _) = run(sh("yes devcycle | head -c 1000000"), &env).await;
    failed(&r, kinds::OUTPUT_LIMIT);

    let marker = format!("sleep {}", 900_000 + std::process::id() % 99_999);
    let (r, _) = run(sh(&format!("({marker}; echo late) & echo '{{}}'")), &env).await;
    assert_eq!(r.outcome, Ok("{}".into()));
    // SIGKILL is delivered at once, but the exit is asynchronous: poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while processes_with(&marker) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the grandchild outlived the task"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (r, _) = run(sh("echo not json"), &env).await;
    failed(&r, kinds::INVALID_OUTPUT);
    let (r, _) = run(sh("touch /usr/x"), &env).await;
    failed(&r, kinds::EXIT_CODE);

    // And after all that, a normal task still runs.
    let (r, _) = run_with(
        sh("cat"),
        r#"{"still":"serving"}"#,
        &env,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(r.outcome, Ok(r#"{"still":"serving"}"#.into()));
    assert_eq!(
        std::fs::read_dir(dir.path().join("tasks")).unwrap().count(),
        0,
        "workspaces are removed"
    );
}

#[tokio::test]
async fn cancel_kills_the_process_tree_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), caps());
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.cancel();
    });
    let marker = format!("sleep {}", 800_000 + std::process::id() % 99_999);
    let started = Instant::now();
    let (r, _) = run_with(sh(&format!("{marker} & {marker}")), "{}", &env, cancel).await;
    failed(&r, kinds::CANCELLED);
    assert!(
        started.elapsed() < Duration::from_millis(1300),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(processes_with(&marker), 0);
}

#[tokio::test]
async fn isolation_that_cannot_be_provided_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path(), Capabilities::none());
    let mut a = sh("echo '{}'");
    a.isolation = true;
    let (r, _) = run(a, &env).await;
    failed(&r, kinds::ISOLATION_UNAVAILABLE);
    // Defect: without bubblewrap agents ran as the executor's user, able to
    // read its worker key. Now they are refused unless the operator allows
    // running unsandboxed.
    let (r, _) = run(sh("echo '{}'"), &env).await;
    failed(&r, kinds::ISOLATION_UNAVAILABLE);
    let e = r.outcome.unwrap_err();
    assert!(e.message.contains("executor.allow_unsandboxed"), "{e:?}");
    // Allowed: an agent that does not require isolation runs, and the
    // report says what was not enforced.
    let mut env = env;
    env.grants.unsandboxed = true;
    let (r, _) = run(sh("echo '{}'"), &env).await;
    assert_eq!(r.outcome, Ok("{}".into()));
    assert!(!r.enforcement.namespaces && !r.enforcement.network_isolated && r.enforcement.rlimits);
    assert!(
        r.enforcement.notes.contains("no namespaces"),
        "{}",
        r.enforcement.notes
    );
}

/// The private /tmp must not hide an agent directory or a read-only path
/// that lives under /tmp (a checkout there, a data directory there).
#[tokio::test]
async fn agent_files_under_tmp_stay_visible_in_the_sandbox() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mut env = env(dir.path(), caps());
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("note.txt"), "from the host").unwrap();
    env.read_only = vec![shared.clone()];
    let bin = env.agent_dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let program = bin.join("probe.sh");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\nprintf '{{\"note\": \"%s\"}}' \"$(cat {}/note.txt)\"\n",
            shared.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();

    let agent = Agent {
        script: String::new(),
        program: Some("bin/probe.sh".into()),
        ..sh("")
    };
    let (done, logs) = run(agent, &env).await;
    let out = done.outcome.unwrap_or_else(|e| panic!("{e:?} {logs:?}"));
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["note"], "from the host");
    assert!(done.enforcement.namespaces, "ran without bubblewrap");
}

/// Defect: the sandbox bound the host's whole /etc, and a read-only
/// directory holding the executor's keys exposed them. Now /etc is reduced
/// to what programs need, and the key directory is hidden even inside a
/// bound directory.
#[tokio::test]
async fn the_executors_keys_and_the_hosts_etc_stay_out_of_reach() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mut env = env(dir.path(), caps());
    let data = dir.path().join("data");
    let pki = data.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::write(pki.join("worker-w1.key"), "PRIVATE KEY").unwrap();
    std::fs::write(data.join("notes.txt"), "shared").unwrap();
    std::fs::write(data.join("token"), "SECRET TOKEN").unwrap();
    env.read_only = vec![data.clone()];
    env.grants.hidden = vec![pki.clone(), data.join("token")];
    let script = format!(
        "k=$(cat {key} 2>/dev/null || echo hidden); n=$(cat {notes}); t=$(cat {token}); \
         if [ -e /etc/os-release ] || [ -e /etc/shadow ]; then e=visible; else e=absent; fi; \
         test -r /etc/resolv.conf -o ! -e /etc/resolv.conf || e=broken; \
         printf '{{\"key\":\"%s\",\"notes\":\"%s\",\"etc\":\"%s\",\"token\":\"%s\"}}' \"$k\" \"$n\" \"$e\" \"$t\"",
        key = pki.join("worker-w1.key").display(),
        notes = data.join("notes.txt").display(),
        token = data.join("token").display()
    );
    let (done, logs) = run(sh(&script), &env).await;
    let out = done.outcome.unwrap_or_else(|e| panic!("{e:?} {logs:?}"));
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["key"], "hidden");
    assert_eq!(out["notes"], "shared");
    assert_eq!(out["token"], "", "a hidden file reads empty");
    assert_eq!(out["etc"], "absent", "only what programs need from /etc");
}

/// Defect: `${env:ANY}` handed any executor variable to an agent. Only the
/// variables the operator lists in `executor.secrets` are shared.
#[tokio::test]
async fn agents_get_only_the_secrets_they_are_granted() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = env(dir.path(), caps());
    let version = reg::AgentVersion {
        agent: "probe".into(),
        version: "1.0.0".into(),
        runtime: Some(reg::Runtime {
            kind: Some(reg::runtime::Kind::Process(reg::ProcessRuntime {
                command: "/bin/sh".into(),
                args: vec!["-c".into(), "printf '{\"home\":\"%s\"}' \"$GOT\"".into()],
                env: [("GOT".to_owned(), "${env:HOME}".to_owned())].into(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let task = |v: &reg::AgentVersion| TaskRun {
        task_id: uuid::Uuid::new_v4().to_string(),
        attempt: 1,
        run_id: "run".into(),
        agent: Arc::new(v.clone()),
        input: "{}".into(),
        start_to_close: Duration::ZERO,
        cancel: CancellationToken::new(),
        logs: LogSink::new().0,
        pid: Arc::new(AtomicU32::new(0)),
        traceparent: String::new(),
    };
    let r = runtime::run(&task(&version), &env).await;
    failed(&r, kinds::NOT_GRANTED);
    let e = r.outcome.unwrap_err();
    assert!(
        e.message.contains("runtime.process.env.GOT") && e.message.contains("executor.secrets"),
        "{e:?}"
    );
    env.grants.secrets = vec!["HOME".into()];
    let r = runtime::run(&task(&version), &env).await;
    let out: serde_json::Value = serde_json::from_str(&r.outcome.unwrap()).unwrap();
    assert_eq!(out["home"], std::env::var("HOME").unwrap_or_default());

    // The agent's environment is also the host-side wrapper's: variables
    // that load code into it are refused, naming the field.
    let mut preload = version.clone();
    if let Some(reg::runtime::Kind::Process(p)) =
        preload.runtime.as_mut().and_then(|r| r.kind.as_mut())
    {
        p.env = [("LD_PRELOAD".to_owned(), "/workspace/evil.so".to_owned())].into();
    }
    let r = runtime::run(&task(&preload), &env).await;
    failed(&r, kinds::SANDBOX);
    let e = r.outcome.unwrap_err();
    assert!(
        e.message.contains("runtime.process.env.LD_PRELOAD"),
        "{e:?}"
    );
}
