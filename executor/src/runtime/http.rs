//! The `http` runtime: a remote agent. `json` POSTs the task input and takes
//! the response body as output; `openai-chat` builds a chat completion
//! request from the input and returns the model's answer. Retries 429 and
//! 5xx with exponential backoff (honouring `Retry-After`); the bearer token
//! comes from the executor's environment or a file and is never logged.

use std::time::Duration;

use devcycle::proto::registry::v1 as reg;
use devcycle::proto::scheduler::v1 as pb;
use serde_json::{Value, json};

use super::{Failure, Finished, TaskRun, kinds};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BODY: usize = 8 * 1024 * 1024;

fn token(h: &reg::HttpRuntime) -> Result<Option<String>, Failure> {
    if !h.token_env.is_empty() {
        return match std::env::var(&h.token_env) {
            Ok(t) if !t.is_empty() => Ok(Some(t)),
            _ => Err(Failure::permanent(
                kinds::HTTP,
                format!(
                    "the executor has no environment variable {} for the token",
                    h.token_env
                ),
            )),
        };
    }
    if !h.token_file.is_empty() {
        return std::fs::read_to_string(&h.token_file)
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

pub async fn run(task: &TaskRun, h: &reg::HttpRuntime, client: &reqwest::Client) -> Finished {
    let e = pb::Enforcement {
        notes: "remote agent over HTTP".into(),
        ..Default::default()
    };
    let fail = |f: Failure| Finished::failed(f, e.clone());
    let token = match token(h) {
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
                let bytes = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                if bytes.len() > MAX_BODY {
                    return fail(Failure::permanent(
                        kinds::OUTPUT_LIMIT,
                        format!("response exceeded {MAX_BODY} bytes"),
                    ));
                }
                (
                    Some(status),
                    retry_after,
                    String::from_utf8_lossy(&bytes).into_owned(),
                )
            }
            Err(err) if err.is_timeout() => (
                None,
                None,
                format!("timed out after {} ms", timeout.as_millis()),
            ),
            Err(err) => (None, None, format!("request failed: {err}")),
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
