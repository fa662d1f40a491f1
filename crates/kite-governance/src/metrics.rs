//! Method-level metrics in the Prometheus/OpenMetrics text format, served at `/metrics`
//! on the kite's own HTTP server ([`Metrics::install`]).
//!
//! Every call metric is labelled by the five-tuple (`from`, `from_cluster`, `to`,
//! `to_cluster`, `method`); see the crate README for the full list of names.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use kite::{KiteError, Request};
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::call::{Call, CallFuture};
use crate::server::Callers;
use crate::tuple::{label, FiveTuple, OTHER};

/// Latency histogram buckets (seconds).
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Most distinct error types / reasons tracked as label values; others are `_other`.
pub const MAX_ERROR_TYPES: usize = 64;

/// Labels: the five-tuple plus up to two more pairs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Labels {
    tuple: FiveTuple,
    a: Option<(&'static str, Arc<str>)>,
    b: Option<(&'static str, Arc<str>)>,
}

impl Labels {
    fn new(tuple: &FiveTuple) -> Self {
        Labels {
            tuple: tuple.clone(),
            a: None,
            b: None,
        }
    }
    fn with(mut self, k: &'static str, v: Arc<str>) -> Self {
        if self.a.is_none() {
            self.a = Some((k, v));
        } else {
            self.b = Some((k, v));
        }
        self
    }
}

fn encode_pair(
    encoder: &mut LabelSetEncoder<'_>,
    k: &'static str,
    v: &str,
) -> Result<(), fmt::Error> {
    use prometheus_client::encoding::EncodeLabel;
    (k, v).encode(encoder.encode_label())
}

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        for (k, v) in self.tuple.labels() {
            encode_pair(encoder, k, v)?;
        }
        for (k, v) in self.a.iter().chain(self.b.iter()) {
            encode_pair(encoder, k, v)?;
        }
        Ok(())
    }
}

/// Connection labels: transport and role.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnLabels {
    transport: Arc<str>,
    role: &'static str,
}

impl EncodeLabelSet for ConnLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        encode_pair(encoder, "transport", &self.transport)?;
        encode_pair(encoder, "role", self.role)
    }
}

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn new_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

struct Side {
    calls: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    duration: HistogramFamily,
    in_flight: Family<Labels, Gauge>,
}

impl Side {
    fn new(registry: &mut Registry, side: &str) -> Side {
        let s = Side {
            calls: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(new_histogram as fn() -> Histogram),
            in_flight: Family::default(),
        };
        registry.register(
            format!("kite_{side}_calls"),
            format!("Calls ({side} side), by five-tuple"),
            s.calls.clone(),
        );
        registry.register(
            format!("kite_{side}_errors"),
            format!("Failed calls ({side} side), by five-tuple and error type"),
            s.errors.clone(),
        );
        registry.register(
            format!("kite_{side}_call_duration_seconds"),
            format!("Call latency ({side} side), by five-tuple"),
            s.duration.clone(),
        );
        registry.register(
            format!("kite_{side}_in_flight"),
            format!("Calls in flight ({side} side), by five-tuple"),
            s.in_flight.clone(),
        );
        s
    }
}

struct Inner {
    registry: Mutex<Registry>,
    client: Side,
    server: Side,
    retries: Family<Labels, Counter>,
    retries_denied: Family<Labels, Counter>,
    hedges: Family<Labels, Counter>,
    fallbacks: Family<Labels, Counter>,
    shed: Family<Labels, Counter>,
    instance_calls: Family<Labels, Counter>,
    circuit_state: Family<Labels, Gauge>,
    circuit_transitions: Family<Labels, Counter>,
    connections: Family<ConnLabels, Gauge>,
    connections_opened: Family<ConnLabels, Counter>,
    kinds: Mutex<HashMap<String, Arc<str>>>,
    other: Arc<str>,
}

/// The metrics of a process: a Prometheus registry with the governance metrics. Cheap to
/// clone; all clones share the registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A breaker state as the value of `kite_circuit_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitGauge {
    /// Calls pass (0).
    Closed = 0,
    /// Calls fail fast with `circuitOpenError` (1).
    Open = 1,
    /// Probing (2).
    HalfOpen = 2,
}

impl CircuitGauge {
    fn name(self) -> &'static str {
        match self {
            CircuitGauge::Closed => "closed",
            CircuitGauge::Open => "open",
            CircuitGauge::HalfOpen => "half_open",
        }
    }
}

