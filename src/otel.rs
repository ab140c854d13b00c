//! OpenTelemetry traces. Off unless the standard variables name an OTLP
//! endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn them off again). Off, no span is created
//! on a request's path: every call site asks [`enabled`] (one relaxed load)
//! first. The W3C `traceparent` carries a trace across processes: gRPC
//! metadata between services, the task row in the scheduler (so retries and
//! dead-letter requeues stay in the submit's trace), `TRACEPARENT` for
//! process agents and a `traceparent` header for http agents.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderMap;
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The metadata key, and the agents' variable.
pub const TRACEPARENT: &str = "traceparent";

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported by this process.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the environment asks for traces.
fn configured() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let endpoint = !var("OTEL_EXPORTER_OTLP_ENDPOINT").trim().is_empty()
        || !var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").trim().is_empty();
    endpoint
        && !var("OTEL_SDK_DISABLED").eq_ignore_ascii_case("true")
        && var("OTEL_TRACES_EXPORTER") != "none"
}

/// The layer exporting this process's spans over OTLP/gRPC, when
/// [`configured`]. `service` names the process unless `OTEL_SERVICE_NAME`
/// does. Must be called inside a Tokio runtime (the exporter's channel).
pub fn layer<S>(service: &str) -> anyhow::Result<Option<impl tracing_subscriber::Layer<S>>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if !configured() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_owned());
    }
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("devcycle");
    let _ = PROVIDER.set(provider);
    ENABLED.store(true, Ordering::Relaxed);
    // Only the mesh's own spans: not every span of the libraries below it.
    let only_ours = tracing_subscriber::filter::Targets::new()
        .with_target("devcycle", tracing::Level::INFO)
        .with_target("devcycle_registry", tracing::Level::INFO)
        .with_target("devcycle_scheduler", tracing::Level::INFO)
        .with_target("devcycle_executor", tracing::Level::INFO)
        .with_target("devcycle_gateway", tracing::Level::INFO);
    use tracing_subscriber::Layer as _;
    Ok(Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(only_ours),
    ))
}

/// Exports what is buffered; call once before the process exits.
pub fn shutdown() {
    if let Some(p) = PROVIDER.get()
        && let Err(e) = p.shutdown()
    {
        tracing::warn!(error = %e, "flushing traces");
    }
}

/// The `traceparent` that makes a remote span a child of `span`; empty when
/// traces are off or `span` has no valid context.
pub fn traceparent(span: &Span) -> String {
    if !enabled() {
        return String::new();
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT).unwrap_or_default()
}

/// Makes `span` (not yet entered) a child of a remote `traceparent`; a
/// malformed or empty value leaves it a root.
pub fn set_parent(span: &Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// [`set_parent`] from gRPC metadata.
pub fn set_parent_from(span: &Span, headers: &HeaderMap) {
    if let Some(v) = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()) {
        set_parent(span, v);
    }
}

/// Puts `span`'s `traceparent` in outgoing metadata, replacing the caller's.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(headers));
}

/// A request to another mesh service, carrying the current span's context
/// when traces are on.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if enabled() {
        let tp = traceparent(&Span::current());
        if let Ok(v) = tp.parse() {
            req.metadata_mut().insert(TRACEPARENT, v);
        }
    }
    req
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_costs_nothing() {
        assert!(!enabled());
        assert_eq!(traceparent(&Span::current()), "");
    }
}
