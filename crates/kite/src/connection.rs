//! The connection engine: one dnode peer over one session, symmetric for both directions.
//!
//! A [`Connection`] reads its session on one task (the read loop). Incoming named-method
//! requests are handled concurrently, each on its own task, but at most
//! [`Limits::max_concurrent_handlers`](crate::Limits::max_concurrent_handlers) at a time: at
//! the bound the read loop stops reading until a handler finishes. Incoming callback
//! invocations (responses included) run on the read loop itself, one at a time, in arrival
//! order, as in Go (PROTOCOL.md 3.5). Outgoing messages go through the session's bounded
//! queue in call order.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};
use tracing::{debug, warn};

use crate::args::{to_arguments, Args, Response};
use crate::auth::Validity;
use crate::callback::Function;
use crate::deadlines::{self, Deadlines, Sweeper};
use crate::error::KiteError;
use crate::handler::{with_reply_scope, Authenticate, MethodEntry};
use crate::id_hash::IdMap;
use crate::kite::Core;
use crate::protocol::Kite as KiteIdentity;
use crate::request::{Auth, Request, RequestInner};
use crate::settings::Limits;
use kite_protocol::dnode::{self, Callbacks, Message, Method};
use kite_protocol::{envelope, incoming, RequestId};
use kite_sockjs::session::{
    Escaped, Received, Role, SendError, Session, SessionInfo, SessionReceiver, SessionSender,
};

/// Extra keys of a request's options object, sent next to `withArgs` (e.g. a deadline or
/// a W3C `traceparent`). Go and kite.js peers ignore keys they do not know; our server
/// hands them to handlers as [`Request::envelope_field`]. They are data: functions are
/// passed in the arguments, not here (a function marker in a field is sent as a string).
pub type EnvelopeFields = serde_json::Map<String, Value>;

/// A local callback registered on a connection.
pub(crate) enum LocalCallback {
    /// A user function; kept for the connection's lifetime (bounded, oldest evicted).
    User(Function),
    /// The response callback of one of our calls; freed after its first invocation or the
    /// call's timeout (Q3).
    Response(oneshot::Sender<Result<Value, KiteError>>),
}

#[derive(Default)]
struct Table {
    /// Next callback id (never reused on a connection).
    next_id: u64,
    entries: IdMap<LocalCallback>,
    user_order: VecDeque<u64>,
    pending: usize,
    /// Deadlines of the pending calls that have a timeout (see [`crate::deadlines`]).
    deadlines: Deadlines,
}

fn is_response(entries: &IdMap<LocalCallback>, id: u64) -> bool {
    matches!(entries.get(&id), Some(LocalCallback::Response(_)))
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<LocalCallback> {
        let e = self.entries.remove(&id);
        if let Some(LocalCallback::Response(_)) = e {
            self.pending -= 1;
        }
        e
    }

    fn is_pending(&self, id: u64) -> bool {
        is_response(&self.entries, id)
    }

    /// Records the deadline of the pending call whose response callback is `id`; returns
    /// whether the sweeper must be woken.
    fn add_deadline(&mut self, id: u64, at: Instant) -> bool {
        let Table {
            entries,
            pending,
            deadlines,
            ..
        } = self;
        deadlines.push(at, id, *pending, |id| is_response(entries, id))
    }

    /// Removes the pending calls whose deadline is at or before `now`; returns their
    /// response callbacks (to drop outside the lock) and the next deadline.
    fn expire(&mut self, now: Instant) -> (Vec<LocalCallback>, Option<Instant>) {
        let mut expired = Vec::new();
        while let Some(id) = self.deadlines.pop_due(now) {
            if self.is_pending(id) {
                expired.extend(self.remove(id));
            }
        }
        (expired, self.deadlines.rearm())
    }
}

/// The credential sent with our calls and its request JSON, serialised once.
struct CachedAuth {
    auth: Auth,
    json: Box<str>,
    /// `json` escaped for SockJS frames.
    escaped: Escaped,
}

impl CachedAuth {
    fn new(auth: Auth) -> Arc<CachedAuth> {
        let json = envelope::authentication_json(&envelope::Authentication::new(
            auth.kind.as_str(),
            auth.key.as_str(),
        ))
        .into_boxed_str();
        let escaped = Escaped::new(&json);
        Arc::new(CachedAuth {
            auth,
            json,
            escaped,
        })
    }
}

/// See [`ConnShared::last_caller`].
#[derive(Default)]
struct LastCaller {
    kite: Option<Arc<KiteIdentity>>,
    /// `kite` with the username authentication gave.
    authenticated: Option<Arc<KiteIdentity>>,
    auth: Option<Arc<Auth>>,
    /// The last successful authentication, reused while it holds (boxed: one pointer in
    /// every connection, allocated once per credential).
    reuse: Option<Box<Reuse>>,
}

/// A success of the authenticator in force that it allowed to reuse
/// ([`Authenticate::reuse_for`]): later requests with the same credential skip the
/// authenticator while nothing it depends on changed and its window holds.
struct Reuse {
    /// The credential, by pointer identity: the `Arc` that [`ConnShared::own_request`]
    /// hands out while the peer keeps sending the same one (held here, so the address
    /// cannot be reused by another credential).
    auth: Arc<Auth>,
    username: Box<str>,
    /// Who verified it, and its [`Authenticate::epoch`] before it did.
    authenticator: Arc<dyn Authenticate>,
    epoch: u64,
    /// [`Core::auth_epoch`] before the verification (authenticator and local identity).
    core_epoch: u64,
    validity: Validity,
}

