//! The `http` runtime against an HTTP server the test runs: plain JSON and
//! OpenAI-compatible chat, retries on 429 and 5xx, timeouts, bearer tokens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use devcycle::proto::registry::v1 as reg;
use devcycle_executor::runtime::{self, Env, Finished, LogSink, TaskRun, kinds};
use devcycle_executor::{Capabilities, Limits};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The trace context every task here carries.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// One scripted reply: status, body, delay before answering.
#[derive(Clone)]
struct Reply(u16, String, u64);

struct Server {
    url: String,
    hits: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
}

/// Answers with `replies` in turn (the last one repeats).
async fn server(replies: Vec<Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    let hits = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (h, r) = (Arc::clone(&hits), Arc::clone(&requests));
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = h.fetch_add(1, Ordering::SeqCst);
            let reply = replies[n.min(replies.len() - 1)].clone();
            let r = Arc::clone(&r);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let k = sock.read(&mut chunk).await.unwrap_or(0);
                    if k == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break (head.to_owned(), body.to_owned());
                        }
                    }
                };
                r.lock()
                    .push((head, serde_json::from_str(&body).unwrap_or(Value::Null)));
                tokio::time::sleep(Duration::from_millis(reply.2)).await;
                let resp = format!(
                    "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                    reply.0,
                    reply.1.len(),
                    reply.1
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    Server {
        url,
        hits,
        requests,
    }
}

/// What these tests' local servers need: plain HTTP on loopback.
fn local() -> runtime::Grants {
    runtime::Grants {
        http_plaintext: true,
        http_private: true,
        ..Default::default()
    }
}

fn env(grants: runtime::Grants) -> Env {
    Env {
        caps: Capabilities::none(),
        defaults: Limits {
            wall: Duration::from_secs(10),
            memory_bytes: 1 << 30,
            cpu_time: Duration::from_secs(10),
            max_processes: 64,
            max_open_files: 256,
            max_output_bytes: 1 << 20,
        },
        agent_dir: "/nonexistent".into(),
        read_only: vec![],
        work_dir: std::env::temp_dir(),
        http: runtime::http::client(&grants).unwrap(),
        grants,
    }
}

async fn call(h: reg::HttpRuntime, input: &str) -> (Finished, Vec<String>) {
    call_with(h, input, local()).await
}

async fn call_with(
    h: reg::HttpRuntime,
    input: &str,
    grants: runtime::Grants,
) -> (Finished, Vec<String>) {
    let version = reg::AgentVersion {
        agent: "remote".into(),
        version: "1.0.0".into(),
        runtime: Some(reg::Runtime {
            kind: Some(reg::runtime::Kind::Http(h)),
        }),
        ..Default::default()
    };
    let (logs, mut lines) = LogSink::new();
    let task = TaskRun {
        task_id: "t".into(),
        attempt: 1,
        run_id: "r".into(),
        agent: Arc::new(version),
        input: input.into(),
        start_to_close: Duration::ZERO,
        cancel: CancellationToken::new(),
        logs,
        pid: Arc::new(AtomicU32::new(0)),
        traceparent: TRACEPARENT.into(),
    };
    let done = runtime::run(&task, &env(grants)).await;
    drop(task);
    let mut out = Vec::new();
    while let Some((_, l)) = lines.recv().await {
        out.push(l);
    }
    (done, out)
}

fn json_runtime(url: &str) -> reg::HttpRuntime {
    reg::HttpRuntime {
        url: url.into(),
        protocol: reg::HttpProtocol::Json as i32,
        max_retries: 3,
        ..Default::default()
    }
}

