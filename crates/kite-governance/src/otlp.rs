//! OTLP export of the `kite.client` / `kite.server` spans (cargo feature `otel`).
//!
//! [`OtlpTracing`] builds an OpenTelemetry tracer provider that batches finished spans and
//! exports them over OTLP/HTTP with protobuf bodies (`POST <endpoint>/v1/traces`), and
//! gives the `tracing-opentelemetry` layer to add to your subscriber. The service name
//! defaults to the kite's name; `service.version` and `service.instance.id` are the kite's
//! version and id.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tracing_subscriber::layer::SubscriberExt as _;
//!
//! let k = kite::Kite::new("math", "1.0.0")?;
//! // Export only when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set.
//! let otlp = kite_governance::OtlpTracing::from_env(&k)?;
//! let subscriber = tracing_subscriber::registry()
//!     .with(tracing_subscriber::fmt::layer())
//!     .with(otlp.as_ref().map(|o| o.layer()));
//! tracing::subscriber::set_global_default(subscriber)?;
//! // ... serve ...
//! if let Some(otlp) = otlp {
//!     otlp.shutdown()?; // exports what is still queued
//! }
//! # Ok(()) }
//! ```
//!
//! Configuration: explicit [`OtlpConfig`] fields win over the standard environment
//! variables, which win over the defaults.
//!
//! | Setting | Field | Environment | Default |
//! |---|---|---|---|
//! | traces URL | `traces_endpoint` (as is), else `endpoint` + `/v1/traces` | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (as is), else `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces` | `http://localhost:4318/v1/traces` |
//! | service name | `service_name` | `OTEL_SERVICE_NAME` | the kite's name |
//! | export timeout | `timeout` | `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, `OTEL_EXPORTER_OTLP_TIMEOUT` (ms) | 10 s |
//! | headers | `headers` | `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, `OTEL_EXPORTER_OTLP_HEADERS` (`k=v,k2=v2`) | none |
//! | batching | `scheduled_delay`, `max_queue_size` | `OTEL_BSP_SCHEDULE_DELAY` (ms), `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` | 5 s, 2048 spans, 512 per request |
//! | protocol | — | `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`: only `http/protobuf` | `http/protobuf` |
//!
//! Plain `http://` endpoints only (no TLS: run a local collector or sidecar). Spans beyond
//! the queue are dropped, never buffered without bound; a failed export is logged (through
//! `tracing`, target `opentelemetry`) and dropped.
//!
//! Threads: the SDK's batch processor runs on its own thread; the HTTP requests run on a
//! second small thread with a single-threaded tokio runtime owned by [`OtlpTracing`], so
//! export and [`OtlpTracing::shutdown`] work the same from any runtime flavour or from
//! none.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use tokio::sync::oneshot;
use tracing_subscriber::registry::LookupSpan;

/// Path appended to a base endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`, [`OtlpConfig::endpoint`]).
pub const TRACES_PATH: &str = "/v1/traces";
/// Traces URL when nothing is configured.
pub const DEFAULT_TRACES_ENDPOINT: &str = "http://localhost:4318/v1/traces";
/// Export request timeout when nothing is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest collector response read (larger ones fail the export).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Name of the instrumentation scope of the exported spans.
pub const SCOPE: &str = "kite-governance";

/// Why OTLP export could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// A setting (field or environment variable) is not usable.
    #[error("OTLP configuration: {0}")]
    Config(String),
    /// The exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The export thread could not start.
    #[error("OTLP export thread: {0}")]
    Thread(#[from] std::io::Error),
    /// Flushing or shutting down the provider failed (e.g. the collector did not answer).
    #[error("OTLP flush: {0}")]
    Flush(#[from] opentelemetry_sdk::error::OTelSdkError),
}

/// Where and how to export; `Default` leaves everything to the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtlpConfig {
    /// Base URL of the collector's OTLP/HTTP receiver (`http://host:4318`); spans go to
    /// `<endpoint>/v1/traces`.
    pub endpoint: Option<String>,
    /// Full traces URL, used as is (wins over `endpoint`).
    pub traces_endpoint: Option<String>,
    /// `service.name` of the exported resource.
    pub service_name: Option<String>,
    /// Timeout of one export request.
    pub timeout: Option<Duration>,
    /// Extra request headers (e.g. authorization for a hosted collector), added to those
    /// of the environment.
    pub headers: Vec<(String, String)>,
    /// Longest wait before a batch is sent.
    pub scheduled_delay: Option<Duration>,
    /// Spans queued at most; more are dropped.
    pub max_queue_size: Option<usize>,
}

