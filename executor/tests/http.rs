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

fn env() -> Env {
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
        http: reqwest::Client::new(),
    }
}

async fn call(h: reg::HttpRuntime, input: &str) -> (Finished, Vec<String>) {
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
    };
    let done = runtime::run(&task, &env()).await;
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
    assert_eq!(
        s.requests.lock()[0].1,
        json!({"diff": "+x"}),
        "the task input is the request body"
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
    let (done, logs) = call(h, r#"{"prompt":"review this","system":"be brief"}"#).await;
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