#[tokio::test]
async fn plain_json_round_trip() {
    let s = server(vec![Reply(200, r#"{"verdict":"ok"}"#.into(), 0)]).await;
    let (done, _) = call(json_runtime(&s.url), r#"{"diff":"+x"}"#).await;
    assert_eq!(done.outcome, Ok(r#"{"verdict":"ok"}"#.into()));
    let reqs = s.requests.lock();
    assert_eq!(
        reqs[0].1,
        json!({"diff": "+x"}),
        "the task input is the request body"
    );
    assert!(
        reqs[0]
            .0
            .to_ascii_lowercase()
            .contains(&format!("traceparent: {TRACEPARENT}")),
        "the trace context travels as a header: {}",
        reqs[0].0
    );
}

#[tokio::test]
async fn openai_chat_with_a_bearer_token_that_is_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "secret-token-123\n").unwrap();
    let s = server(vec![
        Reply(429, r#"{"error":"slow down"}"#.into(), 0),
        Reply(200, r#"{"model":"m1","choices":[{"message":{"role":"assistant","content":"LGTM"}}],"usage":{"total_tokens":9}}"#.into(), 0),
    ])
    .await;
    let mut h = json_runtime(&s.url);
    h.protocol = reg::HttpProtocol::OpenaiChat as i32;
    h.model = "m1".into();
    h.token_file = token_file.to_string_lossy().into_owned();
    let grants = runtime::Grants {
        secret_files: vec![token_file.clone()],
        ..local()
    };
    let (done, logs) =
        call_with(h, r#"{"prompt":"review this","system":"be brief"}"#, grants).await;
    let out: Value = serde_json::from_str(done.outcome.as_ref().unwrap()).unwrap();
    assert_eq!(out["content"], "LGTM");
    assert_eq!(out["usage"]["total_tokens"], 9);
    assert_eq!(s.hits.load(Ordering::SeqCst), 2, "retried after the 429");
    let reqs = s.requests.lock();
    let (head, body) = &reqs[1];
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer secret-token-123")
    );
    assert_eq!(body["model"], "m1");
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(
        body["messages"][1],
        json!({"role": "user", "content": "review this"})
    );
    assert!(
        !format!("{logs:?}{done:?}").contains("secret-token-123"),
        "the token is never logged"
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let s = server(vec![Reply(503, "{}".into(), 0)]).await;
    let mut h = json_runtime(&s.url);
    h.max_retries = 2;
    let (done, logs) = call(h, "{}").await;
    let e = done.outcome.unwrap_err();
    assert_eq!((e.kind.as_str(), e.retryable), (kinds::HTTP_STATUS, true));
    assert!(e.message.contains("503"));
    assert_eq!(s.hits.load(Ordering::SeqCst), 3, "one try and two retries");
    assert_eq!(logs.len(), 2);

    let s = server(vec![Reply(400, r#"{"error":"bad"}"#.into(), 0)]).await;
    let (done, _) = call(json_runtime(&s.url), "{}").await;
    let e = done.outcome.unwrap_err();
    assert_eq!((e.kind.as_str(), e.retryable), (kinds::HTTP_STATUS, false));
    assert_eq!(
        s.hits.load(Ordering::SeqCst),
        1,
        "client errors are not retried"
    );
}

#[tokio::test]
async fn slow_servers_time_out() {
    let s = server(vec![Reply(200, "{}".into(), 2000)]).await;
    let mut h = json_runtime(&s.url);
    h.timeout_ms = 200;
    h.max_retries = 1;
    let started = std::time::Instant::now();
    let (done, _) = call(h, "{}").await;
    let e = done.outcome.unwrap_err();
    assert_eq!(e.kind, kinds::HTTP);
    assert!(e.message.contains("timed out"), "{e:?}");
    assert_eq!(s.hits.load(Ordering::SeqCst), 2);
    assert!(started.elapsed() < Duration::from_secs(2));

    let s = server(vec![Reply(200, "not json".into(), 0)]).await;
    let (done, _) = call(json_runtime(&s.url), "{}").await;
    assert_eq!(done.outcome.unwrap_err().kind, kinds::INVALID_OUTPUT);
}

#[track_caller]
fn refused(done: &Finished, kind: &str, says: &str) {
    match &done.outcome {
        Err(e) => {
            assert_eq!(e.kind, kind, "{e:?}");
            assert!(e.message.contains(says), "{e:?}");
        }
        Ok(o) => panic!("expected {kind}, got {o}"),
    }
}

/// Defect: `token_env`/`token_file` sent any executor variable or readable
/// file as a token to any URL, plain HTTP and loopback or metadata
/// addresses included. Now tokens come only from the operator's grants, and
/// targets are HTTPS on public addresses unless the operator allows more.
#[tokio::test]
async fn tokens_and_targets_need_the_operators_grant() {
    let s = server(vec![Reply(200, "{}".into(), 0)]).await;
    let none = runtime::Grants::default;
    // Secrets that were not granted, even for an allowed target.
    let mut h = json_runtime(&s.url);
    h.token_env = "HOME".into();
    let (done, _) = call_with(h.clone(), "{}", local()).await;
    refused(&done, kinds::NOT_GRANTED, "runtime.http.token_env");
    h.token_env.clear();
    h.token_file = "/etc/hostname".into();
    let (done, _) = call_with(h, "{}", local()).await;
    refused(&done, kinds::NOT_GRANTED, "executor.secret_files");
    // Plain HTTP, loopback and metadata addresses, literal or by name.
    let (done, _) = call_with(json_runtime(&s.url), "{}", none()).await;
    refused(&done, kinds::NOT_GRANTED, "executor.http_allow_plaintext");
    let port = s.url.split(':').nth(2).unwrap().split('/').next().unwrap();
    for url in [
        format!("https://127.0.0.1:{port}/"),
        "https://169.254.169.254/latest/meta-data/".to_owned(),
        "https://[::1]/".to_owned(),
        "https://10.1.2.3/".to_owned(),
    ] {
        let (done, _) = call_with(json_runtime(&url), "{}", none()).await;
        refused(&done, kinds::NOT_GRANTED, "executor.http_allow_private");
    }
    let mut h = json_runtime(&format!("https://localhost:{port}/"));
    h.max_retries = 0;
    let (done, _) = call_with(h, "{}", none()).await;
    refused(&done, kinds::HTTP, "no public address");
    assert_eq!(
        s.hits.load(Ordering::SeqCst),
        0,
        "nothing reached the server"
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Defect: the whole body was read before the size check, so a 100 MB
/// answer took 100 MB of the executor's memory. Now it is refused at the
/// limit, read in chunks.
#[tokio::test]
async fn a_huge_response_is_refused_without_holding_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 4096];
        let _ = sock.read(&mut buf).await;
        // No content-length: the size shows only while reading.
        let _ = sock
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
            )
            .await;
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..1600 {
            if sock.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let before = rss_kib();
    let mut h = json_runtime(&url);
    h.max_retries = 0;
    let (done, _) = call(h, "{}").await;
    refused(&done, kinds::OUTPUT_LIMIT, "exceeded");
    let grew = rss_kib().saturating_sub(before);
    assert!(
        grew < 40 * 1024,
        "RSS grew by {grew} KiB for a 100 MB answer"
    );
}