impl OtlpConfig {
    /// Export to the OTLP/HTTP receiver at `endpoint` (base URL, e.g. `http://127.0.0.1:4318`).
    pub fn endpoint(endpoint: impl Into<String>) -> Self {
        OtlpConfig {
            endpoint: Some(endpoint.into()),
            ..Default::default()
        }
    }

    /// Whether the environment asks for OTLP trace export: `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (non-empty) and `OTEL_TRACES_EXPORTER`
    /// is not `none`.
    pub fn configured_by_env() -> bool {
        if env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none")) {
            return false;
        }
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
    }

    /// The traces URL these settings and the environment resolve to.
    pub fn resolved_traces_endpoint(&self) -> String {
        if let Some(url) = non_empty(self.traces_endpoint.as_deref()) {
            return url.to_string();
        }
        if let Some(base) = non_empty(self.endpoint.as_deref()) {
            return join(base);
        }
        if let Some(url) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return url;
        }
        if let Some(base) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            return join(&base);
        }
        DEFAULT_TRACES_ENDPOINT.to_string()
    }

    /// The service name: the field, else `OTEL_SERVICE_NAME`, else `default`.
    pub fn resolved_service_name(&self, default: &str) -> String {
        non_empty(self.service_name.as_deref())
            .map(str::to_string)
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| default.to_string())
    }

    /// The export timeout: the field, else `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), else 10 s.
    pub fn resolved_timeout(&self) -> Result<Duration, OtlpError> {
        if let Some(t) = self.timeout {
            return Ok(t);
        }
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ] {
            if let Some(v) = env(var) {
                let ms: u64 = v.trim().parse().map_err(|_| {
                    OtlpError::Config(format!("{var}={v:?} is not a number of milliseconds"))
                })?;
                return Ok(Duration::from_millis(ms));
            }
        }
        Ok(DEFAULT_TIMEOUT)
    }
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.trim().is_empty())
}

fn join(base: &str) -> String {
    format!("{}{TRACES_PATH}", base.trim_end_matches('/'))
}

fn check_protocol() -> Result<(), OtlpError> {
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(v) = env(var) {
            if v.trim() != "http/protobuf" {
                return Err(OtlpError::Config(format!(
                    "{var}={v:?}: only http/protobuf is supported"
                )));
            }
            return Ok(());
        }
    }
    Ok(())
}

/// OTLP/HTTP span export for one process; see the [module docs](self).
///
/// Dropping it flushes and shuts down like [`OtlpTracing::shutdown`] (errors are logged).
pub struct OtlpTracing {
    provider: SdkTracerProvider,
    io: Option<IoThread>,
    service_name: String,
    traces_endpoint: String,
}

impl fmt::Debug for OtlpTracing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpTracing")
            .field("service_name", &self.service_name)
            .field("traces_endpoint", &self.traces_endpoint)
            .finish()
    }
}

impl OtlpTracing {
    /// Starts export for `kite`'s process with `config` (unset fields from the
    /// environment). The service name defaults to the kite's name.
    pub fn start(kite: &kite::Kite, config: &OtlpConfig) -> Result<Self, OtlpError> {
        let id = kite.identity();
        let resource = Resource::builder()
            .with_service_name(config.resolved_service_name(&id.name))
            .with_attributes([
                KeyValue::new("service.version", id.version.clone()),
                KeyValue::new("service.instance.id", id.id.clone()),
            ])
            .build();
        Self::with_resource(resource, config)
    }

    /// Starts export for `kite` when the environment asks for it
    /// ([`OtlpConfig::configured_by_env`]); `None` otherwise.
    pub fn from_env(kite: &kite::Kite) -> Result<Option<Self>, OtlpError> {
        if !OtlpConfig::configured_by_env() {
            return Ok(None);
        }
        Self::start(kite, &OtlpConfig::default()).map(Some)
    }