/// `caller` with `username` (the authenticated one); the result for the peer's last claimed
/// identity (`kite`) is kept in `authenticated` and reused across requests.
fn authenticated_caller(
    kite: &Option<Arc<KiteIdentity>>,
    authenticated: &mut Option<Arc<KiteIdentity>>,
    caller: &Arc<KiteIdentity>,
    username: &str,
) -> Arc<KiteIdentity> {
    if caller.username == username {
        return caller.clone();
    }
    let same_claim = kite.as_ref().is_some_and(|k| Arc::ptr_eq(k, caller));
    if same_claim {
        if let Some(a) = authenticated {
            if a.username == username {
                return a.clone();
            }
        }
    }
    let mut k = (**caller).clone();
    k.username = username.to_owned();
    let k = Arc::new(k);
    if same_claim {
        *authenticated = Some(k.clone());
    }
    k
}

/// A request decoded and owned, ready to be served.
struct Incoming {
    caller: Arc<KiteIdentity>,
    auth: Option<Arc<Auth>>,
    with_args: Vec<Value>,
    response_callback: Option<u64>,
    fields: EnvelopeFields,
}

pub(crate) struct ConnShared {
    pub(crate) core: Arc<Core>,
    pub(crate) limits: Arc<Limits>,
    sender: SessionSender,
    /// Messages are encoded in the escaped form of SockJS frames
    /// ([`SessionSender::frames_escaped`]).
    escaped: bool,
    info: SessionInfo,
    table: Mutex<Table>,
    remote: OnceLock<Arc<KiteIdentity>>,
    auth: RwLock<Option<Arc<CachedAuth>>>,
    /// The identity and credentials of the peer's last request, reused while its
    /// requests carry the same ones (a peer sends the same on every call).
    last_caller: Mutex<LastCaller>,
    closed: CancellationToken,
    /// Set just before `closed` is cancelled: checked on every call and message without
    /// the token's lock.
    is_closed: AtomicBool,
    /// Graceful shutdown began: new requests are refused.
    is_stopping: AtomicBool,
    permits: Arc<Semaphore>,
    /// The task expiring calls at their deadline, started by the first call with one.
    sweeper: Sweeper,
}

impl fmt::Debug for ConnShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("session", &self.info.id())
            .field("transport", &self.info.transport())
            .field("role", &self.info.role())
            .finish()
    }
}

/// One kite connection (either direction). Cheap to clone; all clones are the same
/// connection.
///
/// Handlers get the caller's connection from [`Request::connection`] and may call the
/// peer's methods on it; clients use it through [`Client`](crate::Client).
#[derive(Clone, Debug)]
pub struct Connection(pub(crate) Arc<ConnShared>);

/// How long `close` waits to queue the close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Connection {
    /// Starts the engine on `session`: spawns the read loop. Requests from the peer are
    /// served by the kite behind `core`; `auth` is the credential sent with our calls.
    pub(crate) fn start(
        core: Arc<Core>,
        limits: Arc<Limits>,
        session: Session,
        auth: Option<Auth>,
    ) -> Connection {
        let info = session.info().clone();
        let (sender, receiver) = session.split();
        let shared = Arc::new(ConnShared {
            permits: Arc::new(Semaphore::new(limits.max_concurrent_handlers.max(1))),
            core,
            limits,
            escaped: sender.frames_escaped(),
            sender,
            info,
            table: Mutex::new(Table::default()),
            remote: OnceLock::new(),
            auth: RwLock::new(auth.map(CachedAuth::new)),
            last_caller: Mutex::new(LastCaller::default()),
            closed: CancellationToken::new(),
            is_closed: AtomicBool::new(false),
            is_stopping: AtomicBool::new(false),
            sweeper: Sweeper::default(),
        });
        tokio::spawn(read_loop(shared.clone(), receiver));
        Connection(shared)
    }

    /// Facts about the underlying session (id, transport, role, remote address).
    pub fn info(&self) -> &SessionInfo {
        &self.0.info
    }

    /// Whether we accepted this connection (server side) or dialed it.
    pub fn role(&self) -> Role {
        self.0.info.role()
    }

    /// The peer's identity: on accepted connections taken from its first request
    /// (PROTOCOL.md 4.3 step 6); `None` before that.
    pub fn remote_kite(&self) -> Option<&KiteIdentity> {
        self.0.remote.get().map(|k| &**k)
    }

    /// Sets the peer's identity if it is not known yet (clients built from Kontrol results
    /// know it in advance).
    pub fn set_remote_kite(&self, kite: KiteIdentity) {
        let _ = self.0.remote.set(Arc::new(kite));
    }

    /// The credential sent with our calls on this connection.
    pub fn auth(&self) -> Option<Auth> {
        self.0.cached_auth().map(|a| a.auth.clone())
    }

    /// Replaces the credential sent with later calls.
    pub fn set_auth(&self, auth: Option<Auth>) {
        let auth = auth.map(CachedAuth::new);
        match self.0.auth.write() {
            Ok(mut g) => *g = auth,
            Err(p) => *p.into_inner() = auth,
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed.load(Ordering::Acquire)
    }

    /// Completes when the connection has ended.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let token = self.0.closed.clone();
        async move { token.cancelled().await }
    }

    /// Calls `method` on the peer with `args` and waits for the response, for at most the
    /// default call timeout ([`Limits::call_timeout`]).
    ///
    /// `args` is any `Serialize`: a tuple, `Vec` or `json!([...])` is the argument list;
    /// `()` means no argument; any other value is the only argument. [`Function`]s inside
    /// become callbacks the peer can call.
    pub async fn tell<A: Serialize + ?Sized>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<Response, KiteError> {
        let timeout = self.0.limits.call_timeout;
        self.tell_with_timeout(method, args, timeout).await
    }

    /// Like [`Connection::tell`] with an explicit timeout (`None` waits forever). On expiry
    /// the call fails with `timeout` and nothing is sent to the peer.
    pub async fn tell_with_timeout<A: Serialize + ?Sized>(
        &self,
        method: &str,
        args: &A,
        timeout: Option<Duration>,
    ) -> Result<Response, KiteError> {
        let (with_args, functions) = to_arguments(args, 1)
            .map_err(|e| KiteError::send(format!("cannot serialize arguments: {e}")))?;
        self.0
            .call(method, with_args, functions, None, timeout)
            .await
    }

    /// Like [`Connection::tell_with_timeout`], with `fields` added to the request's options
    /// object next to `withArgs` (see [`EnvelopeFields`]). Fields named like a standard key
    /// (`kite`, `authentication`, `withArgs`, `responseCallback`) are ignored.
    pub async fn tell_with_fields<A: Serialize + ?Sized>(
        &self,
        method: &str,
        args: &A,
        fields: EnvelopeFields,
        timeout: Option<Duration>,
    ) -> Result<Response, KiteError> {
        let (with_args, functions) = to_arguments(args, 1)
            .map_err(|e| KiteError::send(format!("cannot serialize arguments: {e}")))?;
        self.0
            .call(method, with_args, functions, Some(fields), timeout)
            .await
    }

    /// Starts a call now and returns a handle to await its response later.
    pub fn go<A: Serialize + ?Sized>(&self, method: &str, args: &A) -> PendingCall {
        let timeout = self.0.limits.call_timeout;
        self.go_with_timeout(method, args, timeout)
    }

    /// [`Connection::go`] with an explicit timeout.
    pub fn go_with_timeout<A: Serialize + ?Sized>(
        &self,
        method: &str,
        args: &A,
        timeout: Option<Duration>,
    ) -> PendingCall {
        let prepared = to_arguments(args, 1)
            .map_err(|e| KiteError::send(format!("cannot serialize arguments: {e}")));
        let conn = self.0.clone();
        let method = method.to_string();
        PendingCall::spawn(async move {
            let (with_args, functions) = prepared?;
            conn.call(&method, with_args, functions, None, timeout)
                .await
        })
    }

    /// Closes the connection: queued messages are flushed, then the session is closed
    /// (`c[3000,"Go away!"]` on accepted sessions). Pending calls fail with `disconnect`.
    /// Idempotent.
    pub async fn close(&self) {
        self.0.close().await
    }
}

