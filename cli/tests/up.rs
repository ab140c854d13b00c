//! What a newcomer does: `devcycle up`, create the first admin with the
//! one-time token it prints, then register, publish, deploy and roll back
//! agents with the CLI, through the gateway.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cli, cli_in, up};

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agents")
}

#[test]
fn up_then_register_publish_deploy_and_roll_back() {
    let data = tempfile::tempdir().unwrap();
    let mut mesh = up(data.path(), &[]);
    let ok = |args: &[&str]| {
        let (success, out, err) = cli(data.path(), &mesh.addr, args);
        assert!(success, "devcycle {args:?} failed: {err}");
        out
    };
    let reviewer = examples().join("reviewer.yaml");
    let triage = examples().join("triage.yaml");

    // Nothing without logging in; the bootstrap token makes the first admin.
    let (success, _, err) = cli(data.path(), &mesh.addr, &["agent", "list"]);
    assert!(!success);
    assert!(err.contains("not logged in"), "{err}");
    let login = [
        "login",
        "--username",
        "admin",
        "--password-stdin",
        "--bootstrap",
        mesh.bootstrap
            .as_deref()
            .expect("no users yet: a bootstrap token"),
    ];
    let (success, out, err) = cli_in(data.path(), &mesh.addr, &login, "first admin password\n");
    assert!(success, "{err}");
    assert!(out.contains("logged in"), "{out}");
    let (success, _, _) = cli_in(data.path(), &mesh.addr, &login, "another password!\n");
    assert!(!success, "the bootstrap token works once");
    assert!(ok(&["whoami"]).starts_with("admin (admin)"));

    // Order matters: triage depends on a live reviewer.
    let (success, _, err) = cli(
        data.path(),
        &mesh.addr,
        &["agent", "apply", triage.to_str().unwrap()],
    );
    assert!(!success);
    assert!(err.contains("version.dependencies[0].agent"), "{err}");
    ok(&["agent", "create", reviewer.to_str().unwrap()]);
    ok(&["agent", "publish", reviewer.to_str().unwrap()]);
    ok(&["agent", "deploy", "reviewer", "1.0.0"]);
    ok(&["agent", "apply", triage.to_str().unwrap(), "--deploy"]);
    assert!(ok(&["agent", "check", "triage"]).contains("compatible"));

    // A second version of triage, deployed then rolled back.
    let v2 = data.path().join("triage-v2.yaml");
    let text = std::fs::read_to_string(&triage)
        .unwrap()
        .replace("version: 1.0.0", "version: 1.1.0");
    std::fs::write(&v2, text).unwrap();
    ok(&["agent", "apply", v2.to_str().unwrap(), "--deploy"]);
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "agent", "list"])).unwrap();
    let live = |v: &serde_json::Value, name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .map(|a| a["live_version"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(live(&listed, "triage"), "1.1.0");
    assert!(ok(&["agent", "rollback", "triage"]).contains("triage@1.0.0 is live"));
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "agent", "list"])).unwrap();
    assert_eq!(live(&listed, "triage"), "1.0.0");
    let history = ok(&["agent", "history", "triage"]);
    assert_eq!(history.lines().count(), 4, "{history}");

    let found: serde_json::Value = serde_json::from_str(&ok(&[
        "--json",
        "agent",
        "find",
        "--capability",
        "code.review",
    ]))
    .unwrap();
    assert_eq!(found.as_array().unwrap().len(), 1);

    // Lists page through everything: 1,001 tasks, past the server's largest
    // page of 1,000; `--limit` still bounds runs.
    let noop = examples().join("noop.yaml");
    ok(&["agent", "apply", noop.to_str().unwrap(), "--deploy"]);
    let wide = data.path().join("wide.yaml");
    let tasks: String = (0..1000)
        .map(|i| format!("  - {{ id: t{i}, agent: noop }}\n"))
        .collect();
    std::fs::write(&wide, format!("name: wide\ntasks:\n{tasks}")).unwrap();
    ok(&["workflow", "submit", wide.to_str().unwrap()]);
    ok(&["task", "submit", "noop"]);
    let listed: serde_json::Value = serde_json::from_str(&ok(&["--json", "task", "list"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1001);
    let runs: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "run", "list", "--limit", "1"])).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1);

    // A cron schedule of a stored workflow: created, listed, fired, paused.
    let tick = data.path().join("tick.yaml");
    std::fs::write(&tick, "name: tick\ntasks:\n  - { id: t, agent: noop }\n").unwrap();
    ok(&["workflow", "put", tick.to_str().unwrap()]);
    let (success, _, err) = cli(
        data.path(),
        &mesh.addr,
        &[
            "schedule",
            "create",
            "s",
            "--cron",
            "99 * * * *",
            "--workflow",
            "tick",
        ],
    );
    assert!(!success);
    assert!(err.contains("schedule.cron"), "{err}");
    let each_second = [
        "schedule",
        "create",
        "every-second",
        "--cron",
        "* * * * * *",
        "--workflow",
        "tick",
        "--tz",
        "Europe/Paris",
        "--overlap",
        "allow",
    ];
    assert!(ok(&each_second).contains("time_zone: Europe/Paris"));
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["--json", "schedule", "list"])).unwrap();
    assert_eq!(listed[0]["name"], "every-second");
    assert_eq!(listed[0]["overlap"], "allow");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s: serde_json::Value =
            serde_json::from_str(&ok(&["--json", "schedule", "get", "every-second"])).unwrap();
        if s["fired"].as_u64().unwrap() >= 1 {
            assert!(!s["last_run_id"].as_str().unwrap().is_empty(), "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "the schedule never fired: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok(&["schedule", "pause", "every-second"]).contains("paused: true"));
    assert!(ok(&["schedule", "delete", "every-second"]).contains("deleted"));

    // An approval gate, listed as waiting and approved from the CLI.
    let gate = data.path().join("gate.yaml");
    let text = "name: gate\ntasks:\n  - { id: ok, approval: { message: ship it? } }\n  \
                - { id: after, agent: noop, depends_on: [ok] }\n";
    std::fs::write(&gate, text).unwrap();
    ok(&["workflow", "submit", gate.to_str().unwrap()]);
    let waiting: serde_json::Value = serde_json::from_str(&ok(&["--json", "approve"])).unwrap();
    let waiting = waiting.as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0]["input"]["message"], "ship it?");
    let id = waiting[0]["id"].as_str().unwrap();
    let out = ok(&["approve", id, "--comment", "ship"]);
    assert!(out.contains("approved (succeeded)"), "{out}");
    let (success, _, err) = cli(data.path(), &mesh.addr, &["approve", id, "--reject"]);
    assert!(!success);
    assert!(err.contains("not waiting for approval"), "{err}");

    // Refusals are precise and exit non-zero.
    let (success, _, err) = cli(data.path(), &mesh.addr, &["agent", "delete", "reviewer"]);
    assert!(!success);
    assert!(
        err.contains("FailedPrecondition") && err.contains("triage"),
        "{err}"
    );

    // SIGTERM: a graceful stop.
    let pid = mesh.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = mesh.child.try_wait().unwrap() {
            assert!(status.success(), "devcycle up exited with {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "devcycle up did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Data survives a restart, users included (no new bootstrap token).
    let mesh = up(data.path(), &[]);
    assert!(mesh.bootstrap.is_none());
    let login = ["login", "--username", "admin", "--password-stdin"];
    let (success, _, err) = cli_in(data.path(), &mesh.addr, &login, "first admin password\n");
    assert!(success, "{err}");
    let (success, out, err) = cli(data.path(), &mesh.addr, &["agent", "get", "triage"]);
    assert!(success, "{err}");
    assert!(out.contains("live version: 1.0.0"), "{out}");
}
