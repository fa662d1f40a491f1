//! The connection engine: one dnode peer over one session, symmetric for both directions.
//!
//! A [`Connection`] reads its session on one task (the read loop). Incoming named-method
//! requests are handled concurrently, each on its own task, but at most
//! [`Limits::max_concurrent_handlers`](crate::Limits::max_concurrent_handlers) at a time: at
//! the bound the read loop stops reading until a handler finishes. Incoming callback
//! invocations (responses included) run on the read loop itself, one at a time, in arrival
//! order, as in Go (PROTOCOL.md 3.5). Outgoing messages go through the session's bounded
//! queue in call order.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};
use tracing::{debug, warn};

use crate::args::{to_arguments, Args, Response};
use crate::callback::Function;
use crate::error::KiteError;
use crate::handler::{with_reply_scope, MethodEntry};
use crate::kite::Core;
use crate::protocol::Kite as KiteIdentity;
use crate::request::{Auth, Request, RequestInner};
use crate::settings::Limits;
use kite_protocol::dnode::{self, Callbacks, Message, Method};
use kite_protocol::envelope;
use kite_sockjs::session::{Role, Session, SessionInfo, SessionReceiver, SessionSender};

/// A local callback registered on a connection.
pub(crate) enum LocalCallback {
    /// A user function; kept for the connection's lifetime (bounded, oldest evicted).
    User(Function),
    /// The response callback of one of our calls; freed after its first invocation or the
    /// call's timeout (Q3).
    Response(oneshot::Sender<Vec<Value>>),
}

#[derive(Default)]
struct Table {
    /// Next callback id (never reused on a connection).
    next_id: u64,
    entries: HashMap<u64, LocalCallback>,
    user_order: VecDeque<u64>,
    pending: usize,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<LocalCallback> {
        let e = self.entries.remove(&id);
        if let Some(LocalCallback::Response(_)) = e {
            self.pending -= 1;
        }
        e
    }
}