impl Metrics {
    /// A fresh registry with every governance metric registered.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let client = Side::new(&mut r, "client");
        let server = Side::new(&mut r, "server");
        let reg = |r: &mut Registry, name: &str, help: &str| {
            let f: Family<Labels, Counter> = Family::default();
            r.register(name, help, f.clone());
            f
        };
        let retries = reg(&mut r, "kite_client_retries", "Retries sent, by five-tuple");
        let retries_denied = reg(
            &mut r,
            "kite_client_retries_denied",
            "Retries wanted but refused by the retry budget, by five-tuple",
        );
        let hedges = reg(
            &mut r,
            "kite_client_hedges",
            "Hedged requests sent, by five-tuple",
        );
        let fallbacks = reg(
            &mut r,
            "kite_client_fallbacks",
            "Calls answered by a fallback, by five-tuple and reason (the error type replaced)",
        );
        let shed = reg(
            &mut r,
            "kite_server_shed",
            "Requests refused by a server layer, by five-tuple and reason (rate, callerRate, concurrency, degraded)",
        );
        let instance_calls = reg(
            &mut r,
            "kite_client_instance_calls",
            "Calls sent to each instance by a balancer, by five-tuple and instance id",
        );
        let circuit_state: Family<Labels, Gauge> = Family::default();
        r.register(
            "kite_circuit_state",
            "Circuit breaker state (0 closed, 1 open, 2 half-open), by five-tuple and instance (\"\" for the five-tuple breaker; method \"*\" for instance breakers)",
            circuit_state.clone(),
        );
        let circuit_transitions = reg(
            &mut r,
            "kite_circuit_transitions",
            "Circuit breaker transitions, by five-tuple, instance and new state",
        );
        let connections: Family<ConnLabels, Gauge> = Family::default();
        r.register(
            "kite_connections",
            "Open kite connections (sessions), by transport and role (accepted, dialed)",
            connections.clone(),
        );
        let connections_opened: Family<ConnLabels, Counter> = Family::default();
        r.register(
            "kite_connections_opened",
            "Kite connections (sessions) opened, by transport and role",
            connections_opened.clone(),
        );
        Metrics(Arc::new(Inner {
            registry: Mutex::new(r),
            client,
            server,
            retries,
            retries_denied,
            hedges,
            fallbacks,
            shed,
            instance_calls,
            circuit_state,
            circuit_transitions,
            connections,
            connections_opened,
            kinds: Mutex::new(HashMap::new()),
            other: Arc::from(OTHER),
        }))
    }

    /// Registers more metrics of your own in the same registry.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut lock(&self.0.registry))
    }

    /// The exposition text (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = lock(&self.0.registry);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }

    /// An axum router serving `GET /metrics`.
    pub fn router(&self) -> axum::Router {
        let m = self.clone();
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            http_content_type(),
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
    }

    /// Serves `/metrics` on `kite`'s HTTP server and counts its connections by transport
    /// (`kite_connections`, `kite_connections_opened_total`).
    pub fn install(&self, kite: &kite::Kite) {
        kite.add_routes(self.router());
        let m = self.clone();
        kite.on_connect(move |c| {
            let l = conn_labels(c);
            m.0.connections.get_or_create(&l).inc();
            m.0.connections_opened.get_or_create(&l).inc();
        });
        let m = self.clone();
        kite.on_disconnect(move |c| {
            m.0.connections.get_or_create(&conn_labels(c)).dec();
        });
    }

    fn kind(&self, kind: &str) -> Arc<str> {
        let mut kinds = lock(&self.0.kinds);
        if let Some(k) = kinds.get(kind) {
            return k.clone();
        }
        if kinds.len() >= MAX_ERROR_TYPES {
            return self.0.other.clone();
        }
        let v = label(kind);
        kinds.insert(kind.to_string(), v.clone());
        v
    }

    fn side(&self, server: bool) -> &Side {
        if server {
            &self.0.server
        } else {
            &self.0.client
        }
    }

    /// Starts measuring one call; finish it with [`CallTimer::finish`].
    pub fn start(&self, tuple: &FiveTuple, server: bool) -> CallTimer {
        let labels = Labels::new(tuple);
        let side = self.side(server);
        side.calls.get_or_create(&labels).inc();
        side.in_flight.get_or_create(&labels).inc();
        CallTimer {
            metrics: self.clone(),
            labels: Some(labels),
            server,
            start: Instant::now(),
        }
    }

    /// Counts a retry.
    pub fn retry(&self, tuple: &FiveTuple) {
        self.0.retries.get_or_create(&Labels::new(tuple)).inc();
    }

    /// Counts a retry refused by the budget.
    pub fn retry_denied(&self, tuple: &FiveTuple) {
        self.0
            .retries_denied
            .get_or_create(&Labels::new(tuple))
            .inc();
    }

    /// Counts a hedged request.
    pub fn hedge(&self, tuple: &FiveTuple) {
        self.0.hedges.get_or_create(&Labels::new(tuple)).inc();
    }

    /// Counts a call answered by its fallback instead of `reason` (an error type).
    pub fn fallback(&self, tuple: &FiveTuple, reason: &str) {
        let l = Labels::new(tuple).with("reason", self.kind(reason));
        self.0.fallbacks.get_or_create(&l).inc();
    }

    /// Counts a request refused by a server layer.
    pub fn shed(&self, tuple: &FiveTuple, reason: &str) {
        let l = Labels::new(tuple).with("reason", self.kind(reason));
        self.0.shed.get_or_create(&l).inc();
    }

    /// Counts a call sent to one instance.
    pub fn instance_call(&self, tuple: &FiveTuple, instance: &Arc<str>) {
        let l = Labels::new(tuple).with("instance", instance.clone());
        self.0.instance_calls.get_or_create(&l).inc();
    }

    /// Records a breaker's new state (a transition).
    pub fn circuit(&self, tuple: &FiveTuple, instance: &Arc<str>, state: CircuitGauge) {
        let l = Labels::new(tuple).with("instance", instance.clone());
        self.0.circuit_state.get_or_create(&l).set(state as i64);
        let l = l.with("state", Arc::from(state.name()));
        self.0.circuit_transitions.get_or_create(&l).inc();
    }

    /// Records a new breaker (closed), without counting a transition.
    pub fn circuit_created(&self, tuple: &FiveTuple, instance: &Arc<str>) {
        let l = Labels::new(tuple).with("instance", instance.clone());
        self.0
            .circuit_state
            .get_or_create(&l)
            .set(CircuitGauge::Closed as i64);
    }
}