/// A call started with `go`: await it for the response.
pub struct PendingCall {
    rx: tokio::task::JoinHandle<Result<Response, KiteError>>,
}

impl PendingCall {
    pub(crate) fn spawn(
        fut: impl Future<Output = Result<Response, KiteError>> + Send + 'static,
    ) -> Self {
        PendingCall {
            rx: tokio::spawn(fut),
        }
    }
}

impl Future for PendingCall {
    type Output = Result<Response, KiteError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(KiteError::disconnect())))
    }
}

impl fmt::Debug for PendingCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PendingCall")
    }
}

impl ConnShared {
    pub(crate) fn weak(self: &Arc<Self>) -> Weak<ConnShared> {
        Arc::downgrade(self)
    }

    fn cached_auth(&self) -> Option<Arc<CachedAuth>> {
        match self.auth.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) async fn close(&self) {
        if self.is_closed.load(Ordering::Acquire) {
            return;
        }
        // Bounded: a peer that stopped reading must not hold up the close.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.sender.close(3000, "Go away!")).await;
        self.finish();
    }

    /// Stops accepting new requests (graceful shutdown); in-flight handlers go on and
    /// responses to their calls are still delivered.
    pub(crate) fn stop_reading(&self) {
        self.is_stopping.store(true, Ordering::Release);
    }

    /// Waits until no handler runs on this connection, or `deadline` passes.
    pub(crate) async fn drain(&self, deadline: tokio::time::Instant) {
        let n = self.limits.max_concurrent_handlers.max(1) as u32;
        let _ = tokio::time::timeout_at(deadline, self.permits.acquire_many(n)).await;
    }

    /// Ends the connection: pending calls complete with `disconnect`, callbacks are freed.
    fn finish(&self) {
        if self.is_closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.closed.cancel();
        // Dropping the response senders completes every pending call with `disconnect`;
        // dropping user functions breaks reference cycles through their closures.
        let entries = std::mem::take(&mut *lock(&self.table));
        drop(entries);
    }

    async fn call(
        self: &Arc<Self>,
        method: &str,
        with_args: Vec<Value>,
        functions: Vec<Function>,
        fields: Option<EnvelopeFields>,
        timeout: Option<Duration>,
    ) -> Result<Response, KiteError> {
        if self.is_closed.load(Ordering::Acquire) {
            return Err(KiteError::send("can't send, connection is closed"));
        }
        // Taken once; the sweeper frees the response callback at this instant.
        let deadline = timeout.and_then(|d| Instant::now().checked_add(d));
        if deadline.is_some() && !self.sweeper.is_started() {
            self.start_sweeper();
        }
        let (tx, rx) = oneshot::channel();
        // The response callback's id (unused here: the sweeper frees it at the deadline).
        let _response_id = self
            .send_call(method, with_args, tx, functions, fields.as_ref(), deadline)
            .await?;
        let Ok(outcome) = rx.await else {
            // The response callback was dropped: by the sweeper at the deadline, or when
            // the connection ended.
            return Err(match (timeout, deadline) {
                (Some(d), Some(at)) if Instant::now() >= at => KiteError::timeout(method, d),
                _ => KiteError::disconnect(),
            });
        };
        Ok(Response::new(outcome?, self.weak()))
    }

