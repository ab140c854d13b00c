//! `devcycle up` in a child process and the CLI against it, shared by the
//! CLI's end-to-end tests.
#![allow(dead_code)] // each test crate uses part of it

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_devcycle");

pub struct Up {
    pub child: Child,
    /// The gateway's address.
    pub addr: String,
    /// Printed while there are no users.
    pub bootstrap: Option<String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `devcycle up` on free ports with its data in `data` and `env` added;
/// returns once it serves (it prints "stop with Ctrl-C").
pub fn up(data: &Path, env: &[(&str, &str)]) -> Up {
    let mut child = Command::new(BIN)
        .args(["up", "--data-dir"])
        .arg(data)
        .args(["--registry-listen", "127.0.0.1:0"])
        .args(["--scheduler-listen", "127.0.0.1:0"])
        .args(["--executor-listen", "127.0.0.1:0"])
        .args(["--gateway-listen", "127.0.0.1:0"])
        .env("DEVCYCLE_METRICS__LISTEN", "")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn devcycle up");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut addr, mut bootstrap) = (None, None);
    loop {
        let line = lines
            .next()
            .expect("devcycle up printed its addresses")
            .expect("read stdout");
        let line = line.trim();
        if line.starts_with("stop with Ctrl-C") {
            break;
        }
        if let Some(rest) = line.strip_prefix("gateway") {
            addr = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some((_, token)) = line.split_once("--bootstrap ") {
            bootstrap = token.split_whitespace().next().map(str::to_owned);
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Up {
        child,
        addr: addr.expect("the gateway's address"),
        bootstrap,
    }
}

/// Runs the CLI against the gateway at `addr` with `stdin`: whether it
/// succeeded, its stdout and its stderr.
pub fn cli_in(data: &Path, addr: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("DEVCYCLE_CLIENT__GATEWAY", addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run devcycle");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("run devcycle");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn cli(data: &Path, addr: &str, args: &[&str]) -> (bool, String, String) {
    cli_in(data, addr, args, "")
}