fn http_content_type() -> axum::http::HeaderName {
    axum::http::header::CONTENT_TYPE
}

fn conn_labels(c: &kite::Connection) -> ConnLabels {
    ConnLabels {
        transport: label(&format!("{:?}", c.info().transport()).to_lowercase()),
        role: match c.role() {
            kite::Role::Accepted => "accepted",
            _ => "dialed",
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Measures one call (see [`Metrics::start`]). Dropped without `finish` (the call was
/// cancelled) it counts as a `cancelled` error.
pub struct CallTimer {
    metrics: Metrics,
    labels: Option<Labels>,
    server: bool,
    start: Instant,
}

impl fmt::Debug for CallTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallTimer")
    }
}

impl CallTimer {
    /// Records the outcome: latency, and the error type on failure.
    pub fn finish(mut self, outcome: Result<(), &KiteError>) {
        self.record(outcome.map_err(|e| e.kind.as_str()));
    }

    fn record(&mut self, outcome: Result<(), &str>) {
        let Some(labels) = self.labels.take() else {
            return;
        };
        let side = self.metrics.side(self.server);
        side.in_flight.get_or_create(&labels).dec();
        side.duration
            .get_or_create(&labels)
            .observe(self.start.elapsed().as_secs_f64());
        if let Err(kind) = outcome {
            let l = labels.with("type", self.metrics.kind(kind));
            side.errors.get_or_create(&l).inc();
        }
    }
}

impl Drop for CallTimer {
    fn drop(&mut self) {
        self.record(Err("cancelled"));
    }
}

/// Client layer: `kite_client_*` metrics per call.
#[derive(Clone, Debug)]
pub struct ClientMetricsLayer {
    metrics: Metrics,
}

impl ClientMetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        ClientMetricsLayer {
            metrics: metrics.clone(),
        }
    }
}

impl<S> Layer<S> for ClientMetricsLayer {
    type Service = ClientMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Service of [`ClientMetricsLayer`].
#[derive(Clone, Debug)]
pub struct ClientMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> Service<Call> for ClientMetrics<S>
where
    S: Service<Call, Response = Value, Error = KiteError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Value;
    type Error = KiteError;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), KiteError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let timer = self.metrics.start(&call.tuple, false);
        let fut = self.inner.call(call);
        Box::pin(async move {
            let r = fut.await;
            timer.finish(r.as_ref().map(|_| ()));
            r
        })
    }
}

/// Server layer (for [`kite::Kite::layer`]): `kite_server_*` metrics per request.
#[derive(Clone, Debug)]
pub struct ServerMetricsLayer {
    metrics: Metrics,
    callers: Callers,
}

impl ServerMetricsLayer {
    /// Records into `metrics`; five-tuples from `callers`.
    pub fn new(metrics: &Metrics, callers: &Callers) -> Self {
        ServerMetricsLayer {
            metrics: metrics.clone(),
            callers: callers.clone(),
        }
    }
}

impl<S> Layer<S> for ServerMetricsLayer {
    type Service = ServerMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServerMetrics {
            inner,
            metrics: self.metrics.clone(),
            callers: self.callers.clone(),
        }
    }
}

/// Service of [`ServerMetricsLayer`].
#[derive(Clone, Debug)]
pub struct ServerMetrics<S> {
    inner: S,
    metrics: Metrics,
    callers: Callers,
}

/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, KiteError>> + Send>>;

impl<S> Service<Request> for ServerMetrics<S>
where
    S: Service<Request, Response = Value, Error = KiteError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Value;
    type Error = KiteError;
    type Future = HandlerFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), KiteError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let tuple = self.callers.tuple(&req);
        let timer = self.metrics.start(&tuple, true);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            timer.finish(r.as_ref().map(|_| ()));
            r
        })
    }
}
