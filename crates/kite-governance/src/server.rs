//! Server layers: rate limiting and load shedding per method and per caller
//! ([`LimitLayer`]), degradation switches ([`DegradeLayer`]), and [`ServerGovernance`],
//! which installs every server layer on a kite with safe defaults.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use kite::{Kite, KiteError, Request};
use serde_json::Value;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::deadline::ServerDeadlineLayer;
use crate::error;
use crate::metrics::{HandlerFuture, Metrics, ServerMetricsLayer};
use crate::trace::ServerTraceLayer;
use crate::tuple::{CallerInterner, FiveTuple, Route};

/// Default bound of distinct callers tracked (metrics labels, per-caller limits).
pub const DEFAULT_MAX_CALLERS: usize = 1000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match l.read() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    match l.write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The server side's five-tuples: the local kite as `to`, callers interned with a bound.
/// Cheap to clone.
#[derive(Clone)]
pub struct Callers(Arc<(Route, CallerInterner)>);

impl fmt::Debug for Callers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Callers").field(&self.0 .0).finish()
    }
}

impl Callers {
    /// For requests served by `kite`, tracking at most [`DEFAULT_MAX_CALLERS`] callers.
    pub fn new(kite: &Kite) -> Self {
        Callers::with_limit(kite, DEFAULT_MAX_CALLERS)
    }

    /// For requests served by `kite`, tracking at most `max` distinct callers (later ones
    /// are labelled `_other`).
    pub fn with_limit(kite: &Kite, max: usize) -> Self {
        let me = kite.identity();
        Callers(Arc::new((
            Route::new(&me, &me.name, &crate::tuple::cluster(&me)),
            CallerInterner::new(max),
        )))
    }

    /// The five-tuple of a request.
    pub fn tuple(&self, req: &Request) -> FiveTuple {
        self.0 .1.tuple(req.caller(), &self.0 .0, req.method())
    }
}

/// A token-bucket rate: `per_second` tokens refill per second, at most `burst` stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Refill per second.
    pub per_second: f64,
    /// Bucket capacity (at least 1).
    pub burst: u32,
}

impl Rate {
    /// `per_second` with bursts of `burst`.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Rate { per_second, burst }
    }
}

#[derive(Debug)]
struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: Rate, now: Instant) -> Self {
        Bucket {
            rate,
            tokens: f64::from(rate.burst.max(1)),
            at: now,
        }
    }
    fn refill(&mut self, now: Instant) {
        let cap = f64::from(self.rate.burst.max(1));
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate.per_second.max(0.0)).min(cap);
        self.at = now;
    }
    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= f64::from(self.rate.burst.max(1))
    }
}

/// Which part of a caller's identity per-caller limits key on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CallerKey {
    /// The caller kite's name and cluster (the five-tuple's From/FromCluster; default).
    #[default]
    Name,
    /// The request's username (authenticated, or claimed when the method has no
    /// authentication).
    Username,
    /// The caller kite's instance id.
    KiteId,
}

/// Limits of [`LimitLayer`]; everything off by default. Change them at run time through
/// [`Limiter::update`].
#[derive(Clone, Debug, Default)]
pub struct LimitConfig {
    /// Rate of each method, shared by all callers.
    pub method_rates: HashMap<String, Rate>,
    /// Rate of each caller, over all its methods.
    pub caller_rate: Option<Rate>,
    /// Rate of each caller for one method.
    pub caller_method_rates: HashMap<String, Rate>,
    /// Most requests of each method handled at once (load shedding); more are refused
    /// with `requestLimitError` (code `concurrency`) instead of queuing.
    pub method_concurrency: HashMap<String, usize>,
    /// Bound for methods not in `method_concurrency` (`None`: unbounded).
    pub default_concurrency: Option<usize>,
    /// What identifies a caller.
    pub caller_key: CallerKey,
    /// Most per-caller buckets kept (default [`DEFAULT_MAX_CALLERS`] when 0): idle full
    /// buckets are evicted first; callers beyond it share one overflow bucket.
    pub max_callers: usize,
}

