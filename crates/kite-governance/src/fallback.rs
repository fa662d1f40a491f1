//! Client-side fallbacks: a method's answer when the real call cannot be made — the
//! breaker is open, the deadline passed, or no instance is available.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use kite::KiteError;
use serde_json::Value;
use tower::{Layer, Service};

use crate::call::{Call, CallFuture};
use crate::error;
use crate::metrics::Metrics;

type FallbackFn = Arc<dyn Fn(&Call, &KiteError) -> Result<Value, KiteError> + Send + Sync>;

/// A method's fallback.
#[derive(Clone)]
pub enum Fallback {
    /// Answer this value.
    Value(Value),
    /// Compute the answer from the call and the error (may fail too).
    Func(FallbackFn),
}

impl fmt::Debug for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fallback::Value(v) => f.debug_tuple("Value").field(v).finish(),
            Fallback::Func(_) => f.write_str("Func"),
        }
    }
}

impl Fallback {
    /// A fixed value.
    pub fn value(v: Value) -> Self {
        Fallback::Value(v)
    }

    /// A function of the call and the error.
    pub fn func(
        f: impl Fn(&Call, &KiteError) -> Result<Value, KiteError> + Send + Sync + 'static,
    ) -> Self {
        Fallback::Func(Arc::new(f))
    }

    fn answer(&self, call: &Call, e: &KiteError) -> Result<Value, KiteError> {
        match self {
            Fallback::Value(v) => Ok(v.clone()),
            Fallback::Func(f) => f(call, e),
        }
    }
}

/// Client layer: answers a method's fallback when the call fails with one of the trigger
/// error types (default `circuitOpenError`, `timeout`, `noInstanceError`). Counted as
/// `kite_client_fallbacks_total{reason=<error type>}`.
#[derive(Clone, Debug)]
pub struct FallbackLayer {
    methods: Arc<HashMap<String, Fallback>>,
    triggers: Arc<HashSet<String>>,
    metrics: Option<Metrics>,
}

impl Default for FallbackLayer {
    fn default() -> Self {
        FallbackLayer::new()
    }
}

impl FallbackLayer {
    /// No fallbacks yet; default triggers.
    pub fn new() -> Self {
        FallbackLayer {
            methods: Arc::default(),
            triggers: Arc::new(
                [error::CIRCUIT_OPEN, error::TIMEOUT, error::NO_INSTANCE]
                    .into_iter()
                    .map(String::from)
                    .collect(),
            ),
            metrics: None,
        }
    }

    /// Sets `method`'s fallback.
    pub fn method(mut self, method: &str, fallback: Fallback) -> Self {
        Arc::make_mut(&mut self.methods).insert(method.to_string(), fallback);
        self
    }

    /// Replaces the trigger error types.
    pub fn triggers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.triggers = Arc::new(types.into_iter().map(Into::into).collect());
        self
    }

    /// Counts fallbacks in `metrics`.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }
}

impl<S> Layer<S> for FallbackLayer {
    type Service = FallbackService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FallbackService {
            inner,
            layer: self.clone(),
        }
    }
}

/// Service of [`FallbackLayer`].
#[derive(Clone, Debug)]
pub struct FallbackService<S> {
    inner: S,
    layer: FallbackLayer,
}

impl<S> Service<Call> for FallbackService<S>
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
        let Some(fallback) = self.layer.methods.get(call.method()).cloned() else {
            return Box::pin(self.inner.call(call));
        };
        let layer = self.layer.clone();
        // The call is kept (cheap for small arguments) so a fallback function can read it.
        let fut = self.inner.call(call.clone());
        Box::pin(async move {
            match fut.await {
                Err(e) if layer.triggers.contains(&e.kind) => {
                    tracing::debug!(method = call.method(), error = %e, "answering the fallback");
                    if let Some(m) = &layer.metrics {
                        m.fallback(&call.tuple, &e.kind);
                    }
                    fallback.answer(&call, &e)
                }
                r => r,
            }
        })
    }
}
