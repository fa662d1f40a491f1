//! Clients: dialing other kites and calling their methods (PROTOCOL.md 9).
//!
//! A [`Client`] is created unconnected for a base URL by [`Kite::new_client`](crate::Kite::new_client).
//! [`Client::dial`] makes one attempt; [`Client::dial_forever`] keeps trying with
//! exponential back-off (0.5 s × 1.5 ± 50 % jitter, capped at
//! [`Limits::max_backoff`](crate::Limits::max_backoff), per client) and reconnects after
//! every drop with a fresh session. Calls made while not connected fail at once with
//! `sendError`; when the link drops every pending call completes with `disconnect`.
//!
//! The local kite's methods are served on the dialed connection too (connections are
//! symmetric); requests arriving there are trusted without authentication (6.7).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::args::Response;
use crate::connection::{Connection, PendingCall};
use crate::error::KiteError;
use crate::kite::Core;
use crate::protocol::Kite as KiteIdentity;
use crate::request::Auth;
use kite_sockjs::session::Session;

/// Opens sessions to a kite URL. The default connector dials SockJS (WebSocket or XHR
/// polling per the configured transport); tests and tunnels may provide their own.
pub trait Connector: Send + Sync + 'static {
    /// Opens one session to `url`.
    fn connect<'a>(
        &'a self,
        url: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Session, KiteError>> + Send + 'a>>;
}

type Hook = Arc<dyn Fn() + Send + Sync>;
type ConnHook = Arc<dyn Fn(&Connection) + Send + Sync>;
type TokenHook = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
struct ClientHooks {
    on_connect: Vec<ConnHook>,
    on_disconnect: Vec<Hook>,
    on_token_expire: Vec<Hook>,
    on_token_renew: Vec<TokenHook>,
}

struct ClientShared {
    core: Arc<Core>,
    url: String,
    connector: RwLock<Arc<dyn Connector>>,
    conn: Mutex<Option<Connection>>,
    auth: RwLock<Option<Auth>>,
    remote: RwLock<Option<KiteIdentity>>,
    reconnect: AtomicBool,
    closed: AtomicBool,
    hooks: RwLock<ClientHooks>,
    /// Bumped on every successful dial; `dial_forever` waiters watch it.
    connected: watch::Sender<u64>,
    dialing: tokio::sync::Mutex<()>,
}

/// A connection to another kite, re-established on demand. Cheap to clone; all clones
/// share the connection.
#[derive(Clone)]
pub struct Client {
    shared: Arc<ClientShared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.shared.url)
            .field("connected", &self.is_connected())
            .finish()
    }
}

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

