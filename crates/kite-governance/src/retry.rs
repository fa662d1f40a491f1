//! Retries where they are safe, with back-off, a retry budget, and optional hedging.
//!
//! A failed call is retried when
//! * nothing reached the peer: `sendError` (not connected, session closed), for every
//!   method; or
//! * the method is marked idempotent and the error type is in
//!   [`RetryConfig::idempotent_retry_on`] (default: `sendError`, `disconnect`, `timeout`,
//!   `requestLimitError`, `degradedError`). `circuitOpenError` and `noInstanceError` are
//!   not retried by default: a balancer already skips open instances, so these mean that
//!   none is usable now.
//!
//! and the budget allows it: every call deposits [`RetryBudget::ratio`] of a token, every
//! retry (or hedge) takes one; [`RetryBudget::min_per_second`] tokens are added per second
//! (and one second's worth is there at the start) so low-traffic callers can still retry;
//! at most [`RetryBudget::max_tokens`] are kept.
//! Retries also stop when the call's deadline leaves no time. Between attempts the layer
//! waits `backoff` (doubling per attempt, ± 50 % jitter, capped).
//!
//! Hedging (idempotent methods with a hedge delay): when no answer came after the delay,
//! a second request is sent (taking a budget token) and the first answer wins.
//!
//! Retries and hedges behind a [`Balancer`](crate::Balancer) prefer instances the call
//! has not tried yet.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::{select, Either};
use kite::KiteError;
use serde_json::Value;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::call::{Call, CallFuture};
use crate::error;
use crate::metrics::Metrics;

/// Retry budget parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// Tokens deposited per call: the long-run share of retries among calls (default 0.2).
    pub ratio: f64,
    /// Tokens added per second regardless of traffic (default 1.0).
    pub min_per_second: f64,
    /// Most tokens kept (default 10).
    pub max_tokens: f64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: 0.2,
            min_per_second: 1.0,
            max_tokens: 10.0,
        }
    }
}

#[derive(Debug)]
struct BudgetState {
    tokens: f64,
    at: Instant,
}

/// A shared retry budget (cheap to clone).
#[derive(Clone, Debug)]
pub struct Budget {
    params: RetryBudget,
    state: Arc<Mutex<BudgetState>>,
}

impl Budget {
    /// A budget with `params`, starting with one second's worth of
    /// [`RetryBudget::min_per_second`] tokens (at most `max_tokens`).
    pub fn new(params: RetryBudget) -> Self {
        Budget {
            params,
            state: Arc::new(Mutex::new(BudgetState {
                tokens: params.min_per_second.min(params.max_tokens).max(0.0),
                at: Instant::now(),
            })),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BudgetState, &RetryBudget) -> R) -> R {
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        let dt = now.saturating_duration_since(g.at).as_secs_f64();
        g.tokens = (g.tokens + dt * self.params.min_per_second.max(0.0))
            .min(self.params.max_tokens.max(0.0));
        g.at = now;
        f(&mut g, &self.params)
    }

    /// Records a call.
    pub fn deposit(&self) {
        self.with(|s, p| s.tokens = (s.tokens + p.ratio.max(0.0)).min(p.max_tokens.max(0.0)))
    }

    /// Takes a token for a retry, if there is one.
    pub fn withdraw(&self) -> bool {
        self.with(|s, _| {
            if s.tokens >= 1.0 {
                s.tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }

    /// Tokens available now.
    pub fn tokens(&self) -> f64 {
        self.with(|s, _| s.tokens)
    }
}

/// Retry settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    /// Most attempts per call, the first included (default 3).
    pub max_attempts: u32,
    /// First back-off (default 20 ms); doubles per attempt, ± 50 % jitter.
    pub backoff: Duration,
    /// Largest back-off (default 1 s).
    pub max_backoff: Duration,
    /// The budget.
    pub budget: RetryBudget,
    /// Methods safe to call more than once.
    pub idempotent: HashSet<String>,
    /// Error types retried for idempotent methods.
    pub idempotent_retry_on: HashSet<String>,
    /// Hedge delay per idempotent method.
    pub hedge: HashMap<String, Duration>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            budget: RetryBudget::default(),
            idempotent: HashSet::new(),
            idempotent_retry_on: [
                KiteError::SEND_ERROR,
                KiteError::DISCONNECT,
                KiteError::TIMEOUT,
                KiteError::REQUEST_LIMIT_ERROR,
                error::DEGRADED,
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            hedge: HashMap::new(),
        }
    }
}

impl RetryConfig {
    /// Marks `method` idempotent.
    pub fn idempotent(mut self, method: &str) -> Self {
        self.idempotent.insert(method.to_string());
        self
    }

    /// Hedges `method` (marked idempotent too) after `delay`.
    pub fn hedge(mut self, method: &str, delay: Duration) -> Self {
        self.idempotent.insert(method.to_string());
        self.hedge.insert(method.to_string(), delay);
        self
    }

