//! [`GovernedClient`]: a client with every governance layer composed, outermost first:
//!
//! ```text
//! tracing → fallback → metrics → deadline → retry → breaker (five-tuple) → balancer (instance breakers) | single client
//! ```
//!
//! Each layer can be tuned or switched off through [`ClientConfig`]; to compose your own
//! stack, use the layers directly over [`KiteService`] or [`Balancer`].

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::Stream;
use kite::{Kite, KiteError};
use serde::Serialize;
use serde_json::Value;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::balance::{Balancer, BalancerConfig, Change};
use crate::breaker::{BreakerConfig, BreakerLayer};
use crate::call::{Call, CallFuture, CallService, KiteService};
use crate::deadline::{DeadlineLayer, DEFAULT_TIMEOUT};
use crate::fallback::{Fallback, FallbackLayer};
use crate::metrics::{ClientMetricsLayer, Metrics};
use crate::retry::{RetryConfig, RetryLayer};
use crate::trace::ClientTraceLayer;
use crate::tuple::Route;

/// Settings of a [`GovernedClient`]. The defaults are safe: a 30 s deadline, retries only
/// where safe within a 20 % budget, breakers per five-tuple and per instance, least-loaded
/// balancing, tracing on; metrics when a registry is given.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Default deadline of a call (default 30 s; `None`: none).
    pub timeout: Option<Duration>,
    /// Per-method deadlines.
    pub method_timeouts: HashMap<String, Option<Duration>>,
    /// Retries (`None`: off).
    pub retry: Option<RetryConfig>,
    /// The five-tuple breaker (`None`: off).
    pub breaker: Option<BreakerConfig>,
    /// Balancing and instance breakers (discovery clients).
    pub balancer: BalancerConfig,
    /// Fallbacks per method.
    pub fallbacks: HashMap<String, Fallback>,
    /// Error types that trigger fallbacks (`None`: `circuitOpenError`, `timeout`,
    /// `noInstanceError`).
    pub fallback_triggers: Option<Vec<String>>,
    /// Client spans and `traceparent` (default on).
    pub tracing: bool,
    /// Metrics registry (`None`: no metrics layer).
    pub metrics: Option<Metrics>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Some(DEFAULT_TIMEOUT),
            method_timeouts: HashMap::new(),
            retry: Some(RetryConfig::default()),
            breaker: Some(BreakerConfig::default()),
            balancer: BalancerConfig::default(),
            fallbacks: HashMap::new(),
            fallback_triggers: None,
            tracing: true,
            metrics: None,
        }
    }
}

impl ClientConfig {
    /// Records metrics into `metrics`.
    pub fn metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Sets the default deadline.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets `method`'s deadline.
    pub fn method_timeout(mut self, method: &str, timeout: Option<Duration>) -> Self {
        self.method_timeouts.insert(method.to_string(), timeout);
        self
    }

    /// Marks `method` idempotent (retried on more error types).
    pub fn idempotent(mut self, method: &str) -> Self {
        if let Some(r) = self.retry.take() {
            self.retry = Some(r.idempotent(method));
        }
        self
    }

    /// Hedges `method` after `delay` (marks it idempotent).
    pub fn hedge(mut self, method: &str, delay: Duration) -> Self {
        if let Some(r) = self.retry.take() {
            self.retry = Some(r.hedge(method, delay));
        }
        self
    }

    /// Sets `method`'s fallback.
    pub fn fallback(mut self, method: &str, fallback: Fallback) -> Self {
        self.fallbacks.insert(method.to_string(), fallback);
        self
    }

    /// Composes the layers over `bottom`.
    pub fn layer(&self, bottom: CallService) -> CallService {
        self.stack(bottom)
    }

    /// Composes the layers over `bottom` as one concrete service, boxed once at the top:
    /// cloning the stack (once per call, and by retries per attempt) then copies one
    /// value instead of allocating a box per layer, and only the top future is boxed
    /// twice.
    pub(crate) fn stack<S>(&self, bottom: S) -> CallService
    where
        S: Service<Call, Response = Value, Error = KiteError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        let breaker = self.breaker.as_ref().map(|b| {
            let mut l = BreakerLayer::new(b.clone());
            if let Some(m) = &self.metrics {
                l = l.with_metrics(m);
            }
            l
        });
        let retry = self.retry.as_ref().map(|r| {
            let mut l = RetryLayer::new(r.clone());
            if let Some(m) = &self.metrics {
                l = l.with_metrics(m);
            }
            l
        });
        let mut deadline = DeadlineLayer::new(self.timeout);
        for (m, t) in &self.method_timeouts {
            deadline = deadline.method(m, *t);
        }
        let metrics = self.metrics.as_ref().map(ClientMetricsLayer::new);
        let fallback = (!self.fallbacks.is_empty()).then(|| {
            let mut l = FallbackLayer::new();
            if let Some(t) = &self.fallback_triggers {
                l = l.triggers(t.iter().cloned());
            }
            if let Some(m) = &self.metrics {
                l = l.with_metrics(m);
            }
            for (m, f) in &self.fallbacks {
                l = l.method(m, f.clone());
            }
            l
        });
        let tracing = self.tracing.then(ClientTraceLayer::new);
        // Outermost first.
        let stack = ServiceBuilder::new()
            .option_layer(tracing)
            .option_layer(fallback)
            .option_layer(metrics)
            .layer(deadline)
            .option_layer(retry)
            .option_layer(breaker)
            .service(bottom);
        CallService::new(stack)
    }
}

