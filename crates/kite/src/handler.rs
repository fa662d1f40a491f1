//! Method handlers as tower services, per-method settings (authentication, throttling),
//! and the hooks around every call.
//!
//! Each method's handler is a [`HandlerService`]: a boxed, cloneable
//! `tower::Service<Request, Response = Value, Error = KiteError>`. Layers registered with
//! [`Kite::layer`](crate::Kite::layer) wrap every method's service (also those added
//! later), so governance features (timeouts, concurrency limits, metrics, tracing) plug in
//! without touching the core. The core itself does, in order: options decoding,
//! authentication, rate limit, pre-handlers, the (layered) service, post-handlers, the
//! response, final handlers.

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::callback::{to_value_collecting, Function};
use crate::error::KiteError;
use crate::protocol::Kite as KiteIdentity;
use crate::request::Request;

/// A method's handler as a tower service.
pub type HandlerService = BoxCloneSyncService<Request, Value, KiteError>;

/// A function turning a method's service into the layered service.
pub(crate) type LayerFn = Arc<dyn Fn(HandlerService) -> HandlerService + Send + Sync>;

tokio::task_local! {
    /// Local functions met while serializing a handler's result (per request).
    static REPLY_FUNCTIONS: RefCell<Vec<Function>>;
}

/// Serializes a handler result into JSON. [`Function`]s inside are registered for the
/// response of the request being handled, so a handler may return objects with callable
/// members. Use it in hand-written [`tower::Service`] handlers; closures registered with
/// [`Kite::handle_func`](crate::Kite::handle_func) do it for you. Outside a request (or
/// inside a task spawned by the handler) a value containing functions is an error.
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, KiteError> {
    let in_request = REPLY_FUNCTIONS.try_with(|f| f.borrow().len()).ok();
    let (value, functions) = to_value_collecting(value, in_request.unwrap_or(0))
        .map_err(|e| KiteError::generic(format!("cannot serialize result: {e}")))?;
    if !functions.is_empty() {
        let stored = REPLY_FUNCTIONS.try_with(|f| f.borrow_mut().extend(functions));
        if stored.is_err() {
            return Err(KiteError::generic(
                "functions in a result can only be serialized while handling a request",
            ));
        }
    }
    Ok(value)
}

/// Runs `fut` with a fresh per-request function list; returns its output and the list.
pub(crate) async fn with_reply_scope<F: Future>(fut: F) -> (F::Output, Vec<Function>) {
    let slot = RefCell::new(Vec::new());
    REPLY_FUNCTIONS
        .scope(slot, async move {
            let out = fut.await;
            let functions = REPLY_FUNCTIONS.with(|f| std::mem::take(&mut *f.borrow_mut()));
            (out, functions)
        })
        .await
}

/// Adapter: an async closure `Fn(Request) -> Future<Output = Result<T, KiteError>>` as a
/// tower service.
#[derive(Clone)]
pub struct HandlerFn<F> {
    f: F,
}

impl<F, Fut, T> Service<Request> for HandlerFn<F>
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T, KiteError>> + Send + 'static,
    T: Serialize,
{
    type Response = Value;
    type Error = KiteError;
    type Future = HandlerFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), KiteError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        boxed_call(&self.f, req)
    }
}

/// A boxed handler future.
pub(crate) type HandlerFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Value, KiteError>> + Send>>;

/// A `handle_func` closure, callable without the tower service around it.
pub(crate) type DirectFn = Arc<dyn Fn(Request) -> HandlerFuture + Send + Sync>;

/// The [`DirectFn`] of an async closure (what [`HandlerFn::call`] does).
pub(crate) fn direct_fn<F, Fut, T>(f: F) -> DirectFn
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, KiteError>> + Send + 'static,
    T: Serialize,
{
    Arc::new(move |req| boxed_call(&f, req))
}

/// Calls a handler closure; its result is serialized with [`to_value`].
fn boxed_call<F, Fut, T>(f: &F, req: Request) -> HandlerFuture
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Result<T, KiteError>> + Send + 'static,
    T: Serialize,
{
    let fut = f(req);
    Box::pin(async move {
        let out = fut.await?;
        to_value(&out)
    })
}

/// Wraps an async closure into a [`HandlerService`].
pub fn handler_fn<F, Fut, T>(f: F) -> HandlerService
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T, KiteError>> + Send + 'static,
    T: Serialize,
{
    BoxCloneSyncService::new(HandlerFn { f })
}