    /// Whether a failure of `method` with `e` may be retried.
    pub fn is_retryable(&self, method: &str, e: &KiteError) -> bool {
        e.kind == KiteError::SEND_ERROR
            || (self.idempotent.contains(method) && self.idempotent_retry_on.contains(&e.kind))
    }

    fn backoff_for(&self, retry: u32) -> Duration {
        let base = self
            .backoff
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max_backoff);
        let jitter = 0.5 + rand::random::<f64>(); // 0.5 ..= 1.5
        base.mul_f64(jitter)
    }
}

/// Client layer: retries and hedging (see the module docs).
#[derive(Clone)]
pub struct RetryLayer {
    config: Arc<RetryConfig>,
    budget: Budget,
    metrics: Option<Metrics>,
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl RetryLayer {
    /// Retries per `config`, with a budget of its own.
    pub fn new(config: RetryConfig) -> Self {
        let budget = Budget::new(config.budget);
        RetryLayer {
            config: Arc::new(config),
            budget,
            metrics: None,
        }
    }

    /// Counts retries, refused retries and hedges (`kite_client_retries_total`,
    /// `kite_client_retries_denied_total`, `kite_client_hedges_total`).
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// The budget (shared by every service of this layer).
    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            layer: self.clone(),
        }
    }
}

/// Service of [`RetryLayer`].
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    layer: RetryLayer,
}

impl<S> Service<Call> for Retry<S>
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
        let inner = self.inner.clone();
        let layer = self.layer.clone();
        Box::pin(run(inner, layer, call))
    }
}

async fn attempt<S>(inner: S, layer: &RetryLayer, call: &Call) -> Result<Value, KiteError>
where
    S: Service<Call, Response = Value, Error = KiteError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let hedge = layer.config.hedge.get(call.method()).copied();
    let first = inner.clone().oneshot(call.clone());
    let Some(delay) = hedge else {
        return first.await;
    };
    let first = Box::pin(first);
    let timer = Box::pin(tokio::time::sleep(delay));
    let first = match select(first, timer).await {
        Either::Left((r, _)) => return r,
        Either::Right(((), first)) => first,
    };
    if !layer.budget.withdraw() {
        if let Some(m) = &layer.metrics {
            m.retry_denied(&call.tuple);
        }
        return first.await;
    }
    if let Some(m) = &layer.metrics {
        m.hedge(&call.tuple);
    }
    let second = Box::pin(inner.oneshot(call.clone()));
    match select(first, second).await {
        Either::Left((Ok(v), _)) | Either::Right((Ok(v), _)) => Ok(v),
        Either::Left((Err(_), other)) => other.await,
        Either::Right((Err(_), other)) => other.await,
    }
}

async fn run<S>(inner: S, layer: RetryLayer, call: Call) -> Result<Value, KiteError>
where
    S: Service<Call, Response = Value, Error = KiteError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut call = call;
    if call.visited.is_none() {
        call.visited = Some(Default::default());
    }
    layer.budget.deposit();
    let mut attempts = 1;
    loop {
        let r = attempt(inner.clone(), &layer, &call).await;
        let e = match r {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if attempts >= layer.config.max_attempts || !layer.config.is_retryable(call.method(), &e) {
            return Err(e);
        }
        let pause = layer.config.backoff_for(attempts - 1);
        if let Some(deadline) = call.deadline {
            if Instant::now() + pause >= deadline {
                return Err(e);
            }
        }
        if !layer.budget.withdraw() {
            if let Some(m) = &layer.metrics {
                m.retry_denied(&call.tuple);
            }
            tracing::debug!(method = call.method(), "retry budget exhausted");
            return Err(e);
        }
        if let Some(m) = &layer.metrics {
            m.retry(&call.tuple);
        }
        tracing::debug!(method = call.method(), error = %e, attempt = attempts + 1, "retrying");
        tokio::time::sleep(pause).await;
        attempts += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_caps_retries() {
        let b = Budget::new(RetryBudget {
            ratio: 0.25,
            min_per_second: 0.0,
            max_tokens: 100.0,
        });
        for _ in 0..50 {
            b.deposit();
        }
        let mut n = 0;
        while b.withdraw() {
            n += 1;
        }
        assert_eq!(n, 12);
        let b = Budget::new(RetryBudget {
            ratio: 0.0,
            min_per_second: 2.0,
            max_tokens: 3.0,
        });
        assert!(b.withdraw() && b.withdraw() && !b.withdraw());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.withdraw() && b.withdraw() && b.withdraw() && !b.withdraw());
    }

    #[test]
    fn retry_safety() {
        let c = RetryConfig::default().idempotent("get");
        assert!(c.is_retryable("set", &KiteError::send("x")));
        assert!(!c.is_retryable("set", &KiteError::disconnect()));
        assert!(c.is_retryable("get", &KiteError::disconnect()));
        assert!(!c.is_retryable("get", &KiteError::generic("x")));
    }
}