    /// Spawns the connection's deadline sweeper unless it runs already. It holds the
    /// connection weakly and ends with it.
    #[cold]
    fn start_sweeper(self: &Arc<Self>) {
        if let Some(running) = self.sweeper.start() {
            let conn = self.weak();
            tokio::spawn(deadlines::run(running, self.closed.clone(), move |now| {
                let conn = conn.upgrade()?;
                let (expired, next) = lock(&conn.table).expire(now);
                // Their calls fail with `timeout`.
                drop(expired);
                Some(next)
            }));
        }
    }

    /// Records `deadline` for the pending call `id` (table locked), waking the sweeper if
    /// it is the earliest.
    #[inline]
    fn track_deadline(&self, table: &mut Table, id: u64, deadline: Option<Instant>) {
        if let Some(at) = deadline {
            if table.add_deadline(id, at) {
                self.sweeper.wake();
            }
        }
    }

    /// Sends one message whose `arguments` may contain local-function markers indexing
    /// `locals`.
    pub(crate) async fn send_message(
        &self,
        method: Method,
        arguments: Vec<Value>,
        locals: Vec<LocalCallback>,
    ) -> Result<(), KiteError> {
        if self.is_closed.load(Ordering::Acquire) {
            return Err(KiteError::send("can't send, connection is closed"));
        }
        let mut arguments = Value::Array(arguments);
        let (callbacks, registered) = {
            let mut table = lock(&self.table);
            let scrubbed = dnode::scrub(&mut arguments, &mut table.next_id);
            self.register(&mut table, scrubbed, locals)?
        };
        let text = Message::new(method, arguments, callbacks).encode();
        if self.sender.send(text).await.is_err() {
            self.unregister(&registered);
            return Err(KiteError::send("can't send, session is closed"));
        }
        Ok(())
    }

    /// Sends a call of `method` in one pass (no options tree): the cached identity and
    /// credential JSON are spliced into the message, with `fields` (extra options keys) if
    /// any. `response` gets the outcome; function markers in `with_args` are numbered from
    /// 1 (0 is the response callback): marker `n` is `functions[n - 1]`. Returns the
    /// response callback's id.
    async fn send_call(
        &self,
        method: &str,
        with_args: Vec<Value>,
        response: oneshot::Sender<Result<Value, KiteError>>,
        functions: Vec<Function>,
        fields: Option<&EnvelopeFields>,
        deadline: Option<Instant>,
    ) -> Result<u64, KiteError> {
        if self.is_closed.load(Ordering::Acquire) {
            return Err(KiteError::send("can't send, connection is closed"));
        }
        let mut with_args = Value::Array(with_args);
        let (response_id, callbacks, registered) = {
            let mut table = lock(&self.table);
            if table.pending >= self.limits.max_pending_calls {
                return Err(KiteError::send(format!(
                    "can't send, too many pending calls ({})",
                    self.limits.max_pending_calls
                )));
            }
            // The response callback first (lowest id, as with the sorted options tree).
            let response_id = table.next_id;
            table.next_id += 1;
            let found = dnode::scrub(&mut with_args, &mut table.next_id);
            if found.is_empty() {
                // The usual call: no functions in the arguments.
                table.pending += 1;
                table
                    .entries
                    .insert(response_id, LocalCallback::Response(response));
                self.track_deadline(&mut table, response_id, deadline);
                (response_id, None, Vec::new())
            } else {
                let mut scrubbed = Vec::with_capacity(found.len() + 1);
                scrubbed.push(dnode::ScrubbedFunction {
                    id: response_id,
                    marker: 0,
                    path: vec![
                        dnode::PathElement::Index(0),
                        dnode::PathElement::Key("responseCallback".to_string()),
                    ],
                });
                for mut s in found {
                    s.path.splice(
                        0..0,
                        [
                            dnode::PathElement::Index(0),
                            dnode::PathElement::Key("withArgs".to_string()),
                        ],
                    );
                    scrubbed.push(s);
                }
                let mut locals = Vec::with_capacity(functions.len() + 1);
                locals.push(LocalCallback::Response(response));
                locals.extend(functions.into_iter().map(LocalCallback::User));
                let (callbacks, registered) = self.register(&mut table, scrubbed, locals)?;
                self.track_deadline(&mut table, response_id, deadline);
                (response_id, Some(callbacks), registered)
            }
        };
        let ident = self.core.cached_identity();
        let auth = self.cached_auth();
        let callbacks = match &callbacks {
            None => envelope::CallCallbacks::Response(response_id),
            Some(callbacks) => envelope::CallCallbacks::List(callbacks),
        };
        let none = EnvelopeFields::new();
        let fields = fields.unwrap_or(&none);
        let text = if self.escaped {
            Encoded::Escaped(envelope::encode_call_message_with_fields_escaped(
                method,
                &ident.escaped,
                auth.as_deref().map(|a| &a.escaped),
                &with_args,
                callbacks,
                fields,
            ))
        } else {
            Encoded::Plain(envelope::encode_call_message_with_fields(
                method,
                &ident.json,
                auth.as_deref().map(|a| &*a.json),
                &with_args,
                callbacks,
                fields,
            ))
        };
        if self.send_encoded(text).await.is_err() {
            self.unregister(&registered);
            lock(&self.table).remove(response_id);
            return Err(KiteError::send("can't send, session is closed"));
        }
        Ok(response_id)
    }

