//! Circuit breaking: per five-tuple ([`BreakerLayer`]) and per instance (inside the
//! balancer). A breaker opens on too many consecutive failures or a too high error rate
//! over a window, fails calls fast with `circuitOpenError` while open, then lets a few
//! probe calls through (half-open): their success closes it, a failure opens it again.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use kite::KiteError;
use serde_json::Value;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::call::{Call, CallFuture};
use crate::error;
use crate::metrics::{CircuitGauge, Metrics};
use crate::tuple::FiveTuple;

/// Error-rate policy: open when, over the last `window`, at least `min_calls` calls were
/// made and at least `threshold` (0..=1) of them failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorRate {
    /// Failure share that opens the breaker (default 0.5).
    pub threshold: f64,
    /// Fewest calls in the window before the rate counts (default 20).
    pub min_calls: u32,
    /// The window (default 10 s), kept as 10 buckets.
    pub window: Duration,
}

impl Default for ErrorRate {
    fn default() -> Self {
        ErrorRate {
            threshold: 0.5,
            min_calls: 20,
            window: Duration::from_secs(10),
        }
    }
}

/// Breaker settings.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Open after this many failures in a row (default 5; `None`: off).
    pub consecutive_failures: Option<u32>,
    /// Open on a high error rate (default [`ErrorRate::default`]; `None`: off).
    pub error_rate: Option<ErrorRate>,
    /// How long the breaker stays open before probing (default 5 s).
    pub open_for: Duration,
    /// Probe calls let through at once while half-open; that many successes in a row
    /// close the breaker (default 1).
    pub half_open_probes: u32,
    /// Error types that count as failures (default: `timeout`, `disconnect`, `sendError`,
    /// `invalidResponse`, `genericError`). Others (`argumentError`, `methodNotFound`,
    /// `authenticationError`, application types) are the caller's problem and count as
    /// successes.
    pub failure_types: HashSet<String>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: Some(5),
            error_rate: Some(ErrorRate::default()),
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
            failure_types: [
                KiteError::TIMEOUT,
                KiteError::DISCONNECT,
                KiteError::SEND_ERROR,
                KiteError::INVALID_RESPONSE,
                KiteError::GENERIC_ERROR,
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        }
    }
}

impl BreakerConfig {
    /// Whether `e` counts as a failure.
    pub fn is_failure(&self, e: &KiteError) -> bool {
        self.failure_types.contains(&e.kind)
    }
}

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls fail fast.
    Open,
    /// Probing.
    HalfOpen,
}

const BUCKETS: usize = 10;

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probes: u32, successes: u32 },
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive: u32,
    buckets: [(u32, u32); BUCKETS],
    bucket_at: u64,
}

/// Reports state changes (to metrics and logs).
type Observer = Arc<dyn Fn(BreakerState) + Send + Sync>;

/// One circuit breaker. Cheap to share behind an `Arc`.
pub struct Breaker {
    config: Arc<BreakerConfig>,
    inner: Mutex<Inner>,
    epoch: Instant,
    observer: Option<Observer>,
    name: String,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish()
    }
}

/// Permission to make one call through a breaker; report its outcome with
/// [`Permit::record`]. Dropped without a record it counts as a failure (the call was
/// abandoned, e.g. by a deadline).
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    done: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("probe", &self.probe)
            .finish()
    }
}

impl Permit {
    /// Records the call's outcome.
    pub fn record(mut self, outcome: Result<(), &KiteError>) {
        self.done = true;
        let failed = match outcome {
            Ok(()) => false,
            Err(e) => self.breaker.config.is_failure(e),
        };
        self.breaker.record(failed, self.probe);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(true, self.probe);
        }
    }
}