struct LimiterState {
    config: LimitConfig,
    methods: HashMap<String, Bucket>,
    callers: HashMap<(String, Option<String>), Bucket>,
    overflow: HashMap<Option<String>, Bucket>,
}

/// The state of a [`LimitLayer`]: buckets and in-flight counts. Cheap to clone; all
/// clones share it.
#[derive(Clone)]
pub struct Limiter {
    state: Arc<Mutex<LimiterState>>,
    in_flight: Arc<RwLock<HashMap<String, Arc<AtomicUsize>>>>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("config", &lock(&self.state).config)
            .finish()
    }
}

impl Limiter {
    /// A limiter with `config`.
    pub fn new(config: LimitConfig) -> Self {
        Limiter {
            state: Arc::new(Mutex::new(LimiterState {
                config,
                methods: HashMap::new(),
                callers: HashMap::new(),
                overflow: HashMap::new(),
            })),
            in_flight: Arc::default(),
        }
    }

    /// Changes the limits at run time (buckets restart full).
    pub fn update(&self, f: impl FnOnce(&mut LimitConfig)) {
        let mut st = lock(&self.state);
        f(&mut st.config);
        st.methods.clear();
        st.callers.clear();
        st.overflow.clear();
    }

    /// The current limits.
    pub fn config(&self) -> LimitConfig {
        lock(&self.state).config.clone()
    }

    fn caller_id(key: CallerKey, req: &Request) -> String {
        let c = req.caller();
        match key {
            CallerKey::Name => format!("{}@{}", c.name, crate::tuple::cluster(c)),
            CallerKey::Username => req.username().to_string(),
            CallerKey::KiteId => c.id.clone(),
        }
    }

    /// Takes a token for `req`; `Err(code)` names the exhausted limit.
    fn admit(&self, req: &Request) -> Result<(), &'static str> {
        let now = Instant::now();
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let method = req.method();
        if let Some(rate) = st.config.method_rates.get(method).copied() {
            let b = st
                .methods
                .entry(method.to_string())
                .or_insert_with(|| Bucket::new(rate, now));
            if !b.take(now) {
                return Err("rate");
            }
        }
        let per_method = st.config.caller_method_rates.get(method).copied();
        let checks = [
            (st.config.caller_rate, None),
            (per_method, Some(method.to_string())),
        ];
        if checks.iter().all(|(r, _)| r.is_none()) {
            return Ok(());
        }
        let who = Limiter::caller_id(st.config.caller_key, req);
        let max = if st.config.max_callers == 0 {
            DEFAULT_MAX_CALLERS
        } else {
            st.config.max_callers
        };
        for (rate, m) in checks {
            let Some(rate) = rate else { continue };
            let key = (who.clone(), m);
            if !st.callers.contains_key(&key) && st.callers.len() >= max {
                st.callers.retain(|_, b| !b.is_full(now));
            }
            let bucket = if st.callers.contains_key(&key) || st.callers.len() < max {
                st.callers
                    .entry(key)
                    .or_insert_with(|| Bucket::new(rate, now))
            } else {
                st.overflow
                    .entry(key.1)
                    .or_insert_with(|| Bucket::new(rate, now))
            };
            if !bucket.take(now) {
                return Err("callerRate");
            }
        }
        Ok(())
    }

    fn counter(&self, method: &str) -> Arc<AtomicUsize> {
        if let Some(c) = read(&self.in_flight).get(method) {
            return c.clone();
        }
        write(&self.in_flight)
            .entry(method.to_string())
            .or_default()
            .clone()
    }

    fn concurrency_of(&self, method: &str) -> Option<usize> {
        let st = lock(&self.state);
        st.config
            .method_concurrency
            .get(method)
            .copied()
            .or(st.config.default_concurrency)
    }
}

/// Server layer: rate limits (per method, per caller, per caller and method) answered
/// with `requestLimitError` (code `rate` or `callerRate`), and concurrency bounds per
/// method answered with `requestLimitError` (code `concurrency`) — load is shed instead of
/// queued. Refusals are counted as `kite_server_shed_total{reason}` when metrics are set.
#[derive(Clone, Debug)]
pub struct LimitLayer {
    limiter: Limiter,
    metrics: Option<(Metrics, Callers)>,
}

