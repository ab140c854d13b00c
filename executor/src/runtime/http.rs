//! The `http` runtime: a remote agent. `json` POSTs the task input and takes
//! the response body as output; `openai-chat` builds a chat completion
//! request from the input and returns the model's answer. Retries 429 and
//! 5xx with exponential backoff (honouring `Retry-After`); the bearer token
//! comes from the executor's environment or a file, only those the operator
//! granted ([`Grants`]), and is never logged.
//!
//! Targets are HTTPS on public addresses unless the operator allows plain
//! HTTP or private addresses: names resolve through [`PublicOnly`], so a
//! name that points at loopback, a private network or a cloud metadata
//! address is refused at connect time (DNS rebinding included), and so are
//! such literal addresses and redirects to them. Bodies are read in chunks
//! and refused past [`MAX_BODY`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use devcycle::proto::registry::v1 as reg;
use devcycle::proto::scheduler::v1 as pb;
use serde_json::{Value, json};

use super::{Failure, Finished, Grants, TaskRun, kinds};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_BODY: usize = 8 * 1024 * 1024;

fn token(h: &reg::HttpRuntime, grants: &Grants) -> Result<Option<String>, Failure> {
    if !h.token_env.is_empty() {
        let t = grants.secret(&h.token_env, "runtime.http.token_env")?;
        if t.is_empty() {
            return Err(Failure::permanent(
                kinds::HTTP,
                format!(
                    "the executor has no environment variable {} for the token",
                    h.token_env
                ),
            ));
        }
        return Ok(Some(t));
    }
    if !h.token_file.is_empty() {
        let path = std::path::Path::new(&h.token_file);
        if !grants.secret_files.iter().any(|f| f == path) {
            return Err(Failure::permanent(
                kinds::NOT_GRANTED,
                format!(
                    "runtime.http.token_file: the executor does not share {} with agents (executor.secret_files)",
                    h.token_file
                ),
            ));
        }
        return std::fs::read_to_string(path)
            .map(|t| Some(t.trim().to_owned()))
            .map_err(|e| {
                Failure::permanent(
                    kinds::HTTP,
                    format!("cannot read the token file {}: {e}", h.token_file),
                )
            });
    }
    Ok(None)
}

/// The chat request for an input: `messages` as given, or a `prompt` (with
/// an optional `system`), or the whole input as the user's message.
pub fn chat_request(model: &str, input: &Value) -> Value {
    let messages = if let Some(m) = input.get("messages").filter(|m| m.is_array()) {
        m.clone()
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = input.get("system").and_then(Value::as_str) {
            msgs.push(json!({"role": "system", "content": s}));
        }
        let user = match input.get("prompt").and_then(Value::as_str) {
            Some(p) => p.to_owned(),
            None => serde_json::to_string_pretty(input).unwrap_or_default(),
        };
        msgs.push(json!({"role": "user", "content": user}));
        Value::Array(msgs)
    };
    let mut body = json!({"model": model, "messages": messages});
    for k in ["temperature", "max_tokens"] {
        if let Some(v) = input.get(k) {
            body[k] = v.clone();
        }
    }
    body
}

/// The output of a chat completion: the answer, the model, token usage.
pub fn chat_output(resp: &Value) -> Result<Value, String> {
    let content = resp
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or("the response has no choices[0].message.content")?;
    Ok(json!({
        "content": content,
        "model": resp.get("model").cloned().unwrap_or(Value::Null),
        "usage": resp.get("usage").cloned().unwrap_or(Value::Null),
    }))
}