impl Breaker {
    /// A closed breaker; `observer` hears every state change.
    pub fn new(
        name: impl Into<String>,
        config: Arc<BreakerConfig>,
        observer: Option<Arc<dyn Fn(BreakerState) + Send + Sync>>,
    ) -> Arc<Breaker> {
        Arc::new(Breaker {
            config,
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                buckets: [(0, 0); BUCKETS],
                bucket_at: 0,
            }),
            epoch: Instant::now(),
            observer,
            name: name.into(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The current state (an open breaker whose time is up reads as half-open).
    pub fn state(&self) -> BreakerState {
        match self.lock().state {
            State::Closed => BreakerState::Closed,
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call would be let through now (without taking a permit).
    pub fn would_allow(&self) -> bool {
        match self.lock().state {
            State::Closed => true,
            State::Open { until } => Instant::now() >= until,
            State::HalfOpen { probes, .. } => probes < self.config.half_open_probes.max(1),
        }
    }

    /// A permit to call, or `circuitOpenError`.
    pub fn acquire(self: &Arc<Self>) -> Result<Permit, KiteError> {
        let mut changed = None;
        let probe = {
            let mut guard = self.lock();
            let g = &mut *guard;
            match g.state {
                State::Closed => false,
                State::Open { until } => {
                    if Instant::now() < until {
                        return Err(error::circuit_open(&self.name));
                    }
                    g.state = State::HalfOpen {
                        probes: 1,
                        successes: 0,
                    };
                    changed = Some(BreakerState::HalfOpen);
                    true
                }
                State::HalfOpen { ref mut probes, .. } => {
                    if *probes >= self.config.half_open_probes.max(1) {
                        return Err(error::circuit_open(&self.name));
                    }
                    *probes += 1;
                    true
                }
            }
        };
        if let Some(s) = changed {
            self.notify(s);
        }
        Ok(Permit {
            breaker: self.clone(),
            probe,
            done: false,
        })
    }

    fn notify(&self, s: BreakerState) {
        tracing::info!(breaker = %self.name, state = ?s, "circuit breaker state change");
        if let Some(o) = &self.observer {
            o(s);
        }
    }

    fn rotate(&self, g: &mut Inner, now: Instant) -> usize {
        let window = self
            .config
            .error_rate
            .map_or(Duration::from_secs(10), |r| r.window);
        let width = (window.as_nanos() / BUCKETS as u128).max(1);
        let idx = (now.saturating_duration_since(self.epoch).as_nanos() / width) as u64;
        let stale = idx.saturating_sub(g.bucket_at);
        for i in 0..stale.min(BUCKETS as u64) {
            let slot = ((g.bucket_at + 1 + i) % BUCKETS as u64) as usize;
            g.buckets[slot] = (0, 0);
        }
        g.bucket_at = idx;
        (idx % BUCKETS as u64) as usize
    }

    fn record(&self, failed: bool, probe: bool) {
        let now = Instant::now();
        let mut changed = None;
        {
            let mut guard = self.lock();
            let g = &mut *guard;
            let slot = self.rotate(g, now);
            g.buckets[slot].0 += 1;
            if failed {
                g.buckets[slot].1 += 1;
                g.consecutive += 1;
            } else {
                g.consecutive = 0;
            }
            let open_until = now + self.config.open_for;
            match g.state {
                State::HalfOpen {
                    ref mut probes,
                    ref mut successes,
                } if probe => {
                    *probes = probes.saturating_sub(1);
                    if failed {
                        g.state = State::Open { until: open_until };
                        changed = Some(BreakerState::Open);
                    } else {
                        *successes += 1;
                        if *successes >= self.config.half_open_probes.max(1) {
                            g.state = State::Closed;
                            g.consecutive = 0;
                            g.buckets = [(0, 0); BUCKETS];
                            changed = Some(BreakerState::Closed);
                        }
                    }
                }
                State::Closed if failed => {
                    let by_count = self
                        .config
                        .consecutive_failures
                        .is_some_and(|n| g.consecutive >= n.max(1));
                    let by_rate = self.config.error_rate.is_some_and(|r| {
                        let (calls, fails) = g
                            .buckets
                            .iter()
                            .fold((0u32, 0u32), |(c, f), b| (c + b.0, f + b.1));
                        calls >= r.min_calls.max(1)
                            && f64::from(fails) >= r.threshold * f64::from(calls)
                    });
                    if by_count || by_rate {
                        g.state = State::Open { until: open_until };
                        changed = Some(BreakerState::Open);
                    }
                }
                _ => {}
            }
        }
        if let Some(s) = changed {
            self.notify(s);
        }
    }
}

/// Observer reporting to metrics.
pub(crate) fn metrics_observer(
    metrics: &Metrics,
    tuple: FiveTuple,
    instance: Arc<str>,
) -> Arc<dyn Fn(BreakerState) + Send + Sync> {
    let m = metrics.clone();
    m.circuit_created(&tuple, &instance);
    Arc::new(move |s| {
        let g = match s {
            BreakerState::Closed => CircuitGauge::Closed,
            BreakerState::Open => CircuitGauge::Open,
            BreakerState::HalfOpen => CircuitGauge::HalfOpen,
        };
        m.circuit(&tuple, &instance, g)
    })
}

/// Most five-tuples a [`BreakerLayer`] keeps a breaker for; calls of further tuples pass
/// unguarded.
pub const MAX_BREAKERS: usize = 10_000;

/// Client layer: one breaker per five-tuple.
#[derive(Clone)]
pub struct BreakerLayer {
    config: Arc<BreakerConfig>,
    breakers: Arc<Mutex<HashMap<FiveTuple, Arc<Breaker>>>>,
    metrics: Option<Metrics>,
}

impl fmt::Debug for BreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl BreakerLayer {
    /// Breakers with `config`.
    pub fn new(config: BreakerConfig) -> Self {
        BreakerLayer {
            config: Arc::new(config),
            breakers: Arc::default(),
            metrics: None,
        }
    }

    /// Reports states as `kite_circuit_state` / `kite_circuit_transitions_total`.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// The breaker of `tuple` (created closed on first use).
    pub fn breaker(&self, tuple: &FiveTuple) -> Option<Arc<Breaker>> {
        let mut map = match self.breakers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(b) = map.get(tuple) {
            return Some(b.clone());
        }
        if map.len() >= MAX_BREAKERS {
            return None;
        }
        let observer = self
            .metrics
            .as_ref()
            .map(|m| metrics_observer(m, tuple.clone(), Arc::from("")));
        let b = Breaker::new(tuple.to_string(), self.config.clone(), observer);
        map.insert(tuple.clone(), b.clone());
        Some(b)
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            layer: self.clone(),
        }
    }
}

/// Service of [`BreakerLayer`].
#[derive(Clone, Debug)]
pub struct BreakerService<S> {
    inner: S,
    layer: BreakerLayer,
}

impl<S> Service<Call> for BreakerService<S>
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
        let Some(b) = self.layer.breaker(&call.tuple) else {
            return Box::pin(self.inner.call(call));
        };
        let permit = match b.acquire() {
            Ok(p) => p,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let fut = self.inner.call(call);
        Box::pin(async move {
            let r = fut.await;
            permit.record(r.as_ref().map(|_| ()));
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_probes_and_closes() {
        let cfg = BreakerConfig {
            consecutive_failures: Some(3),
            error_rate: None,
            open_for: Duration::from_millis(100),
            ..Default::default()
        };
        let b = Breaker::new("t", Arc::new(cfg), None);
        let fail = KiteError::generic("x");
        for _ in 0..3 {
            b.acquire().unwrap().record(Err(&fail));
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.acquire().unwrap_err().kind, error::CIRCUIT_OPEN);
        tokio::time::advance(Duration::from_millis(101)).await;
        let probe = b.acquire().unwrap();
        assert!(b.acquire().is_err(), "only one probe at a time");
        probe.record(Err(&fail));
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(101)).await;
        b.acquire().unwrap().record(Ok(()));
        assert_eq!(b.state(), BreakerState::Closed);
        // Application errors do not count.
        for _ in 0..10 {
            b.acquire()
                .unwrap()
                .record(Err(&KiteError::argument("bad")));
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn error_rate_window() {
        let cfg = BreakerConfig {
            consecutive_failures: None,
            error_rate: Some(ErrorRate {
                threshold: 0.5,
                min_calls: 10,
                window: Duration::from_secs(1),
            }),
            ..Default::default()
        };
        let b = Breaker::new("t", Arc::new(cfg), None);
        let fail = KiteError::timeout("m", Duration::ZERO);
        for i in 0..9 {
            let p = b.acquire().unwrap();
            if i % 2 == 0 {
                p.record(Err(&fail))
            } else {
                p.record(Ok(()))
            }
        }
        assert_eq!(b.state(), BreakerState::Closed, "below min_calls");
        // The window slides: old calls expire.
        tokio::time::advance(Duration::from_secs(2)).await;
        b.acquire().unwrap().record(Err(&fail));
        assert_eq!(b.state(), BreakerState::Closed);
        for _ in 0..9 {
            b.acquire().unwrap().record(Err(&fail));
        }
        assert_eq!(b.state(), BreakerState::Open);
        // An abandoned call counts as a failure.
        let b2 = Breaker::new(
            "t2",
            Arc::new(BreakerConfig {
                consecutive_failures: Some(1),
                ..Default::default()
            }),
            None,
        );
        drop(b2.acquire().unwrap());
        assert_eq!(b2.state(), BreakerState::Open);
    }
}