pub(crate) struct ConnShared {
    pub(crate) core: Arc<Core>,
    pub(crate) limits: Arc<Limits>,
    sender: SessionSender,
    info: SessionInfo,
    table: Mutex<Table>,
    remote: OnceLock<KiteIdentity>,
    auth: RwLock<Option<Auth>>,
    closed: CancellationToken,
    stop_reading: CancellationToken,
    permits: Arc<Semaphore>,
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
            sender,
            info,
            table: Mutex::new(Table::default()),
            remote: OnceLock::new(),
            auth: RwLock::new(auth),
            closed: CancellationToken::new(),
            stop_reading: CancellationToken::new(),
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
        self.0.remote.get()
    }

    /// Sets the peer's identity if it is not known yet (clients built from Kontrol results
    /// know it in advance).
    pub fn set_remote_kite(&self, kite: KiteIdentity) {
        let _ = self.0.remote.set(kite);
    }

    /// The credential sent with our calls on this connection.
    pub fn auth(&self) -> Option<Auth> {
        match self.0.auth.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the credential sent with later calls.
    pub fn set_auth(&self, auth: Option<Auth>) {
        match self.0.auth.write() {
            Ok(mut g) => *g = auth,
            Err(p) => *p.into_inner() = auth,
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.0.closed.is_cancelled()
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
        self.0.call(method, with_args, functions, timeout).await
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
            conn.call(&method, with_args, functions, timeout).await
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

    pub(crate) async fn close(&self) {
        if self.closed.is_cancelled() {
            return;
        }
        // Bounded: a peer that stopped reading must not hold up the close.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.sender.close(3000, "Go away!")).await;
        self.finish();
    }

    /// Stops accepting new requests (graceful shutdown); in-flight handlers go on and
    /// responses to their calls are still delivered.
    pub(crate) fn stop_reading(&self) {
        self.stop_reading.cancel();
    }

    /// Waits until no handler runs on this connection, or `deadline` passes.
    pub(crate) async fn drain(&self, deadline: tokio::time::Instant) {
        let n = self.limits.max_concurrent_handlers.max(1) as u32;
        let _ = tokio::time::timeout_at(deadline, self.permits.acquire_many(n)).await;
    }

    /// Ends the connection: pending calls complete with `disconnect`, callbacks are freed.
    fn finish(&self) {
        if self.closed.is_cancelled() {
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
        timeout: Option<Duration>,
    ) -> Result<Response, KiteError> {
        if self.closed.is_cancelled() {
            return Err(KiteError::send("can't send, connection is closed"));
        }
        let identity = self.core.identity();
        let auth = match self.auth.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
        .map(|a| envelope::Authentication::new(a.kind, a.key));
        let arguments = envelope::encode_request(&identity, auth.as_ref(), with_args, 0);
        let (tx, rx) = oneshot::channel();
        let mut locals = Vec::with_capacity(functions.len() + 1);
        locals.push(LocalCallback::Response(tx));
        locals.extend(functions.into_iter().map(LocalCallback::User));
        let response_id = self
            .send_message_ids(Method::Name(method.to_string()), arguments, locals)
            .await?
            .ok_or_else(|| KiteError::send("response callback was not registered"))?;
        let arguments = match timeout {
            None => rx.await,
            Some(d) => match tokio::time::timeout(d, rx).await {
                Ok(r) => r,
                Err(_) => {
                    lock(&self.table).remove(response_id);
                    return Err(KiteError::timeout(method, d));
                }
            },
        };
        let Ok(arguments) = arguments else {
            return Err(KiteError::disconnect());
        };
        let value = envelope::decode_response(Value::Array(arguments))?;
        Ok(Response::new(value, self.weak()))
    }

    /// Sends one message whose `arguments` may contain local-function markers indexing
    /// `locals`.
    pub(crate) async fn send_message(
        &self,
        method: Method,
        arguments: Vec<Value>,
        locals: Vec<LocalCallback>,
    ) -> Result<(), KiteError> {
        self.send_message_ids(method, Value::Array(arguments), locals)
            .await
            .map(|_| ())
    }

    /// Like `send_message`; returns the id given to the response callback, if any.
    /// `arguments` is the message's arguments array; function markers inside index
    /// `locals`.
    async fn send_message_ids(
        &self,
        method: Method,
        mut arguments: Value,
        locals: Vec<LocalCallback>,
    ) -> Result<Option<u64>, KiteError> {
        if self.closed.is_cancelled() {
            return Err(KiteError::send("can't send, connection is closed"));
        }
        let mut locals: Vec<Option<LocalCallback>> = locals.into_iter().map(Some).collect();
        let mut callbacks = Callbacks::new();
        let mut registered = Vec::new();
        let mut response_id = None;
        {
            let mut table = lock(&self.table);
            let scrubbed = dnode::scrub(&mut arguments, &mut table.next_id);
            registered.reserve(scrubbed.len());
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
                        response_id = Some(id);
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
        let text = Message::new(method, arguments, callbacks).encode();
        if self.sender.send(text).await.is_err() {
            self.unregister(&registered);
            return Err(KiteError::send("can't send, session is closed"));
        }
        Ok(response_id)
    }

    fn unregister(&self, ids: &[u64]) {
        let mut table = lock(&self.table);
        for id in ids {
            table.remove(*id);
        }
    }

    async fn dispatch(self: &Arc<Self>, text: String) {
        let mut msg = match Message::decode(&text, &self.limits.protocol) {
            Ok(m) => m,
            Err(e) => {
                debug!(session = self.info.id(), "dropping message: {e}");
                return;
            }
        };
        drop(text);
        let report = msg.unscrub(&self.limits.protocol);
        if report.invalid > 0 {
            debug!(
                session = self.info.id(),
                invalid = report.invalid,
                "ignored unusable callback paths"
            );
        }
        match msg.method {
            Method::Callback(id) => {
                let cb = {
                    let mut table = lock(&self.table);
                    match table.entries.get(&id) {
                        Some(LocalCallback::User(f)) => Some(LocalCallback::User(f.clone())),
                        Some(LocalCallback::Response(_)) => table.remove(id),
                        None => None,
                    }
                };
                let arguments = match msg.arguments {
                    Value::Array(a) => a,
                    other => vec![other],
                };
                match cb {
                    None => debug!(session = self.info.id(), id, "unknown callback id"),
                    Some(LocalCallback::Response(tx)) => {
                        let _ = tx.send(arguments);
                    }
                    Some(LocalCallback::User(f)) => {
                        let args = Args::new(arguments, self.weak());
                        if AssertUnwindSafe(f.invoke(args))
                            .catch_unwind()
                            .await
                            .is_err()
                        {
                            warn!(session = self.info.id(), id, "callback panicked");
                        }
                    }
                }
            }
            Method::Name(name) => {
                if self.stop_reading.is_cancelled() {
                    // Shutting down: responses and callbacks are still read (in-flight
                    // handlers may wait for them), new requests are refused.
                    if let Some(rc) = envelope::response_callback_of(&msg.arguments) {
                        let e = KiteError::generic("kite is shutting down");
                        self.reply(rc, Err(e), Vec::new()).await;
                    }
                    return;
                }
                let Some(entry) = self.core.method(&name) else {
                    if let Some(rc) = envelope::response_callback_of(&msg.arguments) {
                        self.reply(rc, Err(KiteError::method_not_found(&name)), Vec::new())
                            .await;
                    } else {
                        debug!(session = self.info.id(), method = %name, "unknown method, no callback");
                    }
                    return;
                };
                let permit = tokio::select! {
                    p = self.permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    _ = self.closed.cancelled() => return,
                };
                tokio::spawn(serve_request(
                    self.clone(),
                    entry,
                    name,
                    msg.arguments,
                    permit,
                ));
            }
        }
    }

    async fn reply(
        &self,
        callback: u64,
        result: Result<Value, KiteError>,
        functions: Vec<Function>,
    ) {
        let arg = envelope::encode_response(result);
        let locals = functions.into_iter().map(LocalCallback::User).collect();
        if let Err(e) = self
            .send_message(Method::Callback(callback), vec![arg], locals)
            .await
        {
            debug!(session = self.info.id(), "cannot send response: {e}");
        }
    }
}

async fn read_loop(conn: Arc<ConnShared>, mut rx: SessionReceiver) {
    conn.core.connection_opened(&conn);
    loop {
        let msg = tokio::select! {
            biased;
            _ = conn.closed.cancelled() => break,
            m = rx.recv() => m,
        };
        let Some(text) = msg else { break };
        tokio::select! {
            biased;
            _ = conn.closed.cancelled() => break,
            _ = conn.dispatch(text) => {}
        }
    }
    rx.close();
    conn.finish();
    conn.core.connection_closed(&conn);
}

fn request_id() -> String {
    let bytes: [u8; 8] = rand::random();
    hex::encode(bytes)
}

async fn serve_request(
    conn: Arc<ConnShared>,
    entry: Arc<MethodEntry>,
    method: String,
    arguments: Value,
    _permit: OwnedSemaphorePermit,
) {
    let opts = match envelope::Request::from_arguments(arguments) {
        Ok(o) => o,
        Err(e) => {
            if let Some(rc) = e.response_callback {
                conn.reply(rc, Err(e.to_kite_error()), Vec::new()).await;
            }
            return;
        }
    };
    let rc = opts.response_callback;
    let mut caller: KiteIdentity = opts.kite;
    let auth: Option<Auth> = opts.authentication.map(|a| Auth::new(a.kind, a.key));
    let accepted = conn.info.role() == Role::Accepted;
    if accepted && conn.remote.get().is_none() {
        let _ = conn.remote.set(caller.clone());
    }
    let id = request_id();
    let config = conn.core.config();
    let username = if accepted && !config.disable_authentication && entry.requires_auth() {
        let result = match &auth {
            None => Err(KiteError::authentication(
                "No authentication information is provided",
            )),
            Some(a) => conn.core.authenticate(a, &conn.core.identity()).await,
        };
        match result {
            Ok(u) => u,
            Err(e) => {
                if let Some(rc) = rc {
                    conn.reply(rc, Err(e.with_id(id)), Vec::new()).await;
                }
                return;
            }
        }
    } else {
        caller.username.clone()
    };
    caller.username = username.clone();
    if let Some(bucket) = entry.bucket() {
        if !bucket.try_take() {
            if let Some(rc) = rc {
                conn.reply(rc, Err(KiteError::request_limit().with_id(id)), Vec::new())
                    .await;
            }
            return;
        }
    }
    let request = Request(Arc::new(RequestInner {
        id: id.clone(),
        method,
        username,
        caller,
        auth,
        args: Args::new(opts.with_args, conn.weak()),
        connection: Connection(conn.clone()),
    }));
    let hooks = conn.core.hooks();
    let run = async {
        for pre in &hooks.pre {
            pre(&request)?;
        }
        let mut svc = entry.service();
        let svc = svc.ready().await?;
        // A panic while creating or running the handler's future is caught here.
        let fut = std::panic::catch_unwind(AssertUnwindSafe(|| svc.call(request.clone())));
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
    let result = result.map_err(|e| if e.id.is_empty() { e.with_id(&id) } else { e });
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
