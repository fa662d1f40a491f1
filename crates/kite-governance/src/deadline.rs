//! Deadlines: per-call timeouts on the client ([`DeadlineLayer`]), and on the server
//! ([`ServerDeadlineLayer`]) the caller's remaining budget read from the `deadline`
//! envelope field: the handler's [`Request`] is cancelled when it passes.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use kite::{KiteError, Request};
use serde_json::Value;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::call::{Call, CallFuture};
use crate::context::{earliest, Context, DEADLINE_FIELD};
use crate::metrics::{HandlerFuture, Metrics};
use crate::server::Callers;

/// Default per-call timeout of governed clients.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Client layer: gives every call a deadline and fails it with `timeout` when the
/// deadline passes (the inner call is dropped: its response callback is freed).
///
/// The deadline is the earliest of: the call's own [`Call::deadline`], now + the
/// method's timeout (or the default), and the deadline of the request this task is
/// serving (so budgets shrink along a chain of calls).
#[derive(Clone, Debug)]
pub struct DeadlineLayer {
    default: Option<Duration>,
    methods: Arc<HashMap<String, Option<Duration>>>,
}

impl Default for DeadlineLayer {
    fn default() -> Self {
        DeadlineLayer::new(Some(DEFAULT_TIMEOUT))
    }
}

impl DeadlineLayer {
    /// Calls get `default` as timeout (`None`: no timeout unless inherited or set on the
    /// call).
    pub fn new(default: Option<Duration>) -> Self {
        DeadlineLayer {
            default,
            methods: Arc::default(),
        }
    }

    /// Sets `method`'s timeout (`None`: none).
    pub fn method(mut self, method: &str, timeout: Option<Duration>) -> Self {
        Arc::make_mut(&mut self.methods).insert(method.to_string(), timeout);
        self
    }

    fn timeout_of(&self, method: &str) -> Option<Duration> {
        match self.methods.get(method) {
            Some(t) => *t,
            None => self.default,
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            layer: self.clone(),
        }
    }
}

/// Service of [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    layer: DeadlineLayer,
}

impl<S> Service<Call> for Deadline<S>
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

    fn call(&mut self, mut call: Call) -> Self::Future {
        let start = Instant::now();
        let own = self.layer.timeout_of(call.method()).map(|t| start + t);
        call.deadline = earliest(
            earliest(call.deadline, own),
            crate::context::current_deadline(),
        );
        let Some(deadline) = call.deadline else {
            return Box::pin(self.inner.call(call));
        };
        let method = call.tuple.method.clone();
        let fut = self.inner.call(call);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, fut).await {
                Ok(r) => r,
                Err(_) => Err(KiteError::timeout(
                    &method,
                    deadline.saturating_duration_since(start),
                )),
            }
        })
    }
}

/// Longest budget accepted from a caller (24 h); larger values are capped.
pub const MAX_BUDGET: Duration = Duration::from_secs(24 * 3600);

/// Default time a cancelled handler gets to finish on its own.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(100);

/// The remaining budget a request carries (its `deadline` field, in milliseconds).
/// Anything but a non-negative integer (or integral float) is ignored.
pub fn request_budget(req: &Request) -> Option<Duration> {
    let v = req.envelope_field(DEADLINE_FIELD)?;
    let ms = match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.is_finite())
                .map(|f| f as u64)
        })?,
        _ => return None,
    };
    Some(Duration::from_millis(ms).min(MAX_BUDGET))
}

/// Server layer: honours the caller's deadline.
///
/// When the request carries a `deadline` budget (or the method has a server-side maximum,
/// [`ServerDeadlineLayer::method`]), the handler runs with that deadline as the task's
/// [`Context`] (its own outgoing calls inherit it). When the deadline passes the request
/// is cancelled ([`Request::cancelled`] completes), the handler gets `grace` to finish,
/// then it is dropped and the reply is `timeout`. A request that arrives with no budget
/// left is refused at once (the handler does not run).
#[derive(Clone, Debug)]
pub struct ServerDeadlineLayer {
    grace: Duration,
    methods: Arc<HashMap<String, Duration>>,
    default_max: Option<Duration>,
    metrics: Option<(Metrics, Callers)>,
}

impl Default for ServerDeadlineLayer {
    fn default() -> Self {
        ServerDeadlineLayer::new()
    }
}

impl ServerDeadlineLayer {
    /// Honours callers' budgets; no server-side maximum; grace [`DEFAULT_GRACE`].
    pub fn new() -> Self {
        ServerDeadlineLayer {
            grace: DEFAULT_GRACE,
            methods: Arc::default(),
            default_max: None,
            metrics: None,
        }
    }

    /// Sets how long a cancelled handler may still run.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Caps every method's run time at `max` (also without a caller budget).
    pub fn default_max(mut self, max: Option<Duration>) -> Self {
        self.default_max = max;
        self
    }

    /// Caps `method`'s run time at `max`.
    pub fn method(mut self, method: &str, max: Duration) -> Self {
        Arc::make_mut(&mut self.methods).insert(method.to_string(), max);
        self
    }

    /// Counts requests refused on arrival (budget already spent) as
    /// `kite_server_shed_total{reason="deadline"}`.
    pub fn with_metrics(mut self, metrics: &Metrics, callers: &Callers) -> Self {
        self.metrics = Some((metrics.clone(), callers.clone()));
        self
    }
}

impl<S> Layer<S> for ServerDeadlineLayer {
    type Service = ServerDeadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServerDeadline {
            inner,
            layer: self.clone(),
        }
    }
}

/// Service of [`ServerDeadlineLayer`].
#[derive(Clone, Debug)]
pub struct ServerDeadline<S> {
    inner: S,
    layer: ServerDeadlineLayer,
}

impl<S> Service<Request> for ServerDeadline<S>
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
        let start = Instant::now();
        let budget = request_budget(&req);
        let max = self
            .layer
            .methods
            .get(req.method())
            .copied()
            .or(self.layer.default_max);
        let budget = match (budget, max) {
            (Some(b), Some(m)) => Some(b.min(m)),
            (b, m) => b.or(m),
        };
        let Some(budget) = budget else {
            return Box::pin(self.inner.call(req));
        };
        let deadline = start + budget;
        if budget.is_zero() {
            req.cancel();
            if let Some((m, c)) = &self.layer.metrics {
                m.shed(&c.tuple(&req), "deadline");
            }
            return Box::pin(std::future::ready(Err(KiteError::timeout(
                req.method(),
                budget,
            ))));
        }
        let grace = self.layer.grace;
        let fut = self.inner.call(req.clone());
        Box::pin(Context::scope_with(
            move |c| c.deadline = earliest(c.deadline, Some(deadline)),
            async move {
                tokio::pin!(fut);
                tokio::select! {
                    r = &mut fut => r,
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::debug!(request_id = req.id(), method = req.method(), "deadline passed, cancelling the request");
                        req.cancel();
                        match tokio::time::timeout(grace, fut).await {
                            Ok(Err(e)) if e.kind != KiteError::TIMEOUT => Err(KiteError::timeout(req.method(), budget)),
                            Ok(r) => r,
                            Err(_) => Err(KiteError::timeout(req.method(), budget)),
                        }
                    }
                }
            },
        ))
    }
}
