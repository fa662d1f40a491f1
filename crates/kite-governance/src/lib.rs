//! Service governance for kites, as tower layers you can compose, tune or switch off.
//!
//! Every call is identified by its five-tuple (From, FromCluster, To, ToCluster, Method;
//! see [`tuple`]); it keys circuit breakers, labels metrics and is recorded on spans.
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
//!
//! See the crate README for a quick start, the defaults and the metric names.

pub mod balance;
pub mod breaker;
pub mod call;
pub mod client;
pub mod context;
pub mod deadline;
pub mod error;
pub mod fallback;
pub mod metrics;
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
pub use fallback::{Fallback, FallbackLayer};
pub use metrics::{ClientMetricsLayer, Metrics, ServerMetricsLayer};
pub use retry::{RetryBudget, RetryConfig, RetryLayer};
pub use server::{
    CallerKey, Callers, DegradeLayer, LimitConfig, LimitLayer, Limiter, Rate, ServerConfig,
    ServerGovernance, Switches,
};
pub use trace::{ClientTraceLayer, ServerTraceLayer};
pub use tuple::{cluster, cluster_of, FiveTuple, Route};