    /// Registers the local callbacks of an outgoing message in `table`: `scrubbed` (in id
    /// order) index `locals`. Returns the message's `callbacks` and the registered ids.
    fn register(
        &self,
        table: &mut Table,
        scrubbed: Vec<dnode::ScrubbedFunction>,
        locals: Vec<LocalCallback>,
    ) -> Result<(Callbacks, Vec<u64>), KiteError> {
        let mut locals: Vec<Option<LocalCallback>> = locals.into_iter().map(Some).collect();
        let mut callbacks = Callbacks::new();
        let mut registered = Vec::with_capacity(scrubbed.len());
        {
            for s in scrubbed {
                let cb = match locals.get_mut(s.marker) {
                    Some(slot @ Some(LocalCallback::Response(_))) => slot.take(),
                    Some(Some(LocalCallback::User(f))) => Some(LocalCallback::User(f.clone())),
                    _ => None,
                };
                let Some(cb) = cb else {
                    // A marker without a function (forged or repeated): "[Function]"
                    // without a callback entry.
                    continue;
                };
                let id = s.id;
                match &cb {
                    LocalCallback::Response(_) => {
                        if table.pending >= self.limits.max_pending_calls {
                            for id in registered {
                                table.remove(id);
                            }
                            return Err(KiteError::send(format!(
                                "can't send, too many pending calls ({})",
                                self.limits.max_pending_calls
                            )));
                        }
                        table.pending += 1;
                    }
                    LocalCallback::User(_) => {
                        table.user_order.push_back(id);
                        while table.user_order.len() > self.limits.max_callbacks.max(1) {
                            if let Some(old) = table.user_order.pop_front() {
                                debug!(id = old, "forgetting the oldest callback (limit reached)");
                                table.entries.remove(&old);
                            }
                        }
                    }
                }
                table.entries.insert(id, cb);
                registered.push(id);
                callbacks.push(id, s.path);
            }
        }
        Ok((callbacks, registered))
    }

    fn unregister(&self, ids: &[u64]) {
        let mut table = lock(&self.table);
        for id in ids {
            table.remove(*id);
        }
    }

    /// Decodes and routes one incoming message without awaiting: responses are delivered
    /// here; anything that has to wait is returned as a boxed future, so the read loop's
    /// own future stays small while the connection is idle.
    fn dispatch(self: &Arc<Self>, message: Received, known: &mut KnownTexts) -> Next {
        // Where an escaped message that the escaped reader does not take is unescaped.
        let mut scratch = String::new();
        let decoded = match &message {
            Received::Text(text) => incoming::decode(text, &self.limits.protocol),
            Received::Escaped(escaped) => incoming::decode_escaped_known(
                escaped.as_str(),
                &mut scratch,
                &self.limits.protocol,
                incoming::Known {
                    kite: known.kite.as_deref(),
                    authentication: known.authentication.as_deref(),
                },
            ),
        };
        match decoded {
            Ok(incoming::Incoming::Callback(cb)) => self.dispatch_callback(cb),
            // By reference: the decoded values are large, and moving them costs copies.
            Ok(incoming::Incoming::Call(mut call)) => self.dispatch_call(&mut call, known),
            Err(e) => {
                debug!(session = self.info.id(), "dropping message: {e}");
                Next::Done
            }
        }
    }

    fn log_report(&self, report: &dnode::UnscrubReport) {
        if report.invalid > 0 {
            debug!(
                session = self.info.id(),
                invalid = report.invalid,
                "ignored unusable callback paths"
            );
        }
    }

    fn dispatch_callback(self: &Arc<Self>, cb: incoming::IncomingCallback<'_>) -> Next {
        let id = cb.id;
        let local = {
            let mut table = lock(&self.table);
            match table.entries.get(&id) {
                Some(LocalCallback::User(f)) => Some(LocalCallback::User(f.clone())),
                Some(LocalCallback::Response(_)) => table.remove(id),
                None => None,
            }
        };
        match local {
            None => {
                debug!(session = self.info.id(), id, "unknown callback id");
                Next::Done
            }
            Some(LocalCallback::Response(tx)) => {
                let outcome = match cb.response() {
                    Ok((outcome, report)) => {
                        self.log_report(&report);
                        outcome
                    }
                    Err(e) => {
                        debug!(session = self.info.id(), id, "malformed response: {e}");
                        Err(KiteError::invalid_response(format!(
                            "malformed response: {e}"
                        )))
                    }
                };
                let _ = tx.send(outcome);
                Next::Done
            }
            Some(LocalCallback::User(f)) => {
                let arguments = match cb.arguments() {
                    Ok((arguments, report)) => {
                        self.log_report(&report);
                        arguments
                    }
                    Err(e) => {
                        debug!(session = self.info.id(), "dropping message: {e}");
                        return Next::Done;
                    }
                };
                let args = Args::new(arguments, self.weak());
                let session = self.info.id().to_string();
                Next::Inline(Box::pin(async move {
                    if AssertUnwindSafe(f.invoke(args))
                        .catch_unwind()
                        .await
                        .is_err()
                    {
                        warn!(session, id, "callback panicked");
                    }
                }))
            }
        }
    }

    /// An inline reply with an error (no handler runs).
    fn reply_error(self: &Arc<Self>, rc: u64, e: KiteError) -> Next {
        let conn = self.clone();
        Next::Inline(Box::pin(async move {
            conn.reply(rc, Err(e), Vec::new()).await;
        }))
    }