/// Whether `ip` is a public unicast address: not loopback, private,
/// link-local (cloud metadata), shared, documentation, multicast or
/// otherwise reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 192 && b == 0 && c == 0)
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                is_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)))
            };
            // Addresses that carry an IPv4 address reach it: NAT64 (well-known
            // prefix), 6to4, and the deprecated IPv4-compatible form.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return embedded(s[6], s[7]);
            }
            if s[0] == 0x2002 {
                return embedded(s[1], s[2]);
            }
            if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return embedded(s[6], s[7]);
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x64 && s[1] == 0xff9b) // local-use NAT64, 64:ff9b:1::/48
                || (s[0] == 0x2001 && s[1] == 0) // Teredo: tunnels to anywhere
                || (s[0] == 0x2001 && s[1] == 0xdb8))
        }
    }
}

/// An error with its causes: reqwest's own message hides the interesting
/// part (a refused address, a TLS failure).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Resolves names to their public addresses only.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "{host} has no public address; private targets need executor.http_allow_private"
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Why `url` may not be called under `grants`, if it may not.
fn refused(url: &reqwest::Url, grants: &Grants) -> Option<String> {
    match url.scheme() {
        "https" => {}
        "http" if grants.http_plaintext => {}
        "http" => {
            return Some(format!(
                "{url}: plain HTTP needs executor.http_allow_plaintext; use https"
            ));
        }
        other => return Some(format!("{url}: scheme {other} is not HTTP")),
    }
    let literal = url.host_str().and_then(|h| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
    });
    match literal {
        Some(ip) if !grants.http_private && !is_public(ip) => Some(format!(
            "{url}: {ip} is not a public address; private targets need executor.http_allow_private"
        )),
        _ => None,
    }
}

/// The client every http agent uses: with the address rules of `grants`,
/// redirects included.
pub fn client(grants: &Grants) -> reqwest::Result<reqwest::Client> {
    let g = grants.clone();
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("more than 5 redirects");
        }
        match refused(attempt.url(), &g) {
            Some(why) => attempt.error(format!("redirect refused: {why}")),
            None => attempt.follow(),
        }
    });
    let mut b = reqwest::Client::builder()
        .user_agent("devcycle-executor")
        // A proxy would resolve names itself, past the resolver below.
        .no_proxy()
        .redirect(redirects);
    if !grants.http_private {
        b = b.dns_resolver(Arc::new(PublicOnly));
    }
    b.build()
}

/// Reads a body in chunks, refusing it past [`MAX_BODY`] without holding
/// more than that.
async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, Result<Failure, String>> {
    let too_big = || {
        Err(Ok(Failure::permanent(
            kinds::OUTPUT_LIMIT,
            format!("response exceeded {MAX_BODY} bytes"),
        )))
    };
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return too_big();
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > MAX_BODY {
                    return too_big();
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(Err(format!("reading the response failed: {e}"))),
        }
    }
}