impl Client {
    pub(crate) fn new(core: Arc<Core>, url: String) -> Client {
        let config = core.config();
        let auth = if config.kite_key.is_empty() {
            None
        } else {
            Some(Auth::kite_key(config.kite_key.clone()))
        };
        let _ = core.next_client_id();
        let connector = crate::transport::default_connector(&core);
        Client {
            shared: Arc::new(ClientShared {
                core,
                url,
                connector: RwLock::new(connector),
                conn: Mutex::new(None),
                auth: RwLock::new(auth),
                remote: RwLock::new(None),
                reconnect: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                hooks: RwLock::new(ClientHooks::default()),
                connected: watch::channel(0).0,
                dialing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The URL this client dials.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Replaces how sessions are opened (default: SockJS per the kite's transport setting).
    pub fn set_connector(&self, connector: impl Connector) {
        *write(&self.shared.connector) = Arc::new(connector);
    }

    /// The credential sent with every call (default: the configured kite key, as
    /// `kiteKey`).
    pub fn auth(&self) -> Option<Auth> {
        read(&self.shared.auth).clone()
    }

    /// Sets the credential sent with later calls (`Auth::token(..)`, `Auth::kite_key(..)`,
    /// any type, or `None`).
    pub fn set_auth(&self, auth: Option<Auth>) {
        *write(&self.shared.auth) = auth.clone();
        if let Some(c) = self.connection() {
            c.set_auth(auth);
        }
    }

    /// Installs a renewed token as credential and runs the `on_token_renew` hooks.
    /// (Automatic renewal through Kontrol arrives with the Kontrol client.)
    pub fn renew_token(&self, token: &str) {
        self.set_auth(Some(Auth::token(token)));
        let hooks: Vec<_> = read(&self.shared.hooks).on_token_renew.clone();
        for h in hooks {
            h(token);
        }
    }

    /// The remote kite's identity, when known (e.g. from Kontrol).
    pub fn remote_kite(&self) -> Option<KiteIdentity> {
        read(&self.shared.remote).clone()
    }

    /// Records the remote kite's identity.
    pub fn set_remote_kite(&self, kite: KiteIdentity) {
        *write(&self.shared.remote) = Some(kite);
    }

    /// The current connection, if connected.
    pub fn connection(&self) -> Option<Connection> {
        lock(&self.shared.conn)
            .as_ref()
            .filter(|c| !c.is_closed())
            .cloned()
    }

    /// Whether a live connection exists.
    pub fn is_connected(&self) -> bool {
        self.connection().is_some()
    }

    /// Runs `f` (on a spawned task) after every successful dial.
    pub fn on_connect(&self, f: impl Fn(&Connection) + Send + Sync + 'static) {
        write(&self.shared.hooks).on_connect.push(Arc::new(f));
    }

    /// Runs `f` after every lost connection.
    pub fn on_disconnect(&self, f: impl Fn() + Send + Sync + 'static) {
        write(&self.shared.hooks).on_disconnect.push(Arc::new(f));
    }

    /// Runs `f` when a call fails because the token expired (`authenticationError`
    /// containing `token is expired`).
    pub fn on_token_expire(&self, f: impl Fn() + Send + Sync + 'static) {
        write(&self.shared.hooks).on_token_expire.push(Arc::new(f));
    }

    /// Runs `f` with the new token whenever [`Client::renew_token`] installs one.
    pub fn on_token_renew(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        write(&self.shared.hooks).on_token_renew.push(Arc::new(f));
    }

    /// One connection attempt, bounded by [`Limits::dial_timeout`](crate::Limits::dial_timeout).
    pub async fn dial(&self) -> Result<(), KiteError> {
        let d = self.shared.core.limits().dial_timeout;
        self.dial_timeout(d).await
    }

    /// One connection attempt, bounded by `timeout` (honoured, unlike Go's Q23).
    pub async fn dial_timeout(&self, timeout: Duration) -> Result<(), KiteError> {
        match tokio::time::timeout(timeout, dial_once(&self.shared)).await {
            Ok(r) => r,
            Err(_) => Err(KiteError::new(
                crate::error::types::TIMEOUT,
                format!("dial {} timed out after {timeout:?}", self.shared.url),
            )),
        }
    }

    /// Enables reconnecting and keeps dialing until connected (in the background). The
    /// returned future completes on the first successful connection; awaiting it is
    /// optional.
    pub fn dial_forever(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.reconnect.store(true, Ordering::SeqCst);
        let mut rx = self.shared.connected.subscribe();
        let start = *rx.borrow_and_update();
        if !self.is_connected() {
            tokio::spawn(reconnect_loop(self.shared.clone()));
        }
        let already = self.is_connected();
        async move {
            if already {
                return;
            }
            while *rx.borrow_and_update() == start {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    /// Calls `method` with `args` and waits for the response (default call timeout,
    /// [`Limits::call_timeout`](crate::Limits::call_timeout)). See [`Connection::tell`]
    /// for how `args` become the argument list.
    pub async fn tell<A: Serialize + ?Sized>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<Response, KiteError> {
        let conn = self.live()?;
        let r = conn.tell(method, args).await;
        self.after_call(r)
    }

    /// [`Client::tell`] with an explicit timeout (`None`: wait forever).
    pub async fn tell_with_timeout<A: Serialize + ?Sized>(
        &self,
        method: &str,
        args: &A,
        timeout: Option<Duration>,
    ) -> Result<Response, KiteError> {
        let conn = self.live()?;
        let r = conn.tell_with_timeout(method, args, timeout).await;
        self.after_call(r)
    }

    /// [`Client::tell_with_timeout`] with extra keys in the request's options object
    /// (see [`Connection::tell_with_fields`]).
    pub async fn tell_with_fields<A: Serialize + ?Sized>(
        &self,
        method: &str,
        args: &A,
        fields: crate::connection::EnvelopeFields,
        timeout: Option<Duration>,
    ) -> Result<Response, KiteError> {
        let conn = self.live()?;
        let r = conn.tell_with_fields(method, args, fields, timeout).await;
        self.after_call(r)
    }

    /// Starts a call now; await the returned handle for the response.
    pub fn go<A: Serialize + ?Sized>(&self, method: &str, args: &A) -> PendingCall {
        match self.live() {
            Ok(conn) => {
                let pending = conn.go(method, args);
                let me = self.clone();
                PendingCall::spawn(async move { me.after_call(pending.await) })
            }
            Err(e) => PendingCall::spawn(async move { Err(e) }),
        }
    }

    /// [`Client::go`] with an explicit timeout.
    pub fn go_with_timeout<A: Serialize + ?Sized>(
        &self,
        method: &str,
        args: &A,
        timeout: Option<Duration>,
    ) -> PendingCall {
        match self.live() {
            Ok(conn) => {
                let pending = conn.go_with_timeout(method, args, timeout);
                let me = self.clone();
                PendingCall::spawn(async move { me.after_call(pending.await) })
            }
            Err(e) => PendingCall::spawn(async move { Err(e) }),
        }
    }

    /// Closes the client: reconnecting stops and the connection is closed. Idempotent;
    /// later calls fail with `sendError`.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.reconnect.store(false, Ordering::SeqCst);
        let conn = lock(&self.shared.conn).take();
        if let Some(c) = conn {
            c.close().await;
        }
    }

    /// Whether [`Client::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// A handle that does not keep the client alive (for background tasks such as the
    /// token renewer).
    pub(crate) fn downgrade(&self) -> WeakClient {
        WeakClient(Arc::downgrade(&self.shared))
    }

    fn live(&self) -> Result<Connection, KiteError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(KiteError::send("can't send, client is closed"));
        }
        self.connection()
            .ok_or_else(|| KiteError::send("can't send, session is not established yet"))
    }

    fn after_call(&self, r: Result<Response, KiteError>) -> Result<Response, KiteError> {
        if let Err(e) = &r {
            if e.is_token_expired() {
                let hooks: Vec<_> = read(&self.shared.hooks).on_token_expire.clone();
                for h in hooks {
                    h();
                }
            }
        }
        r
    }
}

/// A [`Client`] reference that does not keep it alive.
#[derive(Clone)]
pub(crate) struct WeakClient(std::sync::Weak<ClientShared>);

impl WeakClient {
    /// The client, if it still exists.
    pub(crate) fn upgrade(&self) -> Option<Client> {
        self.0.upgrade().map(|shared| Client { shared })
    }
}

async fn dial_once(shared: &Arc<ClientShared>) -> Result<(), KiteError> {
    if shared.closed.load(Ordering::SeqCst) {
        return Err(KiteError::send("can't dial, client is closed"));
    }
    let _guard = shared.dialing.lock().await;
    if let Some(c) = lock(&shared.conn).as_ref() {
        if !c.is_closed() {
            return Ok(());
        }
    }
    let connector = read(&shared.connector).clone();
    let session = connector.connect(&shared.url).await?;
    let auth = read(&shared.auth).clone();
    let conn = Connection::start(shared.core.clone(), shared.core.limits(), session, auth);
    if let Some(remote) = read(&shared.remote).clone() {
        conn.set_remote_kite(remote);
    }
    *lock(&shared.conn) = Some(conn.clone());
    debug!(url = %shared.url, "connected");
    shared.connected.send_modify(|n| *n += 1);
    let hooks: Vec<_> = read(&shared.hooks).on_connect.clone();
    if !hooks.is_empty() {
        let c = conn.clone();
        tokio::spawn(async move {
            for h in hooks {
                h(&c);
            }
        });
    }
    tokio::spawn(watch_connection(Arc::downgrade(shared), conn));
    Ok(())
}

async fn watch_connection(shared: std::sync::Weak<ClientShared>, conn: Connection) {
    conn.closed().await;
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let hooks: Vec<_> = read(&shared.hooks).on_disconnect.clone();
    for h in hooks {
        h();
    }
    if shared.reconnect.load(Ordering::SeqCst) && !shared.closed.load(Ordering::SeqCst) {
        info!(url = %shared.url, "disconnected, reconnecting");
        reconnect_loop(shared).await;
    }
}

/// Per-client exponential back-off: 0.5 s × 1.5, ±50 % jitter, capped.
pub(crate) struct Backoff {
    next: f64,
    max: f64,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Self {
        Backoff {
            next: 0.5,
            max: max.as_secs_f64().max(0.5),
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next.min(self.max);
        self.next = (self.next * 1.5).min(self.max);
        let jitter: f64 = rand::random::<f64>() - 0.5; // ±50 %
        Duration::from_secs_f64((base + base * jitter).max(0.0))
    }
}

fn reconnect_loop(shared: Arc<ClientShared>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(reconnect_loop_inner(shared))
}

async fn reconnect_loop_inner(shared: Arc<ClientShared>) {
    let mut backoff = Backoff::new(shared.core.limits().max_backoff);
    loop {
        if shared.closed.load(Ordering::SeqCst) || !shared.reconnect.load(Ordering::SeqCst) {
            return;
        }
        let timeout = shared.core.limits().dial_timeout;
        match tokio::time::timeout(timeout, dial_once(&shared)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => debug!(url = %shared.url, "dial failed: {e}"),
            Err(_) => debug!(url = %shared.url, "dial timed out"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        let mut b = Backoff::new(Duration::from_secs(60));
        let d = b.next_delay().as_secs_f64();
        assert!((0.25..=0.75).contains(&d), "{d}");
        let d = b.next_delay().as_secs_f64();
        assert!((0.375..=1.125).contains(&d), "{d}");
        for _ in 0..50 {
            b.next_delay();
        }
        let d = b.next_delay().as_secs_f64();
        assert!((30.0..=90.0).contains(&d), "{d}");
    }
}