/// Converts any service error into a kite error: a [`KiteError`] passes through, anything
/// else (e.g. tower's `Elapsed`) becomes `genericError` with its text.
pub fn into_kite_error(e: tower::BoxError) -> KiteError {
    match e.downcast::<KiteError>() {
        Ok(k) => *k,
        Err(e) => KiteError::generic(e.to_string()),
    }
}

/// Builds a [`LayerFn`] from a tower layer.
pub(crate) fn layer_fn<L>(layer: L) -> LayerFn
where
    L: Layer<HandlerService> + Send + Sync + 'static,
    L::Service: Service<Request, Response = Value> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request>>::Error: Into<tower::BoxError>,
    <L::Service as Service<Request>>::Future: Send + 'static,
{
    Arc::new(move |inner| {
        BoxCloneSyncService::new(layer.layer(inner).map_err(|e| into_kite_error(e.into())))
    })
}

/// A token bucket shared by every caller of a method (PROTOCOL.md 4.3 step 9).
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub(crate) fn new(rate_per_second: f64, burst: u32) -> Self {
        let capacity = f64::from(burst.max(1));
        TokenBucket {
            rate: rate_per_second.max(0.0),
            capacity,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    pub(crate) fn try_take(&self) -> bool {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        let elapsed = now.duration_since(st.1).as_secs_f64();
        st.0 = (st.0 + elapsed * self.rate).min(self.capacity);
        st.1 = now;
        if st.0 >= 1.0 {
            st.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A registered method.
pub(crate) struct MethodEntry {
    /// The method name (shared by every request of the method).
    pub name: Arc<str>,
    pub raw: HandlerService,
    /// The closure behind `raw` when it came from `handle_func`: called directly while
    /// no layer wraps the method (no service clone, no second boxing per request).
    direct: Option<DirectFn>,
    use_direct: AtomicBool,
    pub service: RwLock<HandlerService>,
    pub auth: AtomicBool,
    pub bucket: RwLock<Option<Arc<TokenBucket>>>,
}

impl MethodEntry {
    pub(crate) fn new(
        name: &str,
        raw: HandlerService,
        direct: Option<DirectFn>,
        layers: &[LayerFn],
    ) -> Self {
        let service = compose(&raw, layers);
        MethodEntry {
            name: Arc::from(name),
            raw,
            use_direct: AtomicBool::new(direct.is_some() && layers.is_empty()),
            direct,
            service: RwLock::new(service),
            auth: AtomicBool::new(true),
            bucket: RwLock::new(None),
        }
    }

    pub(crate) fn recompose(&self, layers: &[LayerFn]) {
        let s = compose(&self.raw, layers);
        self.use_direct.store(
            self.direct.is_some() && layers.is_empty(),
            Ordering::Release,
        );
        match self.service.write() {
            Ok(mut g) => *g = s,
            Err(p) => *p.into_inner() = s,
        }
    }

    /// The handler closure to call directly, when no layer wraps the method.
    pub(crate) fn direct(&self) -> Option<&DirectFn> {
        if self.use_direct.load(Ordering::Acquire) {
            self.direct.as_ref()
        } else {
            None
        }
    }

    pub(crate) fn service(&self) -> HandlerService {
        match self.service.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn requires_auth(&self) -> bool {
        self.auth.load(Ordering::Relaxed)
    }

    pub(crate) fn bucket(&self) -> Option<Arc<TokenBucket>> {
        match self.bucket.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

fn compose(raw: &HandlerService, layers: &[LayerFn]) -> HandlerService {
    // The first layer added is the outermost.
    layers.iter().rev().fold(raw.clone(), |s, l| l(s))
}

/// Per-method settings, returned by [`Kite::handle_func`](crate::Kite::handle_func) and
/// [`Kite::handle`](crate::Kite::handle).
pub struct Method {
    pub(crate) entry: Arc<MethodEntry>,
}

impl Method {
    /// Lets callers use the method without authentication (like `kite.ping`).
    pub fn disable_authentication(&self) -> &Self {
        self.entry.auth.store(false, Ordering::Relaxed);
        self
    }

    /// Limits the method to `rate` calls per second with bursts of up to `burst`, shared by
    /// all callers; excess calls get `requestLimitError`.
    pub fn throttle(&self, rate: f64, burst: u32) -> &Self {
        let b = Some(Arc::new(TokenBucket::new(rate, burst)));
        match self.entry.bucket.write() {
            Ok(mut g) => *g = b,
            Err(p) => *p.into_inner() = b,
        }
        self
    }

    /// Same as [`Method::throttle`] with Go's parameters: one token every `fill_interval`,
    /// at most `capacity` tokens.
    pub fn throttle_interval(&self, fill_interval: Duration, capacity: u32) -> &Self {
        let rate = 1.0 / fill_interval.as_secs_f64().max(1e-9);
        self.throttle(rate, capacity)
    }
}

/// A boxed future returned by [`Authenticate::authenticate`].
pub type AuthFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<String, KiteError>> + Send + 'a>>;

/// Decides whether a credential is valid; returns the authenticated username.
///
/// The default is the kite's [`crate::auth::Authenticator`] (built-in `kiteKey` and `token`
/// verifiers, extra verifiers registered by type with
/// [`Kite::authenticator`](crate::Kite::authenticator)); replace it with
/// [`Kite::set_authenticator`](crate::Kite::set_authenticator).
///
/// Every request that needs authentication calls [`authenticate`](Self::authenticate),
/// unless the implementation opts in to reuse with [`reuse_for`](Self::reuse_for): a
/// connection then remembers its last success and skips the authenticator for later
/// requests with the same credential while the success holds.
pub trait Authenticate: Send + Sync + 'static {
    /// Verifies `auth` for a request to the kite `local`. The error is sent to the caller as
    /// is (normally `authenticationError` with message `<type>: <reason>`).
    fn authenticate<'a>(
        &'a self,
        auth: &'a crate::request::Auth,
        local: &'a KiteIdentity,
    ) -> AuthFuture<'a>;

    /// Called right after [`authenticate`](Self::authenticate) succeeded for `auth` and
    /// `local`: until when that success may be reused for the same credential on the same
    /// connection, to the same local identity, without calling `authenticate` again. Only
    /// return a window in which `authenticate` would certainly succeed again with the same
    /// username, as long as [`epoch`](Self::epoch) returns the value it returned before
    /// that call. The default, `None`, reuses nothing: every request is authenticated.
    fn reuse_for(
        &self,
        auth: &crate::request::Auth,
        local: &KiteIdentity,
    ) -> Option<crate::auth::Validity> {
        let _ = (auth, local);
        None
    }

    /// A number that must change whenever a window returned by
    /// [`reuse_for`](Self::reuse_for) may no longer hold (keys, trusted issuers, verifiers
    /// or revocations changed). Read before each `authenticate` whose success may be
    /// reused, and compared before every reuse. Only consulted when `reuse_for` returns a
    /// window; the default is a constant.
    fn epoch(&self) -> u64 {
        0
    }
}

impl Authenticate for crate::auth::Authenticator {
    fn authenticate<'a>(
        &'a self,
        auth: &'a crate::request::Auth,
        local: &'a KiteIdentity,
    ) -> AuthFuture<'a> {
        Box::pin(async move {
            crate::auth::Authenticator::authenticate(self, &auth.kind, &auth.key, local)
                .await
                .map(|a| a.username)
                .map_err(|e| KiteError::new(e.error_type(), e.to_string()))
        })
    }

    /// The window in which a verification cache hit would succeed
    /// ([`Authenticator::validity`](crate::auth::Authenticator::validity)); the audience
    /// was checked against `local` by the `authenticate` call this follows.
    fn reuse_for(
        &self,
        auth: &crate::request::Auth,
        _local: &KiteIdentity,
    ) -> Option<crate::auth::Validity> {
        self.validity(&auth.kind, &auth.key)
    }

    fn epoch(&self) -> u64 {
        crate::auth::Authenticator::epoch(self)
    }
}

/// Runs before every handler (after authentication and rate limiting); an error becomes the
/// response and the handler is skipped.
pub type PreHandler = Arc<dyn Fn(&Request) -> Result<(), KiteError> + Send + Sync>;
/// Runs after every handler and may change its outcome.
pub type PostHandler = Arc<dyn Fn(&Request, &mut Result<Value, KiteError>) + Send + Sync>;
/// Runs after the response of every request was sent, with its outcome.
pub type FinalHandler = Arc<dyn Fn(&Request, &Result<Value, KiteError>) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket() {
        let b = TokenBucket::new(0.0, 2);
        assert!(b.try_take());
        assert!(b.try_take());
        assert!(!b.try_take());
    }
}