/// A governed client: calls go through the composed layers. Cheap to clone; also a
/// `tower::Service<Call>`.
#[derive(Clone)]
pub struct GovernedClient {
    svc: CallService,
    route: Route,
    balancer: Option<Balancer>,
}

impl fmt::Debug for GovernedClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GovernedClient")
            .field("route", &self.route)
            .finish()
    }
}

impl GovernedClient {
    /// The layers of `config` over any bottom service, for calls on `route`.
    pub fn new(route: Route, bottom: CallService, config: &ClientConfig) -> Self {
        GovernedClient {
            svc: config.layer(bottom),
            route,
            balancer: None,
        }
    }

    /// Governs calls made by `local` through one `client` (dial it yourself). The
    /// five-tuple's `to` is the client's remote kite (name and cluster) when known, else
    /// `unknown`.
    pub fn single(local: &Kite, client: kite::Client, config: &ClientConfig) -> Self {
        let me = local.identity();
        let route = match client.remote_kite() {
            Some(k) => Route::to_kite(&me, &k),
            None => Route::new(&me, "unknown", "unknown"),
        };
        let bottom = KiteService::client(client).with_default_timeout(config.balancer.call_timeout);
        GovernedClient {
            svc: config.stack(bottom),
            route,
            balancer: None,
        }
    }

    /// Governs calls made by `local` to the instances of the kite named `to` in cluster
    /// `to_cluster`, balanced over the set `changes` maintains.
    pub fn balanced<S>(
        local: &Kite,
        to: &str,
        to_cluster: &str,
        changes: S,
        config: &ClientConfig,
    ) -> Self
    where
        S: Stream<Item = Change> + Send + 'static,
    {
        let route = Route::new(&local.identity(), to, to_cluster);
        let balancer = Balancer::new(
            route.clone(),
            config.balancer.clone(),
            config.metrics.as_ref(),
        );
        balancer.follow(changes);
        GovernedClient {
            svc: config.stack(balancer.clone()),
            route,
            balancer: Some(balancer),
        }
    }

    /// The route (the fixed part of the five-tuple).
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The balancer, for discovery clients.
    pub fn balancer(&self) -> Option<&Balancer> {
        self.balancer.as_ref()
    }

    /// The composed stack as a service.
    pub fn service(&self) -> CallService {
        self.svc.clone()
    }

    /// A call of `method` with `args` on this client's route.
    pub fn new_call(&self, method: &str, args: Value) -> Call {
        Call::new(self.route.tuple(method), args)
    }

    /// Calls `method` with `args` (JSON arguments: an array is the list, `()`/`null`
    /// none, anything else the single argument; callbacks are not supported here — use
    /// `kite::Client` for them).
    pub async fn call<A: Serialize + ?Sized>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<Value, KiteError> {
        let args = serde_json::to_value(args)
            .map_err(|e| KiteError::send(format!("cannot serialize arguments: {e}")))?;
        self.send(self.new_call(method, args)).await
    }

    /// Like [`GovernedClient::call`] with a consistent-hashing key.
    pub async fn call_keyed<A: Serialize + ?Sized, K: Hash + ?Sized>(
        &self,
        method: &str,
        args: &A,
        key: &K,
    ) -> Result<Value, KiteError> {
        let args = serde_json::to_value(args)
            .map_err(|e| KiteError::send(format!("cannot serialize arguments: {e}")))?;
        self.send(self.new_call(method, args).with_key(key)).await
    }

    /// Sends a prepared call.
    pub async fn send(&self, call: Call) -> Result<Value, KiteError> {
        self.svc.clone().oneshot(call).await
    }
}

impl Service<Call> for GovernedClient {
    type Response = Value;
    type Error = KiteError;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), KiteError>> {
        self.svc.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        Box::pin(self.svc.call(call))
    }
}