    fn dispatch_call(
        self: &Arc<Self>,
        call: &mut incoming::IncomingCall<'_>,
        known: &mut KnownTexts,
    ) -> Next {
        self.log_report(&call.report);
        if self.is_stopping.load(Ordering::Acquire) {
            // Shutting down: responses and callbacks are still read (in-flight handlers
            // may wait for them), new requests are refused.
            return match call.response_callback() {
                Some(rc) => self.reply_error(rc, KiteError::generic("kite is shutting down")),
                None => Next::Done,
            };
        }
        let Some(entry) = self.core.method(&call.method) else {
            let Some(rc) = call.response_callback() else {
                debug!(session = self.info.id(), method = %call.method, "unknown method, no callback");
                return Next::Done;
            };
            return self.reply_error(rc, KiteError::method_not_found(&call.method));
        };
        let request = match &mut call.request {
            Ok(r) => self.own_request(r, call.kite_text, call.authentication_text, known),
            Err(e) => {
                return match e.response_callback {
                    Some(rc) => self.reply_error(rc, e.to_kite_error()),
                    None => Next::Done,
                }
            }
        };
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Next::Handler(Box::pin(serve_request(
                self.clone(),
                entry,
                request,
                permit,
            ))),
            Err(tokio::sync::TryAcquireError::Closed) => Next::Done,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                // At the bound: stop reading until a handler finishes.
                let conn = self.clone();
                Next::Inline(Box::pin(async move {
                    let permit = tokio::select! {
                        p = conn.permits.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => return,
                        },
                        _ = conn.closed.cancelled() => return,
                    };
                    tokio::spawn(serve_request(conn.clone(), entry, request, permit));
                }))
            }
        }
    }

    /// Takes ownership of a decoded request, reusing the identity and credentials of the
    /// previous request when they are the same.
    fn own_request(
        &self,
        r: &mut incoming::RequestRef<'_>,
        text: incoming::KiteText<'_>,
        auth_text: incoming::KiteText<'_>,
        known: &mut KnownTexts,
    ) -> Incoming {
        let mut last = lock(&self.last_caller);
        let caller = match (&last.kite, text) {
            // The bytes of `known`, which were read as `last.kite`.
            (Some(k), incoming::KiteText::Repeated) => k.clone(),
            (Some(k), text) if r.kite.matches(k) => {
                let k = k.clone();
                if let incoming::KiteText::Read(text) = text {
                    if known.kite.as_deref() != Some(text) {
                        known.kite = Some(text.into());
                    }
                }
                k
            }
            _ => {
                let k = Arc::new(r.kite.to_kite());
                last.kite = Some(k.clone());
                known.kite = None;
                last.authenticated = None;
                k
            }
        };
        let auth = match auth_text {
            // The bytes of `known.authentication`, which were read as `last.auth`.
            incoming::KiteText::Repeated => last.auth.clone(),
            text => r.authentication.take().map(|a| match &last.auth {
                Some(cached) if cached.kind == a.kind && cached.key == a.key => {
                    // Brought again: its text is worth keeping to pass it over next time.
                    if let incoming::KiteText::Read(text) = text {
                        if known.authentication.as_deref() != Some(text) {
                            known.authentication = Some(text.into());
                        }
                    }
                    cached.clone()
                }
                _ => {
                    let fresh = Arc::new(Auth::new(a.kind, a.key));
                    last.auth = Some(fresh.clone());
                    known.authentication = None;
                    fresh
                }
            }),
        };
        Incoming {
            caller,
            auth,
            with_args: std::mem::take(&mut r.with_args),
            response_callback: r.response_callback,
            fields: std::mem::take(&mut r.fields),
        }
    }

    /// The authenticated caller, if the connection's last successful authentication was of
    /// this very credential and may still be reused: same authenticator and local identity
    /// (`Core::auth_epoch`), the authenticator's epoch unchanged, its window holding now.
    fn reused_authentication(
        &self,
        auth: &Arc<Auth>,
        caller: &Arc<KiteIdentity>,
    ) -> Option<Arc<KiteIdentity>> {
        let mut last = lock(&self.last_caller);
        let LastCaller {
            kite,
            authenticated,
            reuse,
            ..
        } = &mut *last;
        let reuse = reuse.as_ref()?;
        let holds = Arc::ptr_eq(&reuse.auth, auth)
            && reuse.core_epoch == self.core.auth_epoch()
            && reuse.epoch == reuse.authenticator.epoch()
            && reuse.validity.holds_at(SystemTime::now());
        holds.then(|| authenticated_caller(kite, authenticated, caller, &reuse.username))
    }

    /// Authenticates `auth` with the authenticator in force; remembers the success for
    /// [`Self::reused_authentication`] if the authenticator allows it.
    async fn authenticate(
        &self,
        auth: &Arc<Auth>,
        caller: &Arc<KiteIdentity>,
    ) -> Result<Arc<KiteIdentity>, KiteError> {
        // Epochs first: whatever changes after this point invalidates the result's reuse.
        let core_epoch = self.core.auth_epoch();
        let authenticator = self.core.authenticator();
        let epoch = authenticator.epoch();
        let ident = self.core.cached_identity();
        let result = authenticator.authenticate(auth, &ident.kite).await;
        let validity = match &result {
            Ok(_) => authenticator.reuse_for(auth, &ident.kite),
            Err(_) => None,
        };
        let mut last = lock(&self.last_caller);
        let username = match result {
            Ok(username) => username,
            Err(e) => {
                last.reuse = None;
                return Err(e);
            }
        };
        let LastCaller {
            kite,
            authenticated,
            reuse,
            ..
        } = &mut *last;
        let caller = authenticated_caller(kite, authenticated, caller, &username);
        *reuse = validity.map(|validity| {
            Box::new(Reuse {
                auth: auth.clone(),
                username: username.into_boxed_str(),
                authenticator,
                epoch,
                core_epoch,
                validity,
            })
        });
        Ok(caller)
    }

    /// Sends the response to the caller's callback `callback`.
    async fn reply(
        &self,
        callback: u64,
        result: Result<Value, KiteError>,
        functions: Vec<Function>,
    ) {
        // Encoded by a plain function that takes `result`: nothing of it stays in this
        // future's state across the await below.
        let Some((text, registered)) = self.encode_reply(callback, result, functions) else {
            return;
        };
        if self.send_encoded(text).await.is_err() {
            self.unregister(&registered);
            debug!(
                session = self.info.id(),
                "cannot send response: session is closed"
            );
        }
    }

    /// The text of a response and the ids of the functions it registered; `None` if it
    /// cannot be sent (logged).
    fn encode_reply(
        &self,
        callback: u64,
        result: Result<Value, KiteError>,
        functions: Vec<Function>,
    ) -> Option<(Encoded, Vec<u64>)> {
        let response = |outcome: Result<&Value, &KiteError>, callbacks: &Callbacks| {
            if self.escaped {
                Encoded::Escaped(envelope::encode_response_message_escaped(
                    callback, outcome, callbacks,
                ))
            } else {
                Encoded::Plain(envelope::encode_response_message(
                    callback, outcome, callbacks,
                ))
            }
        };
        let (text, registered) = match result {
            Err(e) => (response(Err(&e), &Callbacks::new()), Vec::new()),
            Ok(mut value) if functions.is_empty() => {
                // No local function can be sent: markers (forged ones included) become
                // "[Function]" without a callback entry; no table access needed.
                if matches!(&value, Value::String(s) if dnode::parse_function_marker(s).is_some()) {
                    value = Value::String(dnode::FUNCTION_PLACEHOLDER.to_string());
                } else {
                    let mut unused = 0;
                    let _ = dnode::scrub(&mut value, &mut unused);
                }
                (response(Ok(&value), &Callbacks::new()), Vec::new())
            }
            Ok(value) => {
                let locals = functions.into_iter().map(LocalCallback::User).collect();
                // Wrapped so that a result that is itself a function is scrubbed too.
                let mut wrapped = Value::Array(vec![value]);
                let registered = {
                    let mut table = lock(&self.table);
                    let mut scrubbed = dnode::scrub(&mut wrapped, &mut table.next_id);
                    for s in &mut scrubbed {
                        // [0, ...] → [0, "result", ...]
                        s.path
                            .insert(1, dnode::PathElement::Key("result".to_string()));
                    }
                    self.register(&mut table, scrubbed, locals)
                };
                let value = match wrapped {
                    Value::Array(mut a) => a.pop().unwrap_or(Value::Null),
                    other => other,
                };
                match registered {
                    Ok((callbacks, registered)) => (response(Ok(&value), &callbacks), registered),
                    Err(e) => {
                        debug!(session = self.info.id(), "cannot send response: {e}");
                        return None;
                    }
                }
            }
        };
        Some((text, registered))
    }
}

