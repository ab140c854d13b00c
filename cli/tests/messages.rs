//! Messages from the CLI through the gateway of `devcycle up`: topics,
//! publish, a subscriber killed with SIGKILL losing nothing, and a trigger
//! starting runs.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, cli, cli_in, up};
use serde_json::Value;

#[test]
fn topics_publish_subscribe_and_triggers_from_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let mesh = up(data.path(), &[]);
    let token = mesh.bootstrap.clone().expect("a bootstrap token");
    let login = [
        "login",
        "--username",
        "admin",
        "--password-stdin",
        "--bootstrap",
        &token,
    ];
    let (success, _, err) = cli_in(data.path(), &mesh.addr, &login, "messages admin password\n");
    assert!(success, "{err}");
    let ok = |args: &[&str]| {
        let (success, out, err) = cli(data.path(), &mesh.addr, args);
        assert!(success, "devcycle {args:?} failed: {err}");
        out
    };
    let fails = |args: &[&str]| {
        let (success, _, err) = cli(data.path(), &mesh.addr, args);
        assert!(!success, "devcycle {args:?} should fail");
        err
    };
    let json = |args: &[&str]| -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&ok(&all)).unwrap()
    };

    let t = json(&[
        "topic",
        "create",
        "builds",
        "--partitions",
        "2",
        "--max-deliveries",
        "3",
    ]);
    assert_eq!(t["owner"], "user/admin");
    assert_eq!(json(&["topic", "list"])[0]["name"], "builds");
    let p = json(&[
        "publish",
        "builds",
        r#"{"n": 1}"#,
        "--id",
        "b1",
        "--header",
        "event=push",
    ]);
    assert_eq!(p["duplicate"], false);
    assert!(ok(&["publish", "builds", "{}", "--id", "b1"]).contains("published before"));
    let err = fails(&["publish", "nope", "{}"]);
    assert!(err.contains("NotFound") && err.contains("topic"), "{err}");

    // A subscriber that never acks, killed with SIGKILL after its first
    // message: the group's next member gets that message again, counted.
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--json",
            "subscribe",
            "builds",
            "--group",
            "g",
            "--from",
            "earliest",
            "--no-ack",
        ])
        .env("DEVCYCLE_CLIENT__GATEWAY", &mesh.addr)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (first["id"].as_str(), first["delivery"].as_u64()),
        (Some("b1"), Some(1))
    );
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    child.wait().unwrap();
    let again = ok(&[
        "--json",
        "subscribe",
        "builds",
        "--group",
        "g",
        "--count",
        "1",
    ]);
    let again: Value = serde_json::from_str(again.trim()).unwrap();
    assert_eq!(
        (again["id"].as_str(), again["delivery"].as_u64()),
        (Some("b1"), Some(2))
    );
    // Acked this time: the group's next message is the next published.
    ok(&["publish", "builds", r#"{"n": 2}"#, "--id", "b2"]);
    let next = ok(&[
        "--json",
        "subscribe",
        "builds",
        "--group",
        "g",
        "--count",
        "1",
    ]);
    let next: Value = serde_json::from_str(next.trim()).unwrap();
    assert_eq!(next["id"], "b2");

    // A trigger: each pushed build starts a run with the message's value.
    let wf = data.path().join("on-build.yaml");
    let text = "name: on-build\ninputs:\n  - { name: n, required: true }\n\
                tasks:\n  - { id: t, agent: noop, input: { n: \"${inputs.n}\" } }\n";
    std::fs::write(&wf, text).unwrap();
    let noop =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agents/noop.yaml");
    ok(&["agent", "apply", noop.to_str().unwrap(), "--deploy"]);
    ok(&["workflow", "put", wf.to_str().unwrap()]);
    let err = fails(&[
        "trigger",
        "create",
        "bad",
        "--topic",
        "builds",
        "--workflow",
        "on-build",
        "--where",
        "a..b=1",
    ]);
    assert!(err.contains("trigger.payload_filter"), "{err}");
    let created = json(&[
        "trigger",
        "create",
        "on-push",
        "--topic",
        "builds",
        "--workflow",
        "on-build",
        "--header",
        "event=push",
        "--where",
        "n=3",
        "--input",
        "n=${message.payload.n}",
    ]);
    assert_eq!(created["workflow"], "on-build");
    ok(&["publish", "builds", r#"{"n": 3}"#, "--header", "event=push"]);
    ok(&["publish", "builds", r#"{"n": 4}"#, "--header", "event=push"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let trigger = loop {
        let t = json(&["trigger", "list"])[0].clone();
        if t["fired"] == 1 && t["skipped"] == 1 {
            break t;
        }
        assert!(Instant::now() < deadline, "the trigger never fired: {t}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let run = json(&["run", "get", trigger["last_run_id"].as_str().unwrap()]);
    assert_eq!(run["workflow"], "on-build", "{run}");

    // After a restart the trigger still runs.
    drop(mesh);
    let mesh = up(data.path(), &[]);
    let login = ["login", "--username", "admin", "--password-stdin"];
    let (success, _, err) = cli_in(data.path(), &mesh.addr, &login, "messages admin password\n");
    assert!(success, "{err}");
    let ok = |args: &[&str]| {
        let (success, out, err) = cli(data.path(), &mesh.addr, args);
        assert!(success, "devcycle {args:?} failed: {err}");
        out
    };
    ok(&["publish", "builds", r#"{"n": 3}"#, "--header", "event=push"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t: Value = serde_json::from_str(&ok(&["--json", "trigger", "list"])).unwrap();
        if t[0]["fired"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the trigger never fired again: {t}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok(&["trigger", "delete", "on-push"]).contains("deleted"));
}
