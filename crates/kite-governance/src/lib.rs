//! Service governance for kites, as tower layers you can compose, tune or switch off.
//!
//! Every call is identified by its five-tuple (From, FromCluster, To, ToCluster, Method;
//! see [`mod@tuple`]); it keys circuit breakers, labels metrics and is recorded on spans.
//!
//! * Client side: a [`Call`] goes through `Service<Call, Response = Value, Error =
//!   KiteError>` layers — [`ClientTraceLayer`], [`FallbackLayer`],
//!   [`ClientMetricsLayer`], [`DeadlineLayer`], [`RetryLayer`], [`BreakerLayer`] — down
//!   to a [`Balancer`] over a live instance set or a [`KiteService`] over one client.
//!   [`GovernedClient`] composes them with safe defaults ([`ClientConfig`]).
//! * Server side, for [`kite::Kite::layer`]: [`ServerTraceLayer`],
//!   [`ServerMetricsLayer`], [`DegradeLayer`] (run-time [`Switches`]), [`LimitLayer`]
//!   (rate limits and load shedding per method and caller), [`ServerDeadlineLayer`]
//!   (caller budgets, request cancellation). [`ServerGovernance::install`] installs them
//!   all and serves `/metrics`.
//! * Context: the remaining deadline and the W3C `traceparent` travel in optional keys of
//!   the request's options object ([`context`]).
//! * Tracing ([`mod@trace`]): `kite.client` / `kite.server` spans. With the cargo feature
//!   `otel`, they become OpenTelemetry spans, and `otlp::OtlpTracing` exports them over
//!   OTLP/HTTP (configured by `OtlpConfig` or the standard `OTEL_*` variables; service name
//!   defaults to the kite's name).
//!
//! See the crate README for the defaults and the metric names.
//!
//! # Quick start
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kite_governance::{ClientConfig, Fallback, GovernedClient, Metrics, ServerConfig, ServerGovernance};
//!
//! // A server with every server layer and /metrics.
//! let mut math = kite::Kite::new("math", "1.0.0")?;
//! math.config.ip = "127.0.0.1".into(); // port 0: ephemeral
//! math.config.disable_authentication = true;
//! let gov = ServerGovernance::install(&math, ServerConfig::default());
//! math.handle_func("square", |r: kite::Request| async move {
//!     let a: f64 = r.args().one()?;
//!     Ok(a * a)
//! });
//! gov.switches.mark_critical("square");
//! math.listen().await?;
//! let url = math.url().unwrap_or_default();
//! let handle = math.shutdown_handle();
//! tokio::spawn(async move { math.serve().await });
//!
//! // A governed client: deadline, retries, breaker, fallback, metrics, tracing.
//! let me = kite::Kite::new("caller", "1.0.0")?;
//! let client = me.new_client(&url);
//! client.dial().await?;
//! let metrics = Metrics::new();
//! let config = ClientConfig::default()
//!     .metrics(&metrics)
//!     .idempotent("square")
//!     .fallback("square", Fallback::value(serde_json::json!(0)));
//! let square = GovernedClient::single(&me, client, &config);
//! assert_eq!(square.call("square", &(4,)).await?, serde_json::json!(16));
//! assert!(metrics.encode().contains("kite_client_calls_total"));
//! handle.shutdown();
//! # Ok(()) }
//! ```

pub mod balance;
pub mod breaker;
pub mod call;
pub mod client;
pub mod context;
pub mod deadline;
pub mod discovery;
pub mod error;
pub mod fallback;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otlp;
pub mod retry;
pub mod server;
pub mod trace;
pub mod tuple;

pub use balance::{changes_channel, Balancer, BalancerConfig, Change, Instance, Strategy};
pub use breaker::{Breaker, BreakerConfig, BreakerLayer, BreakerState, ErrorRate};
pub use call::{Call, CallService, KiteService};
pub use client::{ClientConfig, GovernedClient};
pub use context::{Context, TraceContext};
pub use deadline::{DeadlineLayer, ServerDeadlineLayer};
pub use discovery::dial_kites;
pub use fallback::{Fallback, FallbackLayer};
pub use metrics::{ClientMetricsLayer, Metrics, ServerMetricsLayer};
#[cfg(feature = "otel")]
pub use otlp::{OtlpConfig, OtlpError, OtlpTracing};
pub use retry::{RetryBudget, RetryConfig, RetryLayer};
pub use server::{
    CallerKey, Callers, DegradeLayer, LimitConfig, LimitLayer, Limiter, Rate, ServerConfig,
    ServerGovernance, Switches,
};
pub use trace::{ClientTraceLayer, ServerTraceLayer};
pub use tuple::{cluster, cluster_of, FiveTuple, Route};