/// An outgoing message, encoded in the form its session's transport carries.
enum Encoded {
    /// The dnode JSON text.
    Plain(String),
    /// Escaped for a SockJS frame ([`SessionSender::send_escaped`]).
    Escaped(Escaped),
}

impl ConnShared {
    async fn send_encoded(&self, message: Encoded) -> Result<(), SendError> {
        match message {
            Encoded::Plain(text) => self.sender.send(text).await,
            Encoded::Escaped(text) => self.sender.send_escaped(text).await,
        }
    }
}

/// The texts of the identity and credential objects the peer's requests repeat:
/// [`LastCaller::kite`] and [`LastCaller::auth`] as their objects are written in the
/// escaped form of a SockJS frame, once a second request has brought them. Requests that
/// repeat these bytes are not read again ([`incoming::decode_escaped_known`]). Kept by the
/// read loop, the only one to decode; empty after one request alone, so that idle
/// connections do not hold them.
#[derive(Default)]
struct KnownTexts {
    kite: Option<Box<str>>,
    authentication: Option<Box<str>>,
}

/// A boxed future the read loop runs.
type BoxedTask = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the read loop does after [`ConnShared::dispatch`].
enum Next {
    /// Nothing more (a response delivered, a message dropped).
    Done,
    /// Await this before reading on (user callbacks in arrival order, error replies,
    /// waiting for a handler permit).
    Inline(BoxedTask),
    /// A request handler: polled once right here (most handlers finish at once, so no task
    /// is spawned for them); if it has to wait, it goes on as its own task so that it
    /// never holds up the read loop.
    Handler(BoxedTask),
}

async fn read_loop(conn: Arc<ConnShared>, mut rx: SessionReceiver) {
    conn.core.connection_opened(&conn);
    // Created once: the token's future registers its waker once, and is polled only
    // while no message is ready.
    let closed = conn.closed.cancelled();
    tokio::pin!(closed);
    let mut known = KnownTexts::default();
    loop {
        if conn.is_closed.load(Ordering::Acquire) {
            break;
        }
        let msg = tokio::select! {
            biased;
            m = rx.recv_message() => m,
            _ = &mut closed => break,
        };
        let Some(message) = msg else { break };
        match conn.dispatch(message, &mut known) {
            Next::Done => {}
            Next::Handler(mut handler) => {
                let pending = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(handler.as_mut().poll(cx).is_pending())
                })
                .await;
                if pending {
                    tokio::spawn(handler);
                }
            }
            Next::Inline(task) => {
                tokio::select! {
                    biased;
                    _ = &mut closed => break,
                    _ = task => {}
                }
            }
        }
    }
    rx.close();
    conn.finish();
    conn.core.connection_closed(&conn);
}

