//! Logs (human or JSON) and Prometheus metrics.

use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Installs the global subscriber: logs on stderr and, when the `OTEL_*`
/// variables ask for them, traces of `service` (see [`crate::otel`]).
/// `filter` uses `RUST_LOG` syntax; the `RUST_LOG` variable overrides it.
/// Calling twice is harmless. Call inside a Tokio runtime.
pub fn init_logging(format: LogFormat, filter: &str, service: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer as _, Registry};
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Human => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let traces = crate::otel::layer::<Registry>(service).unwrap_or_else(|e| {
        eprintln!("warning: OpenTelemetry traces are off: {e}");
        None
    });
    let _ = tracing_subscriber::registry()
        .with(traces)
        .with(fmt.with_filter(filter))
        .try_init();
}

/// Serves Prometheus `/metrics` on `addr` for the whole process. Fails if a
/// recorder is already installed.
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )?
        .install()?;
    tracing::info!(%addr, "metrics at /metrics");
    Ok(())
}

/// Counts gRPC calls and their latency to the response headers, by service,
/// method and status code (`grpc_server_handled_total`,
/// `grpc_server_handling_seconds`). Streaming calls are timed to their first
/// response.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    service: &'static str,
}

impl GrpcMetricsLayer {
    pub fn new(service: &'static str) -> Self {
        Self { service }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            service: self.service,
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    service: &'static str,
}

impl<S, B, RB> tower::Service<Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let service = self.service;
        let start = Instant::now();
        let span = if crate::otel::enabled() {
            let span = tracing::info_span!(
                "grpc.server",
                otel.name = %method,
                otel.kind = "server",
                rpc.system = "grpc",
                devcycle.component = service,
            );
            crate::otel::set_parent_from(&span, req.headers());
            span
        } else {
            tracing::Span::none()
        };
        let fut = span.in_scope(|| self.inner.call(req));
        Box::pin(async move {
            let res = tracing::Instrument::instrument(fut, span).await;
            let code = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(|c| tonic::Code::from_bytes(c.as_bytes()))
                    .unwrap_or(tonic::Code::Ok),
                Err(_) => tonic::Code::Unknown,
            };
            let labels = [
                ("service", service.to_owned()),
                ("method", method),
                ("code", format!("{code:?}")),
            ];
            metrics::counter!("grpc_server_handled_total", &labels).increment(1);
            metrics::histogram!("grpc_server_handling_seconds", &labels)
                .record(start.elapsed().as_secs_f64());
            res
        })
    }
}