impl LimitLayer {
    /// A layer enforcing `limiter`'s limits.
    pub fn new(limiter: &Limiter) -> Self {
        LimitLayer {
            limiter: limiter.clone(),
            metrics: None,
        }
    }

    /// Counts refusals in `metrics`.
    pub fn with_metrics(mut self, metrics: &Metrics, callers: &Callers) -> Self {
        self.metrics = Some((metrics.clone(), callers.clone()));
        self
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            layer: self.clone(),
        }
    }
}

/// Service of [`LimitLayer`].
#[derive(Clone, Debug)]
pub struct Limit<S> {
    inner: S,
    layer: LimitLayer,
}

struct InFlight(Arc<AtomicUsize>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S> Service<Request> for Limit<S>
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
        let refuse = |code: &'static str, layer: &LimitLayer, req: &Request| -> HandlerFuture {
            if let Some((m, c)) = &layer.metrics {
                m.shed(&c.tuple(req), code);
            }
            Box::pin(std::future::ready(Err(error::request_limit(code))))
        };
        if let Err(code) = self.layer.limiter.admit(&req) {
            return refuse(code, &self.layer, &req);
        }
        let guard = match self.layer.limiter.concurrency_of(req.method()) {
            None => None,
            Some(max) => {
                let c = self.layer.limiter.counter(req.method());
                if c.fetch_add(1, Ordering::AcqRel) >= max {
                    c.fetch_sub(1, Ordering::AcqRel);
                    return refuse("concurrency", &self.layer, &req);
                }
                Some(InFlight(c))
            }
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            r
        })
    }
}

#[derive(Debug, Default)]
struct SwitchState {
    shed_non_critical: bool,
    critical: HashSet<String>,
    disabled: HashSet<String>,
    degraded: HashMap<String, Value>,
}

/// Degradation switches, changeable at run time (cheap to clone; all clones share the
/// switches). A method is refused with `degradedError` — or answered with its degraded
/// value ([`Switches::degrade_to`]) — when it is disabled, or when non-critical methods
/// are shed and it is not marked critical. The default methods (`kite.*`) are always
/// critical.
#[derive(Clone, Debug, Default)]
pub struct Switches(Arc<RwLock<SwitchState>>);

impl Switches {
    /// All methods on, nothing critical.
    pub fn new() -> Self {
        Switches::default()
    }

    /// Marks `method` critical: it keeps running while non-critical methods are shed.
    pub fn mark_critical(&self, method: &str) -> &Self {
        write(&self.0).critical.insert(method.to_string());
        self
    }

    /// Sheds (`true`) or restores (`false`) every non-critical method.
    pub fn shed_non_critical(&self, on: bool) -> &Self {
        write(&self.0).shed_non_critical = on;
        self
    }

    /// Switches `method` off (even if critical).
    pub fn disable(&self, method: &str) -> &Self {
        write(&self.0).disabled.insert(method.to_string());
        self
    }

    /// Switches `method` back on.
    pub fn enable(&self, method: &str) -> &Self {
        write(&self.0).disabled.remove(method);
        self
    }

    /// While `method` is switched off, answer `value` instead of `degradedError`.
    pub fn degrade_to(&self, method: &str, value: Value) -> &Self {
        write(&self.0).degraded.insert(method.to_string(), value);
        self
    }

    /// Whether `method` runs now; `Err(Some(v))`: answer `v`; `Err(None)`: refuse.
    fn check(&self, method: &str) -> Result<(), Option<Value>> {
        let st = read(&self.0);
        let off = st.disabled.contains(method)
            || (st.shed_non_critical
                && !method.starts_with("kite.")
                && !st.critical.contains(method));
        if off {
            Err(st.degraded.get(method).cloned())
        } else {
            Ok(())
        }
    }

    /// Whether `method` is switched on now.
    pub fn is_on(&self, method: &str) -> bool {
        self.check(method).is_ok()
    }
}