/// Runs one request's handler and replies. A plain function returning an `async move`
/// block (not an `async fn`): the block works on its captured values in place, where an
/// `async fn` keeps its arguments and their moved copies side by side in the future that
/// is boxed for every request.
fn serve_request(
    conn: Arc<ConnShared>,
    entry: Arc<MethodEntry>,
    incoming: Incoming,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static {
    let Incoming {
        caller,
        auth,
        with_args,
        response_callback: rc,
        fields,
    } = incoming;
    async move {
        // Held until the reply is sent.
        let _permit = permit;
        let mut caller = caller;
        let accepted = conn.info.role() == Role::Accepted;
        if accepted && conn.remote.get().is_none() {
            let _ = conn.remote.set(caller.clone());
        }
        let id = RequestId::new();
        let config = conn.core.config();
        if accepted && !config.disable_authentication && entry.requires_auth() {
            let result = match &auth {
                None => Err(KiteError::authentication(
                    "No authentication information is provided",
                )),
                Some(a) => match conn.reused_authentication(a, &caller) {
                    Some(authenticated) => Ok(authenticated),
                    None => conn.authenticate(a, &caller).await,
                },
            };
            match result {
                Ok(authenticated) => caller = authenticated,
                Err(e) => {
                    if let Some(rc) = rc {
                        conn.reply(rc, Err(e.with_id(id.as_str())), Vec::new())
                            .await;
                    }
                    return;
                }
            }
        }
        if let Some(bucket) = entry.bucket() {
            if !bucket.try_take() {
                if let Some(rc) = rc {
                    conn.reply(
                        rc,
                        Err(KiteError::request_limit().with_id(id.as_str())),
                        Vec::new(),
                    )
                    .await;
                }
                return;
            }
        }
        let request = Request(Arc::new(RequestInner {
            id,
            method: entry.name.clone(),
            caller,
            auth,
            args: Args::new(with_args, conn.weak()),
            connection: Connection(conn.clone()),
            fields,
            cancel: OnceLock::new(),
        }));
        let hooks = conn.core.hooks();
        let run = async {
            for pre in &hooks.pre {
                pre(&request)?;
            }
            // A panic while creating or running the handler's future is caught here.
            let fut = match entry.direct() {
                Some(direct) => {
                    std::panic::catch_unwind(AssertUnwindSafe(|| direct(request.clone())))
                }
                None => {
                    let mut svc = entry.service();
                    let svc = svc.ready().await?;
                    std::panic::catch_unwind(AssertUnwindSafe(|| svc.call(request.clone())))
                }
            };
            match fut {
                Ok(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
                    Ok(r) => r,
                    Err(p) => Err(panic_error(p)),
                },
                Err(p) => Err(panic_error(p)),
            }
        };
        let (mut result, functions) = with_reply_scope(run).await;
        for post in &hooks.post {
            post(&request, &mut result);
        }
        let result = result.map_err(|e| {
            if e.id.is_empty() {
                e.with_id(id.as_str())
            } else {
                e
            }
        });
        if hooks.finals.is_empty() {
            if let Some(rc) = rc {
                conn.reply(rc, result, functions).await;
            }
            return;
        }
        if let Some(rc) = rc {
            conn.reply(rc, result.clone(), functions).await;
        }
        for f in &hooks.finals {
            f(&request, &result);
        }
    }
}

fn panic_error(p: Box<dyn std::any::Any + Send>) -> KiteError {
    let text = if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "handler panicked".to_string()
    };
    warn!("handler panicked: {text}");
    KiteError::generic(text)
}

#[cfg(test)]
mod table_tests {
    use super::*;
    use tokio::sync::oneshot::error::TryRecvError;

    type Rx = oneshot::Receiver<Result<Value, KiteError>>;

    /// Registers a call's response callback as `send_call` does, with deadline `at`.
    fn call(table: &mut Table, at: Instant) -> (u64, Rx) {
        let (tx, rx) = oneshot::channel();
        let id = table.next_id;
        table.next_id += 1;
        table.pending += 1;
        table.entries.insert(id, LocalCallback::Response(tx));
        table.add_deadline(id, at);
        (id, rx)
    }

    #[test]
    fn expire_frees_only_the_calls_still_pending() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let mut table = Table::default();
        let (a, mut ra) = call(&mut table, t + s);
        let (b, _rb) = call(&mut table, t + s);
        let (c, mut rc) = call(&mut table, t + 10 * s);
        // `b` was answered.
        assert!(table.remove(b).is_some());
        assert_eq!(table.pending, 2);
        let (expired, next) = table.expire(t + s);
        assert_eq!(expired.len(), 1);
        assert_eq!(next, Some(t + 10 * s));
        assert_eq!(table.pending, 1);
        assert!(!table.entries.contains_key(&a));
        assert!(table.entries.contains_key(&c));
        assert_eq!(ra.try_recv().err(), Some(TryRecvError::Empty));
        drop(expired);
        assert_eq!(ra.try_recv().err(), Some(TryRecvError::Closed));
        assert_eq!(rc.try_recv().err(), Some(TryRecvError::Empty));
        let (expired, next) = table.expire(t + 10 * s);
        assert_eq!((expired.len(), next, table.pending), (1, None, 0));
    }

    #[test]
    fn heap_stays_small_at_a_high_call_rate() {
        // 200 000 calls/s for 2 s with a 60 s timeout, 64 in flight, answered in order:
        // the deadlines held stay within 2 × pending + 64, not 400 000.
        let t = Instant::now();
        let mut table = Table::default();
        let mut in_flight = VecDeque::new();
        let mut most = 0;
        for n in 0..400_000u64 {
            if in_flight.len() == 64 {
                let id = in_flight.pop_front().unwrap_or_default();
                assert!(table.remove(id).is_some());
            }
            let at = t + Duration::from_secs(60) + Duration::from_micros(n * 5);
            let (id, _rx) = call(&mut table, at);
            in_flight.push_back(id);
            assert!(table.deadlines.len() <= 2 * table.pending + 64);
            most = most.max(table.deadlines.len());
        }
        assert!(most <= 2 * 64 + 64, "{most}");
        // Every call still pending keeps its deadline.
        let (expired, _) = table.expire(t + Duration::from_secs(3600));
        assert_eq!(expired.len(), 64);
        assert_eq!(table.pending, 0);
    }
}
