//! One submit through the gateway is one trace: the gateway's span is the
//! parent of the scheduler's, the scheduler's of the executor's, the
//! executor's of the agent's, and the agent process receives that context as
//! `TRACEPARENT`. Spans are exported by `devcycle up` over OTLP/gRPC to a
//! receiver in this test.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use parking_lot::Mutex;
use serde_json::Value;

const PASSWORD: &str = "traces-test-password-1";

#[derive(Debug, Clone)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    component: String,
}

/// An OTLP trace receiver keeping every span it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut out = self.0.lock();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let component = s
                        .attributes
                        .iter()
                        .find(|kv| kv.key == "devcycle.component")
                        .and_then(|kv| kv.value.as_ref()?.value.clone())
                        .map(|v| match v {
                            AnyValue::StringValue(s) => s,
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    out.push(Span {
                        trace: hex(&s.trace_id),
                        id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name,
                        component,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

const AGENT: &str = r#"name: tracer
owner: platform
description: Prints the trace context it was given
version: 1.0.0
runtime:
  process:
    command: /bin/sh
    args: ["-c", "printf '{\"traceparent\":\"%s\"}' \"$TRACEPARENT\""]
"#;

const WORKFLOW: &str = r#"name: traced
tasks:
  - id: probe
    agent: tracer
    input: {}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_submit_through_the_gateway_is_one_trace_across_every_hop() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let receiver = Receiver::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let data = tempfile::tempdir().unwrap();
    let (d, files) = (data.path(), tempfile::tempdir().unwrap());
    let (agent, workflow) = (
        files.path().join("tracer.yaml"),
        files.path().join("wf.yaml"),
    );
    std::fs::write(&agent, AGENT).unwrap();
    std::fs::write(&workflow, WORKFLOW).unwrap();
    let env = [
        ("DEVCYCLE_GATEWAY__ADMIN_PASSWORD", PASSWORD),
        // What is traced here is not the sandbox.
        ("DEVCYCLE_EXECUTOR__ALLOW_UNSANDBOXED", "true"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mesh = tokio::task::block_in_place(|| common::up(d, &env));
    let addr = mesh.addr.clone();
    let run_id = tokio::task::block_in_place(|| {
        let login = ["login", "--username", "admin", "--password-stdin"];
        cli(d, &addr, &login, PASSWORD);
        cli(
            d,
            &addr,
            &["agent", "apply", agent.to_str().unwrap(), "--deploy"],
            "",
        );
        let out = cli(
            d,
            &addr,
            &["--json", "workflow", "submit", workflow.to_str().unwrap()],
            "",
        );
        let v: Value = serde_json::from_str(out.trim()).expect("submit prints JSON");
        v["run"]["id"].as_str().expect("a run id").to_owned()
    });

    // The agent's output: the TRACEPARENT it saw.
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let out = tokio::task::block_in_place(|| {
            cli(d, &addr, &["--json", "task", "list", "--run", &run_id], "")
        });
        let tasks: Value = serde_json::from_str(out.trim()).expect("task list prints JSON");
        let t = &tasks[0];
        match t["state"].as_str() {
            Some("succeeded") => break t["output"]["traceparent"].as_str().unwrap().to_owned(),
            Some("failed" | "dead" | "cancelled") => panic!("the probe ended {t}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "the probe did not finish: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "the agent saw a traceparent: {seen:?}");
    let (trace, agent_span) = (parts[1].to_owned(), parts[2].to_owned());

    // The chain: gateway → scheduler → executor → agent, in that trace.
    let deadline = Instant::now() + Duration::from_secs(30);
    let chain = loop {
        let spans = receiver.0.lock().clone();
        let by_id = |id: &str| {
            spans
                .iter()
                .find(|s| s.id == id && s.trace == trace)
                .cloned()
        };
        let chain = (|| {
            let agent = by_id(&agent_span)?;
            let executor = by_id(&agent.parent)?;
            let scheduler = by_id(&executor.parent)?;
            let gateway = by_id(&scheduler.parent)?;
            Some([agent, executor, scheduler, gateway])
        })();
        if let Some(c) = chain {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no complete trace {trace} among {} spans: {spans:#?}",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let [agent, executor, scheduler, gateway] = chain;
    for s in &chain_view(&[&agent, &executor, &scheduler, &gateway]) {
        eprintln!("{s}");
    }
    assert_eq!(agent.component, "agent");
    assert_eq!(agent.name, "agent tracer");
    assert_eq!(executor.component, "executor");
    assert_eq!(executor.name, "executor.task");
    assert_eq!(scheduler.component, "scheduler");
    assert!(
        scheduler.name.starts_with("/devcycle.scheduler.v1."),
        "{}",
        scheduler.name
    );
    assert_eq!(gateway.component, "gateway");
    assert_eq!(
        gateway.name, scheduler.name,
        "the gateway span names the method it proxied"
    );
    assert!(gateway.parent.is_empty(), "the CLI sent no trace context");
    // The scheduler's lookup of the agent in the registry is in the trace.
    let spans = receiver.0.lock().clone();
    assert!(
        spans.iter().any(|s| s.component == "registry"
            && s.parent == scheduler.id
            && s.name.starts_with("/devcycle.registry.v1.AgentRegistry/")),
        "no registry span under the scheduler's: {spans:#?}"
    );
}

/// The trace as an indented tree, root first (printed for the record).
fn chain_view(spans: &[&Span]) -> Vec<String> {
    spans
        .iter()
        .rev()
        .enumerate()
        .map(|(depth, s)| {
            format!(
                "{}{} [{}] span {} parent {}",
                "  ".repeat(depth),
                s.name,
                s.component,
                s.id,
                if s.parent.is_empty() { "-" } else { &s.parent }
            )
        })
        .collect()
}

/// The CLI against the gateway; its stdout, or a failure naming the call.
fn cli(data: &Path, addr: &str, args: &[&str], stdin: &str) -> String {
    let (ok, out, err) = common::cli_in(data, addr, args, stdin);
    assert!(ok, "devcycle {args:?}: {err}");
    out
}