/// Server layer applying [`Switches`].
#[derive(Clone, Debug)]
pub struct DegradeLayer {
    switches: Switches,
    metrics: Option<(Metrics, Callers)>,
}

impl DegradeLayer {
    /// A layer applying `switches`.
    pub fn new(switches: &Switches) -> Self {
        DegradeLayer {
            switches: switches.clone(),
            metrics: None,
        }
    }

    /// Counts refusals (`kite_server_shed_total{reason="degraded"}`).
    pub fn with_metrics(mut self, metrics: &Metrics, callers: &Callers) -> Self {
        self.metrics = Some((metrics.clone(), callers.clone()));
        self
    }
}

impl<S> Layer<S> for DegradeLayer {
    type Service = Degrade<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Degrade {
            inner,
            layer: self.clone(),
        }
    }
}

/// Service of [`DegradeLayer`].
#[derive(Clone, Debug)]
pub struct Degrade<S> {
    inner: S,
    layer: DegradeLayer,
}

impl<S> Service<Request> for Degrade<S>
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
        match self.layer.switches.check(req.method()) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(answer) => {
                if let Some((m, c)) = &self.layer.metrics {
                    m.shed(&c.tuple(&req), "degraded");
                }
                let r = answer.ok_or_else(|| error::degraded(req.method()));
                Box::pin(std::future::ready(r))
            }
        }
    }
}

/// Settings of [`ServerGovernance::install`].
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Metrics registry (served at `/metrics`); `None`: no metrics layer, no route.
    pub metrics: Option<Metrics>,
    /// Server spans (`kite.server`) and `traceparent` propagation (default on).
    pub tracing: bool,
    /// Limits (default: none).
    pub limits: LimitConfig,
    /// Honour callers' deadlines (default on) — the layer.
    pub deadline: Option<ServerDeadlineLayer>,
    /// Distinct callers tracked (default [`DEFAULT_MAX_CALLERS`]).
    pub max_callers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            metrics: Some(Metrics::new()),
            tracing: true,
            limits: LimitConfig::default(),
            deadline: Some(ServerDeadlineLayer::new()),
            max_callers: DEFAULT_MAX_CALLERS,
        }
    }
}

/// Handles to the server governance of a kite: change limits and switches at run time,
/// read the metrics.
#[derive(Clone, Debug)]
pub struct ServerGovernance {
    /// The metrics registry, if any.
    pub metrics: Option<Metrics>,
    /// Rate limits and concurrency bounds.
    pub limiter: Limiter,
    /// Degradation switches.
    pub switches: Switches,
    /// The five-tuple source.
    pub callers: Callers,
}

impl ServerGovernance {
    /// Installs the server layers on `kite`, outermost first: tracing, metrics,
    /// degradation, limits, deadline; serves `/metrics` and counts connections.
    ///
    /// Install before the kite starts listening (the layers wrap every method, present
    /// and future; the route is added to the HTTP server when it starts).
    pub fn install(kite: &Kite, config: ServerConfig) -> ServerGovernance {
        let callers = Callers::with_limit(kite, config.max_callers);
        let limiter = Limiter::new(config.limits);
        let switches = Switches::new();
        if config.tracing {
            kite.layer(ServerTraceLayer::new(&callers));
        }
        let mut degrade = DegradeLayer::new(&switches);
        let mut limit = LimitLayer::new(&limiter);
        let mut deadline = config.deadline;
        if let Some(m) = &config.metrics {
            m.install(kite);
            kite.layer(ServerMetricsLayer::new(m, &callers));
            degrade = degrade.with_metrics(m, &callers);
            limit = limit.with_metrics(m, &callers);
            deadline = deadline.map(|d| d.with_metrics(m, &callers));
        }
        kite.layer(degrade);
        kite.layer(limit);
        if let Some(d) = deadline {
            kite.layer(d);
        }
        ServerGovernance {
            metrics: config.metrics,
            limiter,
            switches,
            callers,
        }
    }
}

/// A rate of `n` calls per `per` with bursts of `n` (helper for configs).
pub fn rate(n: u32, per: Duration) -> Rate {
    Rate::new(f64::from(n) / per.as_secs_f64().max(1e-9), n)
}