    /// Starts export of spans described by `resource` (which should carry `service.name`).
    pub fn with_resource(resource: Resource, config: &OtlpConfig) -> Result<Self, OtlpError> {
        check_protocol()?;
        let traces_endpoint = config.resolved_traces_endpoint();
        if !traces_endpoint.starts_with("http://") {
            return Err(OtlpError::Config(format!(
                "traces endpoint {traces_endpoint:?}: only http:// URLs are supported"
            )));
        }
        let timeout = config.resolved_timeout()?;
        let service_name = resource
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        let io = IoThread::start()?;
        let client = IoClient::new(io.handle.clone(), timeout);
        let headers: HashMap<String, String> = config.headers.iter().cloned().collect();
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces_endpoint.clone())
            .with_timeout(timeout)
            .with_http_client(client);
        if !headers.is_empty() {
            builder = builder.with_headers(headers);
        }
        let exporter = builder.build()?;
        let mut batch = BatchConfigBuilder::default();
        if let Some(d) = config.scheduled_delay {
            batch = batch.with_scheduled_delay(d);
        }
        if let Some(n) = config.max_queue_size {
            batch = batch.with_max_queue_size(n.max(1));
        }
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch.build())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        Ok(OtlpTracing {
            provider,
            io: Some(io),
            service_name,
            traces_endpoint,
        })
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans exported here; add it
    /// to your subscriber (`tracing_subscriber::registry().with(otlp.layer())`).
    pub fn layer<S>(&self) -> tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer())
    }

    /// A tracer of this provider (scope `kite-governance`).
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer(SCOPE)
    }

    /// The tracer provider (e.g. for `opentelemetry::global::set_tracer_provider`).
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// The exported `service.name`.
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// The URL spans are posted to.
    pub fn traces_endpoint(&self) -> &str {
        &self.traces_endpoint
    }

    /// Exports every finished span now; blocks until the collector answered (at most the
    /// export timeout).
    pub fn force_flush(&self) -> Result<(), OtlpError> {
        Ok(self.provider.force_flush()?)
    }

    /// Exports what is queued and stops exporting; blocks until done (bounded by the
    /// export timeout). Spans ending later are dropped. In async code this blocks the
    /// calling worker: call it last, or inside `tokio::task::spawn_blocking`.
    pub fn shutdown(mut self) -> Result<(), OtlpError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), OtlpError> {
        let Some(io) = self.io.take() else {
            return Ok(());
        };
        let r = self.provider.shutdown();
        io.stop();
        match r {
            Ok(()) | Err(opentelemetry_sdk::error::OTelSdkError::AlreadyShutdown) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for OtlpTracing {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "OTLP export shutdown");
        }
    }
}

/// The thread running the export requests.
struct IoThread {
    handle: tokio::runtime::Handle,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl IoThread {
    fn start() -> Result<IoThread, OtlpError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kite-otlp-export".into())
            .spawn(move || {
                // Runs the spawned export requests until told to stop.
                let _ = rt.block_on(stopped);
            })?;
        Ok(IoThread {
            handle,
            stop,
            thread,
        })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            tracing::warn!("the OTLP export thread panicked");
        }
    }
}

/// The exporter's HTTP client: hyper (HTTP/1.1) on the export thread's runtime.
#[derive(Clone)]
struct IoClient {
    handle: tokio::runtime::Handle,
    client: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl fmt::Debug for IoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoClient")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl IoClient {
    fn new(handle: tokio::runtime::Handle, timeout: Duration) -> Self {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(HttpConnector::new());
        IoClient {
            handle,
            client,
            timeout,
        }
    }

    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(body));
        let client = self.client.clone();
        let timeout = self.timeout;
        let task = self.handle.spawn(async move {
            let exchange = async {
                let response = client.request(request).await?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_RESPONSE_BYTES)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}").into()),
            }
        });
        task.await
            .map_err(|e| HttpError::from(format!("export request task: {e}")))?
    }
}

impl HttpClient for IoClient {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(self.send(request))
    }
}