pub async fn run(
    task: &TaskRun,
    h: &reg::HttpRuntime,
    client: &reqwest::Client,
    grants: &Grants,
) -> Finished {
    let e = pb::Enforcement {
        notes: "remote agent over HTTP".into(),
        ..Default::default()
    };
    let fail = |f: Failure| Finished::failed(f, e.clone());
    match reqwest::Url::parse(&h.url) {
        Ok(url) => {
            if let Some(why) = refused(&url, grants) {
                return fail(Failure::permanent(
                    kinds::NOT_GRANTED,
                    format!("runtime.http.url: {why}"),
                ));
            }
        }
        Err(err) => {
            return fail(Failure::permanent(
                kinds::HTTP,
                format!("runtime.http.url: {err}"),
            ));
        }
    }
    let token = match token(h, grants) {
        Ok(t) => t,
        Err(f) => return fail(f),
    };
    let input: Value = match serde_json::from_str(&task.input) {
        Ok(v) => v,
        Err(err) => {
            return fail(Failure::permanent(
                kinds::INVALID_INPUT,
                format!("input is not JSON: {err}"),
            ));
        }
    };
    let chat = h.protocol == reg::HttpProtocol::OpenaiChat as i32;
    let body = if chat {
        chat_request(&h.model, &input)
    } else {
        input
    };
    let timeout = if h.timeout_ms == 0 {
        DEFAULT_TIMEOUT
    } else {
        Duration::from_millis(u64::from(h.timeout_ms))
    };
    let mut backoff = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut req = client.post(&h.url).timeout(timeout).json(&body);
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        if !task.traceparent.is_empty() {
            req = req.header(devcycle::otel::TRACEPARENT, &task.traceparent);
        }
        let sent = tokio::select! {
            r = req.send() => r,
            _ = task.cancel.cancelled() => return fail(Failure::permanent(kinds::CANCELLED, "the task was cancelled")),
        };
        let (status, retry_after, text) = match sent {
            Ok(resp) => {
                let status = resp.status();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
                match read_body(resp).await {
                    Ok(bytes) => (
                        Some(status),
                        retry_after,
                        String::from_utf8_lossy(&bytes).into_owned(),
                    ),
                    Err(Ok(f)) => return fail(f),
                    Err(Err(why)) => (None, None, why),
                }
            }
            Err(err) if err.is_timeout() => (
                None,
                None,
                format!("timed out after {} ms", timeout.as_millis()),
            ),
            Err(err) => (None, None, format!("request failed: {}", chain(&err))),
        };
        let retryable = status.is_none_or(|s| s.as_u16() == 429 || s.is_server_error());
        if let Some(s) = status
            && s.is_success()
        {
            let parsed: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(err) => {
                    return fail(Failure::permanent(
                        kinds::INVALID_OUTPUT,
                        format!("response is not JSON: {err}"),
                    ));
                }
            };
            let output = if chat {
                chat_output(&parsed)
            } else {
                Ok(parsed)
            };
            return match output {
                Ok(v) => Finished::ok(v.to_string(), e),
                Err(m) => fail(Failure::permanent(kinds::INVALID_OUTPUT, m)),
            };
        }
        let what = match status {
            Some(s) => format!(
                "HTTP {}: {}",
                s.as_u16(),
                text.chars().take(300).collect::<String>()
            ),
            None => text,
        };
        if !retryable || attempt > h.max_retries {
            let kind = if status.is_some() {
                kinds::HTTP_STATUS
            } else {
                kinds::HTTP
            };
            let f = Failure {
                kind: kind.into(),
                message: what,
                retryable,
            };
            return fail(f);
        }
        task.logs.line(
            "executor",
            format!("attempt {attempt} failed ({what}); retrying"),
        );
        let wait = retry_after.unwrap_or(backoff).min(Duration::from_secs(30));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = task.cancel.cancelled() => return fail(Failure::permanent(kinds::CANCELLED, "the task was cancelled")),
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_request_shapes() {
        let r = chat_request(
            "m",
            &json!({"prompt": "review this", "system": "be brief", "temperature": 0}),
        );
        assert_eq!(r["messages"][0]["role"], "system");
        assert_eq!(r["messages"][1]["content"], "review this");
        assert_eq!(r["temperature"], 0);
        let r = chat_request("m", &json!({"diff": "+x"}));
        assert!(
            r["messages"][0]["content"]
                .as_str()
                .unwrap()
                .contains("\"diff\"")
        );
        let out = chat_output(&json!({"choices": [{"message": {"content": "ok"}}], "model": "m"}))
            .unwrap();
        assert_eq!(out["content"], "ok");
        assert!(chat_output(&json!({"choices": []})).is_err());
    }
}

#[cfg(test)]
mod addresses {
    use super::is_public;

    #[test]
    fn only_public_unicast_addresses_pass() {
        for ip in ["93.184.216.34", "2606:4700::1111", "64:ff9b::5db8:d822"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "192.0.0.8",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",  // NAT64 of 169.254.169.254
            "64:ff9b:1::1",        // local-use NAT64
            "2002:7f00:1::1",      // 6to4 of 127.0.0.1
            "2001:0:4136:e378::1", // Teredo
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
