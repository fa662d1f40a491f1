//! The kite side of Kontrol (PROTOCOL.md 8.1, 8.2, 6.8, 9, 11.5): registering, heartbeats,
//! discovery with tokens and token renewal, key look-up and watching.
//!
//! Every kite can act as a Kontrol client. [`Kite::kontrol`] returns the kite's
//! [`KontrolClient`] (one per kite: one connection to Kontrol, authenticated with the kite
//! key as `kiteKey` credential); the same operations are also methods of [`Kite`] itself:
//!
//! | Method | Wire |
//! |---|---|
//! | [`Kite::register`] | `register` `[{"url": ...}]`; Kontrol then calls `kite.heartbeat` `[10, fn]`, answered by the kite's default method |
//! | [`Kite::register_forever`] | the same, retried every [`KontrolSettings::register_retry`] until it works; re-sent after every reconnect |
//! | [`Kite::register_http`] / [`Kite::register_http_forever`] | `POST /register`, then `GET /heartbeat?id=...` every `heartbeatInterval`; `registeragain` → register again with back-off (30 s × 1.7 ± 50 %, at most 5 min) |
//! | [`Kite::get_kites`] / [`Kite::get_kite`] | `getKites` `[{"query": {7 fields}, "watchCallback": null, "who": null}]` → [`Client`]s carrying the `token` credentials, renewed before they expire |
//! | [`Kite::get_token`] | `getToken` `[{7 fields}]` (`"force": true` with [`KontrolClient::get_token_force`]) |
//! | [`Kite::get_key`] | `getKey` `[]` → Kontrol's public key (adopted) |
//! | [`Kite::watch_kites`] | `getKites` with a `watchCallback` function → a [`Watcher`] stream of REGISTER / DEREGISTER events |
//!
//! **Several Kontrols.** Kontrols sharing one PostgreSQL or etcd form one registry. Give a
//! kite all of them ([`Config::kontrol_urls`](crate::Config::kontrol_urls), or
//! `KITE_KONTROL_URL=http://a:4000/kite,http://b:4000/kite`; `kontrol_url` stays the
//! primary): every connection attempt goes to the next URL of
//! [`Config::kontrol_url_list`](crate::Config::kontrol_url_list) in turn (a working one is
//! retried first after a drop), with the reconnect back-off between attempts; one-shot
//! calls try each URL once. After every reconnect the kite registers again (same id and
//! URL) and logs the Kontrol it is on ([`KontrolClient::url`]); watches re-watch and
//! reconcile ([`Watcher`]); HTTP registration tries the URLs in turn and moves on when a
//! heartbeat gets no answer.
//!
//! Keys Kontrol hands back (`publicKey`, `kiteKey` in a RegisterResult; `getKey`) are
//! adopted in memory: the kite then trusts the new Kontrol key for tokens, and the Kontrol
//! client and clients created afterwards authenticate with the new kite key (PROTOCOL.md
//! 8.4). Nothing is written to disk.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use kite::protocol::KontrolQuery;
//! let mut k = kite::Kite::with_config("math", "1.0.0", kite::Config::load()?)?;
//! k.handle_func("square", |r: kite::Request| async move {
//!     let a: f64 = r.args().one()?;
//!     Ok(a * a)
//! });
//! k.listen().await?;
//! let url = k.url().unwrap_or_default();
//! k.register_forever(&url).await; // first registration done; re-registers on reconnects
//!
//! let query = KontrolQuery { username: k.config.username.clone(), name: "math".into(),
//!                            ..Default::default() };
//! let math = k.get_kite(&query).await?; // token credential, renewed automatically
//! math.dial().await?;
//! assert_eq!(math.tell("square", &(4,)).await?.as_f64(), Some(16.0));
//! # Ok(()) }
//! ```

mod failover;
mod http;
mod renew;
mod watch;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use crate::client::Client;
use crate::connection::Connection;
use crate::error::KiteError;
use crate::kite::{Core, Kite};
use crate::protocol::{Kite as KiteIdentity, KontrolQuery};
use crate::request::Auth;
use failover::lock as lock_rotation;

pub use watch::{WatchAction, WatchEvent, Watcher};

/// Tunables of the Kontrol client. Defaults follow Go and kite.js.
#[derive(Debug, Clone)]
pub struct KontrolSettings {
    /// Timeout of each Kontrol call and of each HTTP register/heartbeat request; `None`
    /// (default) uses the kite's `config.timeout` (15 s).
    pub timeout: Option<Duration>,
    /// Pause between attempts of [`KontrolClient::register_forever`] and of the
    /// re-registration after a reconnect (default 10 s, as Go).
    pub register_retry: Duration,
    /// First pause of the HTTP re-registration back-off (default 30 s, as Go); each
    /// further pause is × [`http_backoff_multiplier`](Self::http_backoff_multiplier)
    /// (± 50 % jitter) up to [`http_backoff_max`](Self::http_backoff_max).
    pub http_backoff_initial: Duration,
    /// Growth of the HTTP re-registration back-off (default 1.7).
    pub http_backoff_multiplier: f64,
    /// Largest pause of the HTTP re-registration back-off (default 5 min).
    pub http_backoff_max: Duration,
    /// How long before its `exp` a token is renewed (default 5 min, as kite.js; at least
    /// 30 s is advisable). A token whose whole remaining life is shorter is renewed at half
    /// of it.
    pub token_renew_margin: Duration,
    /// Pause before retrying a failed token renewal (default 11 s, as Go).
    pub token_retry: Duration,
    /// Capacity of a [`Watcher`]'s event queue (default 1024). Events arriving while it is
    /// full are dropped with a warning (the Kontrol connection is never stalled).
    pub watch_queue: usize,
}

impl Default for KontrolSettings {
    fn default() -> Self {
        KontrolSettings {
            timeout: None,
            register_retry: Duration::from_secs(10),
            http_backoff_initial: Duration::from_secs(30),
            http_backoff_multiplier: 1.7,
            http_backoff_max: Duration::from_secs(300),
            token_renew_margin: Duration::from_secs(300),
            token_retry: Duration::from_secs(11),
            watch_queue: 1024,
        }
    }
}

/// Kontrol's answer to a registration (`register` or `POST /register`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResult {
    /// The URL Kontrol stored.
    #[serde(default)]
    pub url: String,
    /// Seconds between HTTP heartbeats (always 0 on the dnode path, where Kontrol calls
    /// `kite.heartbeat` instead).
    #[serde(rename = "heartbeatInterval", default)]
    pub heartbeat_interval: u64,
    /// Kontrol's new public key, when the kite's one is outdated.
    #[serde(rename = "publicKey", default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The kite key re-signed with Kontrol's current key, when the kite's one was signed
    /// with a deleted key.
    #[serde(rename = "kiteKey", default, skip_serializing_if = "Option::is_none")]
    pub kite_key: Option<String>,
}

/// HTTP `/register` body: a RegisterResult plus `err`.
#[derive(Debug, Default, Deserialize)]
struct HttpRegisterResult {
    #[serde(flatten)]
    result: RegisterResult,
    #[serde(default)]
    err: Option<String>,
}

/// One `getKites` result: a kite, where to dial it and a token to call it with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KiteWithToken {
    /// The kite's identity.
    #[serde(default)]
    pub kite: KiteIdentity,
    /// Its SockJS URL.
    #[serde(default)]
    pub url: String,
    /// The id of the key pair it registered with (omitted when empty).
    #[serde(rename = "keyId", default, skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    /// A `token` credential for calling it.
    #[serde(default)]
    pub token: String,
}

/// The result of `getKites`.
#[derive(Debug, Clone, Default, Deserialize)]
struct GetKitesResult {
    #[serde(default)]
    kites: Vec<KiteWithToken>,
    #[serde(rename = "watcherID", default)]
    watcher_id: Option<String>,
}

type RegisterHook = Arc<dyn Fn(&RegisterResult) + Send + Sync>;

/// Keys adopted from Kontrol, with the configured values they replaced (an adoption stays
/// in force while the configuration still holds the replaced value).
#[derive(Debug, Clone, Default)]
struct Adopted {
    kite_key: Option<(String, String)>,
    kontrol_key: Option<(String, String)>,
}

/// Per-kite state of the Kontrol client (lives in the kite's core).
pub(crate) struct KontrolState {
    settings: RwLock<KontrolSettings>,
    client: Mutex<Option<Client>>,
    /// The last URL registered over the dnode path (re-sent after reconnects).
    registered_url: Mutex<Option<String>>,
    adopted: Mutex<Adopted>,
    on_register: RwLock<Vec<RegisterHook>>,
    /// The HTTP heartbeat / re-registration task (one schedule per kite, as Go).
    http_task: Mutex<Option<AbortHandle>>,
    /// Other background tasks (register_forever loops, token renewers).
    tasks: Mutex<Vec<AbortHandle>>,
    /// Round-robin positions per query.
    round_robin: Mutex<HashMap<String, usize>>,
    closed: AtomicBool,
    /// Which Kontrol of the URL list the kite connection uses / tries next.
    rotation: Arc<Mutex<failover::Rotation>>,
    /// Which Kontrol the HTTP registration uses / tries next.
    http_rotation: Mutex<failover::Rotation>,
    /// Bumped after every successful connection to Kontrol (and on close): watchers wait
    /// on it to watch again.
    connected_gen: tokio::sync::watch::Sender<u64>,
    /// Reconnecting (`dial_forever`) was switched on for the Kontrol connection.
    reconnecting: AtomicBool,
}

impl fmt::Debug for KontrolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KontrolState")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    match l.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    match l.write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Most distinct queries remembered for round-robin selection.
const MAX_ROUND_ROBIN_QUERIES: usize = 1024;

impl KontrolState {
    fn new() -> Self {
        KontrolState {
            settings: RwLock::new(KontrolSettings::default()),
            client: Mutex::new(None),
            registered_url: Mutex::new(None),
            adopted: Mutex::new(Adopted::default()),
            on_register: RwLock::new(Vec::new()),
            http_task: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            round_robin: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            rotation: Arc::new(Mutex::new(failover::Rotation::default())),
            http_rotation: Mutex::new(failover::Rotation::default()),
            connected_gen: tokio::sync::watch::channel(0).0,
            reconnecting: AtomicBool::new(false),
        }
    }

    fn track(&self, handle: AbortHandle) {
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }
}

/// Re-applies adopted keys after the kite pushed its public configuration into the core
/// (called from `Kite::sync`).
pub(crate) fn reapply_adopted(core: &Arc<Core>) {
    let Some(state) = core.kontrol.get() else {
        return;
    };
    let adopted = lock(&state.adopted).clone();
    if adopted.kite_key.is_none() && adopted.kontrol_key.is_none() {
        return;
    }
    let current = core.config();
    let mut config = (*current).clone();
    let mut changed = false;
    if let Some((old, new)) = &adopted.kite_key {
        if config.kite_key == *old {
            config.kite_key = new.clone();
            changed = true;
        }
    }
    if let Some((old, new)) = &adopted.kontrol_key {
        if config.kontrol_key.trim() == old.trim() {
            config.kontrol_key = new.clone();
            changed = true;
            if let Err(e) = core_authenticator(core).set_kontrol_key(new) {
                warn!("cannot adopt Kontrol's public key: {e}");
            }
        }
    }
    if changed {
        core.set_config(config);
    }
}

fn core_authenticator(core: &Arc<Core>) -> Arc<crate::auth::Authenticator> {
    core.default_authenticator()
}

/// The kite's connection to Kontrol and everything done through it. Cheap to clone; get it
/// with [`Kite::kontrol`].
#[derive(Clone)]
pub struct KontrolClient {
    core: Arc<Core>,
    state: Arc<KontrolState>,
}

impl fmt::Debug for KontrolClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KontrolClient")
            .field("kontrol_url", &self.core.config().kontrol_url)
            .finish()
    }
}

impl Kite {
    /// The kite's Kontrol client (created on first use; one per kite). It talks to the
    /// Kontrols of `config.kontrol_url_list()` (in turn, failing over) with the kite key as
    /// `kiteKey` credential.
    pub fn kontrol(&self) -> KontrolClient {
        self.sync();
        KontrolClient::of(&self.core)
    }

    /// Registers `url` (where this kite is reachable, e.g. [`Kite::url`]) with Kontrol
    /// over a kite connection; see [`KontrolClient::register`].
    pub async fn register(&self, url: &str) -> Result<RegisterResult, KiteError> {
        self.kontrol().register(url).await
    }

    /// Registers `url` with Kontrol, retrying until it works and again after every
    /// reconnect; see [`KontrolClient::register_forever`].
    pub fn register_forever(&self, url: &str) -> impl Future<Output = RegisterResult> + Send {
        self.kontrol().register_forever(url)
    }

    /// Registers `url` over HTTP and starts HTTP heartbeats; see
    /// [`KontrolClient::register_http`].
    pub async fn register_http(&self, url: &str) -> Result<RegisterResult, KiteError> {
        self.kontrol().register_http(url).await
    }

    /// Registers `url` over HTTP, retrying with back-off until it works; see
    /// [`KontrolClient::register_http_forever`].
    pub fn register_http_forever(&self, url: &str) -> impl Future<Output = RegisterResult> + Send {
        self.kontrol().register_http_forever(url)
    }

    /// Kites matching `query`, as clients ready to dial; see [`KontrolClient::get_kites`].
    pub async fn get_kites(&self, query: &KontrolQuery) -> Result<Vec<Client>, KiteError> {
        self.kontrol().get_kites(query).await
    }

    /// One kite matching `query`, chosen round-robin; see [`KontrolClient::get_kite`].
    pub async fn get_kite(&self, query: &KontrolQuery) -> Result<Client, KiteError> {
        self.kontrol().get_kite(query).await
    }

    /// A token for the one kite matching `query`; see [`KontrolClient::get_token`].
    pub async fn get_token(&self, query: &KontrolQuery) -> Result<String, KiteError> {
        self.kontrol().get_token(query).await
    }

    /// Kontrol's public key (adopted as the trusted Kontrol key); see
    /// [`KontrolClient::get_key`].
    pub async fn get_key(&self) -> Result<String, KiteError> {
        self.kontrol().get_key().await
    }

    /// Watches kites matching `query`; see [`KontrolClient::watch_kites`].
    pub async fn watch_kites(&self, query: &KontrolQuery) -> Result<Watcher, KiteError> {
        self.kontrol().watch_kites(query).await
    }
}

/// All seven query keys, as Go sends them (1.3).
fn query_value(query: &KontrolQuery) -> Value {
    json!({
        "username": query.username,
        "environment": query.environment,
        "name": query.name,
        "version": query.version,
        "region": query.region,
        "hostname": query.hostname,
        "id": query.id,
    })
}

fn query_key(query: &KontrolQuery) -> String {
    query.values().join("\u{0}")
}

fn no_kontrol_url() -> KiteError {
    KiteError::generic(
        "no Kontrol URL configured (set KITE_KONTROL_URL or use a kite.key that names one)",
    )
}

/// `http://host:4000/kite` → `http://host:4000` (PROTOCOL.md 8.2).
pub(crate) fn http_base(kontrol_url: &str) -> String {
    let trimmed = kontrol_url.trim_end_matches('/');
    trimmed.strip_suffix("/kite").unwrap_or(trimmed).to_string()
}

impl KontrolClient {
    pub(crate) fn of(core: &Arc<Core>) -> KontrolClient {
        let state = core
            .kontrol
            .get_or_init(|| Arc::new(KontrolState::new()))
            .clone();
        KontrolClient {
            core: core.clone(),
            state,
        }
    }

    /// The current settings.
    pub fn settings(&self) -> KontrolSettings {
        read(&self.state.settings)
    }

    /// Replaces the settings (later operations use them).
    pub fn set_settings(&self, settings: KontrolSettings) {
        *write(&self.state.settings) = settings;
    }

    /// Runs `f` after every successful registration (dnode or HTTP, re-registrations
    /// included).
    pub fn on_register(&self, f: impl Fn(&RegisterResult) + Send + Sync + 'static) {
        write(&self.state.on_register).push(Arc::new(f));
    }

    fn timeout(&self) -> Duration {
        self.settings()
            .timeout
            .unwrap_or_else(|| self.core.config().timeout)
    }

    /// The Kontrol URL in use: the one the kite connection last reached, else the one it
    /// tries next (the first of [`urls`](Self::urls) before any attempt).
    pub fn url(&self) -> String {
        let list = self.urls();
        let rotation = failover::lock(&self.state.rotation);
        match rotation.connected() {
            Some(url) => url.to_owned(),
            None => rotation
                .peek(&list)
                .unwrap_or_else(|| self.core.config().kontrol_url.clone()),
        }
    }

    /// Every Kontrol this client may use, in the order it tries them
    /// ([`Config::kontrol_url_list`](crate::Config::kontrol_url_list)).
    pub fn urls(&self) -> Vec<String> {
        self.core.config().kontrol_url_list()
    }

    /// The client connected (or connecting) to Kontrol, created on first use. Fails when no
    /// Kontrol URL is configured.
    pub fn client(&self) -> Result<Client, KiteError> {
        if self.state.closed.load(Ordering::SeqCst) {
            return Err(KiteError::send("the Kontrol client is closed"));
        }
        let mut slot = lock(&self.state.client);
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let Some(first) = self.urls().into_iter().next() else {
            return Err(no_kontrol_url());
        };
        let client = Client::new(self.core.clone(), first);
        client.set_connector(failover::FailoverConnector {
            inner: crate::transport::default_connector(&self.core),
            core: Arc::downgrade(&self.core),
            rotation: self.state.rotation.clone(),
        });
        let weak = Arc::downgrade(&self.state);
        let core = Arc::downgrade(&self.core);
        client.on_connect(move |conn| {
            let (Some(state), Some(core)) = (weak.upgrade(), core.upgrade()) else {
                return;
            };
            let me = KontrolClient { core, state };
            let kontrol = me.url();
            info!(kontrol = %kontrol, "connected to Kontrol");
            me.state
                .connected_gen
                .send_modify(|g| *g = g.wrapping_add(1));
            let Some(url) = lock(&me.state.registered_url).clone() else {
                return;
            };
            info!(kontrol = %kontrol, "registering again after the reconnect");
            let state = me.state.clone();
            let conn = conn.clone();
            let task = tokio::spawn(async move { me.reregister_on(conn, url).await });
            state.track(task.abort_handle());
        });
        let weak = Arc::downgrade(&self.state);
        let core = Arc::downgrade(&self.core);
        client.on_disconnect(move || {
            let (Some(state), Some(core)) = (weak.upgrade(), core.upgrade()) else {
                return;
            };
            // Not worth a warning when the Kontrol client was closed on purpose.
            if !state.closed.load(Ordering::SeqCst) {
                let me = KontrolClient { core, state };
                warn!(kontrol = %me.url(), "disconnected from Kontrol");
            }
        });
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Re-sends the registration on a fresh connection until it works or the connection
    /// ends.
    async fn reregister_on(&self, conn: Connection, url: String) {
        loop {
            match self.register_call(&conn, &url).await {
                Ok(_) => return,
                Err(e) => {
                    warn!("registering again with Kontrol failed: {e}");
                    if conn.is_closed() {
                        return;
                    }
                    let retry = self.settings().register_retry;
                    tokio::select! {
                        _ = conn.closed() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                }
            }
        }
    }

    /// Connects if not connected: one attempt per configured Kontrol, in turn (errors
    /// name the URLs).
    async fn connected(&self) -> Result<Connection, KiteError> {
        let client = self.client()?;
        if let Some(c) = client.connection() {
            return Ok(c);
        }
        let timeout = self
            .core
            .limits()
            .dial_timeout
            .min(self.timeout().max(Duration::from_secs(1)));
        let urls = self.urls();
        let mut last = KiteError::disconnect();
        for _ in 0..urls.len().max(1) {
            match client.dial_timeout(timeout).await {
                Ok(()) => {
                    if let Some(c) = client.connection() {
                        return Ok(c);
                    }
                }
                Err(e) => last = e,
            }
            if let Some(c) = client.connection() {
                return Ok(c);
            }
        }
        Err(KiteError::new(
            last.kind.clone(),
            format!(
                "cannot connect to Kontrol ({}): {}",
                urls.join(", "),
                last.message
            ),
        ))
    }

    /// Switches reconnecting on for the Kontrol connection (once) and returns the future
    /// of `dial_forever`.
    fn enable_reconnect(&self, client: &Client) -> impl Future<Output = ()> + Send + 'static {
        self.state.reconnecting.store(true, Ordering::SeqCst);
        client.dial_forever()
    }

    /// Connects with reconnection enabled, waiting at most the call timeout.
    async fn connected_forever(&self) -> Result<Connection, KiteError> {
        let client = self.client()?;
        let timeout = self.timeout();
        if tokio::time::timeout(timeout, self.enable_reconnect(&client))
            .await
            .is_err()
        {
            return Err(KiteError::new(
                crate::error::types::TIMEOUT,
                format!(
                    "cannot connect to Kontrol ({}) (still trying)",
                    self.urls().join(", ")
                ),
            ));
        }
        client.connection().ok_or_else(KiteError::disconnect)
    }

    async fn call(
        &self,
        conn: &Connection,
        method: &str,
        args: &Value,
    ) -> Result<crate::args::Response, KiteError> {
        let timeout = self.timeout();
        let r = conn.tell_with_timeout(method, args, Some(timeout)).await;
        if let Err(e) = &r {
            if e.kind == crate::error::types::TIMEOUT {
                return Err(KiteError::kontrol_timeout(method, timeout));
            }
        }
        r
    }

    async fn register_call(
        &self,
        conn: &Connection,
        url: &str,
    ) -> Result<RegisterResult, KiteError> {
        let response = self
            .call(conn, "register", &json!([{ "url": url }]))
            .await?;
        let result: RegisterResult = response.decode()?;
        *lock(&self.state.registered_url) = Some(url.to_string());
        self.adopt(&result);
        info!(url = %result.url, kite = %self.core.identity(), kontrol = %self.url(), "registered to Kontrol");
        self.registered(&result);
        Ok(result)
    }

    fn registered(&self, result: &RegisterResult) {
        let hooks = read(&self.state.on_register);
        for h in hooks {
            h(result);
        }
    }

    /// Registers `url` once over the kite connection to Kontrol (connecting first, with
    /// reconnection enabled: after a reconnect the last registered URL is sent again).
    /// Kontrol calls the kite's `kite.heartbeat` to keep the registration alive while the
    /// connection lasts. Keys in the result are adopted.
    pub async fn register(&self, url: &str) -> Result<RegisterResult, KiteError> {
        let conn = self.connected_forever().await?;
        self.register_call(&conn, url).await
    }

    /// Registers `url`, retrying every [`KontrolSettings::register_retry`] until it works
    /// (work runs in the background at once; the returned future completes with the first
    /// successful result, awaiting it is optional). Re-registers after every reconnect.
    ///
    /// With several Kontrols configured ([`urls`](Self::urls)), every connection attempt
    /// goes to the next one in turn (with the reconnect back-off between attempts), so
    /// when the Kontrol the kite is on dies, the kite reconnects to another one and
    /// registers there again, keeping its id and URL; the Kontrol in use is logged.
    pub fn register_forever(&self, url: &str) -> impl Future<Output = RegisterResult> + Send {
        let me = self.clone();
        let url = url.to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                match me.register(&url).await {
                    Ok(r) => {
                        let _ = tx.send(r);
                        return;
                    }
                    Err(e) => {
                        let retry = me.settings().register_retry;
                        warn!("cannot register to Kontrol: {e}; retrying in {retry:?}");
                        tokio::time::sleep(retry).await;
                    }
                }
            }
        });
        self.state.track(task.abort_handle());
        async move {
            match rx.await {
                Ok(r) => r,
                // The Kontrol client was closed before the registration succeeded.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Registers `url` with `POST <kontrol>/register` (kite-key credential in the body) and
    /// starts sending `GET /heartbeat?id=<kite id>` every `heartbeatInterval` seconds
    /// (replacing any previous HTTP heartbeat of this kite). When Kontrol answers
    /// `registeragain`, the kite registers again with back-off until it works.
    pub async fn register_http(&self, url: &str) -> Result<RegisterResult, KiteError> {
        let result = self.register_http_once(url).await?;
        self.start_http_heartbeat(url.to_string(), result.heartbeat_interval);
        Ok(result)
    }

    /// [`KontrolClient::register_http`] retried with back-off (30 s × 1.7 ± 50 %, at most
    /// 5 min, forever; see [`KontrolSettings`]) until it works. The first attempt is made
    /// at once, in the background; the returned future completes with the first successful
    /// result (awaiting it is optional).
    pub fn register_http_forever(&self, url: &str) -> impl Future<Output = RegisterResult> + Send {
        let me = self.clone();
        let url = url.to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let result = me.http_register_with_backoff(&url).await;
            let _ = tx.send(result.clone());
            me.http_heartbeat_loop(url, result.heartbeat_interval).await;
        });
        self.replace_http_task(task.abort_handle());
        async move {
            match rx.await {
                Ok(r) => r,
                Err(_) => std::future::pending().await,
            }
        }
    }

    async fn http_register_with_backoff(&self, url: &str) -> RegisterResult {
        let settings = self.settings();
        let mut backoff = HttpBackoff::new(&settings);
        loop {
            match self.register_http_once(url).await {
                Ok(r) => return r,
                Err(e) => {
                    let wait = backoff.next_delay();
                    warn!("cannot register to Kontrol over HTTP: {e}; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn replace_http_task(&self, handle: AbortHandle) {
        if let Some(prev) = lock(&self.state.http_task).replace(handle) {
            prev.abort();
        }
    }

    fn start_http_heartbeat(&self, url: String, interval: u64) {
        let me = self.clone();
        let task = tokio::spawn(async move { me.http_heartbeat_loop(url, interval).await });
        self.replace_http_task(task.abort_handle());
    }

    /// Heartbeats every `interval` seconds; on `registeragain`, registers again with
    /// back-off and goes on with the new interval.
    ///
    /// Heartbeats go to the Kontrol that took the registration. With several Kontrols
    /// configured, a heartbeat that fails (no answer) makes the kite register again with
    /// the next Kontrol; with one, it is only logged (as Go).
    async fn http_heartbeat_loop(&self, url: String, mut interval: u64) {
        let id = self.core.identity().id;
        loop {
            let kontrol = self.http_url();
            let base = http_base(&kontrol);
            let every = Duration::from_secs(interval.max(1));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match http::heartbeat(&base, &id, self.timeout()).await {
                    Ok(body) if body == "pong" => debug!("HTTP heartbeat: pong"),
                    Ok(body) if body == "registeragain" => {
                        info!(kontrol = %kontrol, "Kontrol asks to register again");
                        break;
                    }
                    Ok(other) => warn!("unexpected HTTP heartbeat answer: {other:?}"),
                    Err(e) if self.urls().len() > 1 => {
                        warn!(kontrol = %kontrol, "HTTP heartbeat failed: {e}; registering with the next Kontrol");
                        // The next registration attempt starts after this Kontrol.
                        let list = self.urls();
                        let mut rotation = lock_rotation(&self.state.http_rotation);
                        if rotation.peek(&list).as_deref() == Some(kontrol.as_str()) {
                            rotation.take(&list);
                        }
                        break;
                    }
                    Err(e) => warn!(kontrol = %kontrol, "HTTP heartbeat failed: {e}"),
                }
            }
            interval = self
                .http_register_with_backoff(&url)
                .await
                .heartbeat_interval;
        }
    }

    /// The Kontrol the HTTP registration uses (the last one that took it, else the next
    /// to try).
    fn http_url(&self) -> String {
        let list = self.urls();
        let rotation = lock_rotation(&self.state.http_rotation);
        match rotation.connected() {
            Some(url) if list.iter().any(|u| u == url) => url.to_owned(),
            _ => rotation
                .peek(&list)
                .unwrap_or_else(|| self.core.config().kontrol_url.clone()),
        }
    }

    /// One HTTP registration: tries each configured Kontrol once, in turn, starting with
    /// the one the last attempt would use next.
    async fn register_http_once(&self, url: &str) -> Result<RegisterResult, KiteError> {
        let list = self.urls();
        if list.is_empty() {
            return Err(no_kontrol_url());
        }
        let mut last = None;
        for _ in 0..list.len() {
            let Some(kontrol) = lock_rotation(&self.state.http_rotation).take(&list) else {
                break;
            };
            match self.register_http_to(&kontrol, url).await {
                Ok(result) => {
                    lock_rotation(&self.state.http_rotation).succeeded(&kontrol);
                    return Ok(result);
                }
                Err(e) => {
                    if list.len() > 1 {
                        debug!(kontrol = %kontrol, "HTTP registration failed: {e}");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(no_kontrol_url))
    }

    async fn register_http_to(
        &self,
        kontrol: &str,
        url: &str,
    ) -> Result<RegisterResult, KiteError> {
        let config = self.core.config();
        let body = json!({
            "url": url,
            "kite": self.core.identity(),
            "auth": Auth::kite_key(config.kite_key.clone()),
        });
        let base = http_base(kontrol);
        let resp = http::post_json(&format!("{base}/register"), &body, self.timeout()).await?;
        let parsed: HttpRegisterResult = serde_json::from_slice(&resp.body).map_err(|e| {
            KiteError::generic(format!(
                "register over HTTP: unexpected answer (HTTP {}): {e}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body).trim()
            ))
        })?;
        if let Some(err) = parsed.err.filter(|e| !e.is_empty()) {
            return Err(KiteError::generic(err));
        }
        if parsed.result.heartbeat_interval == 0 {
            return Err(KiteError::generic("heartbeat interval cannot be zero"));
        }
        let result = parsed.result;
        self.adopt(&result);
        info!(
            url = %result.url,
            interval = result.heartbeat_interval,
            kontrol = %kontrol,
            "registered to Kontrol over HTTP"
        );
        self.registered(&result);
        Ok(result)
    }

    /// Adopts `publicKey` / `kiteKey` of a RegisterResult (PROTOCOL.md 8.4).
    fn adopt(&self, result: &RegisterResult) {
        let new_kontrol_key = result.public_key.clone().filter(|k| !k.trim().is_empty());
        let mut new_kite_key = result.kite_key.clone().filter(|k| !k.trim().is_empty());
        let mut kontrol_key = new_kontrol_key;
        if let Some(k) = &new_kite_key {
            match crate::kitekey::KiteKey::parse(k, std::time::SystemTime::now()) {
                Ok(parsed) => {
                    if kontrol_key.is_none() && !parsed.kontrol_key().is_empty() {
                        kontrol_key = Some(parsed.kontrol_key().to_string());
                    }
                }
                Err(e) => {
                    warn!("ignoring the kite key Kontrol sent: {e}");
                    new_kite_key = None;
                }
            }
        }
        if kontrol_key.is_none() && new_kite_key.is_none() {
            return;
        }
        let config = self.core.config();
        {
            let mut adopted = lock(&self.state.adopted);
            if let Some(k) = &new_kite_key {
                let original = adopted
                    .kite_key
                    .as_ref()
                    .map(|(old, _)| old.clone())
                    .unwrap_or_else(|| config.kite_key.clone());
                adopted.kite_key = Some((original, k.clone()));
            }
            if let Some(k) = &kontrol_key {
                let original = adopted
                    .kontrol_key
                    .as_ref()
                    .map(|(old, _)| old.clone())
                    .unwrap_or_else(|| config.kontrol_key.clone());
                adopted.kontrol_key = Some((original, k.clone()));
            }
        }
        let mut updated = (*config).clone();
        if let Some(k) = &new_kite_key {
            info!("adopting the kite key re-signed by Kontrol");
            updated.kite_key = k.clone();
            if let Some(c) = lock(&self.state.client).as_ref() {
                c.set_auth(Some(Auth::kite_key(k.clone())));
            }
        }
        if let Some(k) = &kontrol_key {
            info!("adopting Kontrol's new public key");
            if let Err(e) = self.core.default_authenticator().set_kontrol_key(k) {
                warn!("cannot adopt Kontrol's public key: {e}");
            }
            updated.kontrol_key = k.clone();
        }
        self.core.set_config(updated);
    }

    /// Kites matching `query` (`getKites`), each as a [`Client`] ready to dial, carrying the
    /// token Kontrol issued for it as `token` credential. Tokens are renewed with `getToken`
    /// (full 7-field query) [`KontrolSettings::token_renew_margin`] before they expire and
    /// whenever a call fails with `token is expired`. An empty list is not an error.
    pub async fn get_kites(&self, query: &KontrolQuery) -> Result<Vec<Client>, KiteError> {
        let kites = self.get_kites_raw(query).await?;
        Ok(kites.iter().map(|k| self.client_for(k)).collect())
    }

    /// The raw `getKites` result: identities, URLs and tokens.
    pub async fn get_kites_raw(
        &self,
        query: &KontrolQuery,
    ) -> Result<Vec<KiteWithToken>, KiteError> {
        let conn = self.connected().await?;
        let args = json!([{ "query": query_value(query), "watchCallback": null, "who": null }]);
        let result: GetKitesResult = self.call(&conn, "getKites", &args).await?.decode()?;
        Ok(result.kites)
    }

    /// One kite matching `query`: successive calls with the same query rotate through the
    /// matches (round robin, in id order). Fails with `no kites available` when none
    /// matches.
    pub async fn get_kite(&self, query: &KontrolQuery) -> Result<Client, KiteError> {
        let mut kites = self.get_kites_raw(query).await?;
        if kites.is_empty() {
            return Err(KiteError::generic(format!(
                "no kites available for query {query}"
            )));
        }
        kites.sort_by(|a, b| a.kite.id.cmp(&b.kite.id));
        let index = {
            let mut rr = lock(&self.state.round_robin);
            if rr.len() >= MAX_ROUND_ROBIN_QUERIES && !rr.contains_key(&query_key(query)) {
                rr.clear();
            }
            let n = rr.entry(query_key(query)).or_insert(0);
            let i = *n % kites.len();
            *n = n.wrapping_add(1);
            i
        };
        Ok(self.client_for(&kites[index]))
    }

    /// A client (not yet connected) for a `getKites` result or watch event, with its token
    /// as credential and automatic token renewal.
    pub fn client_for(&self, kite: &KiteWithToken) -> Client {
        let client = Client::new(self.core.clone(), kite.url.clone());
        client.set_remote_kite(kite.kite.clone());
        client.set_auth(Some(Auth::token(kite.token.clone())));
        let handle = renew::start(self.clone(), &client, kite.kite.clone());
        self.state.track(handle);
        client
    }

    /// A token for calling the one kite matching `query` (`getToken`; `no kites found`
    /// when none matches).
    pub async fn get_token(&self, query: &KontrolQuery) -> Result<String, KiteError> {
        self.token(query, false).await
    }

    /// Like [`KontrolClient::get_token`] with `"force": true`: Kontrol mints a new token
    /// instead of returning its cached one.
    pub async fn get_token_force(&self, query: &KontrolQuery) -> Result<String, KiteError> {
        self.token(query, true).await
    }

    pub(crate) async fn token(
        &self,
        query: &KontrolQuery,
        force: bool,
    ) -> Result<String, KiteError> {
        let conn = self.connected().await?;
        let mut arg = query_value(query);
        if force {
            arg["force"] = Value::Bool(true);
        }
        self.call(&conn, "getToken", &json!([arg])).await?.decode()
    }

    /// Kontrol's current public key (`getKey`), adopted as the Kontrol key this kite
    /// trusts for tokens.
    pub async fn get_key(&self) -> Result<String, KiteError> {
        let conn = self.connected().await?;
        let key: String = self.call(&conn, "getKey", &json!([])).await?.decode()?;
        if self.core.config().kontrol_key.trim() != key.trim() {
            self.adopt(&RegisterResult {
                public_key: Some(key.clone()),
                ..RegisterResult::default()
            });
        }
        Ok(key)
    }

    /// Watches kites matching `query`: `getKites` with a `watchCallback` function. The
    /// [`Watcher`] holds the kites matching now ([`Watcher::kites`]) and yields a
    /// [`WatchEvent`] each time a matching kite registers or goes away. Dropping it sends
    /// `cancelWatcher` when Kontrol returned a watcher id. The watch survives a lost
    /// Kontrol connection: the client reconnects (to the next configured Kontrol, or the
    /// same one), watches again and reconciles — see [`Watcher`] for the events this
    /// produces. The stream ends when the Kontrol client is closed.
    pub async fn watch_kites(&self, query: &KontrolQuery) -> Result<Watcher, KiteError> {
        let conn = self.connected().await?;
        let (raw_tx, raw_rx) = tokio::sync::mpsc::channel(self.settings().watch_queue.max(1));
        let result = self.start_watch(&conn, query, raw_tx.clone(), 0).await?;
        Ok(Watcher::start(
            self.clone(),
            query.clone(),
            conn,
            result,
            (raw_tx, raw_rx),
        ))
    }

    /// One watching `getKites` on `conn`; its events are queued as `generation`.
    async fn start_watch(
        &self,
        conn: &Connection,
        query: &KontrolQuery,
        queue: tokio::sync::mpsc::Sender<watch::Queued>,
        generation: u64,
    ) -> Result<GetKitesResult, KiteError> {
        // The function travels inside the argument object (as `"[Function]"`).
        let arg = watch::WatchArgs {
            query: query_value(query),
            watch_callback: watch::callback(queue, generation),
            who: Value::Null,
        };
        let timeout = self.timeout();
        conn.tell_with_timeout("getKites", &(arg,), Some(timeout))
            .await?
            .decode()
    }

    /// Stops everything this Kontrol client runs in the background (registration loops,
    /// HTTP heartbeats, token renewers) and closes the connection to Kontrol. Later
    /// operations fail.
    pub async fn close(&self) {
        self.state.closed.store(true, Ordering::SeqCst);
        // Wakes watchers waiting for a reconnect: they see `closed` and end.
        self.state
            .connected_gen
            .send_modify(|g| *g = g.wrapping_add(1));
        if let Some(t) = lock(&self.state.http_task).take() {
            t.abort();
        }
        for t in lock(&self.state.tasks).drain(..) {
            t.abort();
        }
        let client = lock(&self.state.client).take();
        if let Some(c) = client {
            c.close().await;
        }
    }
}

/// Go's HTTP re-registration back-off: initial × multiplier, ± 50 % jitter, capped.
struct HttpBackoff {
    next: f64,
    multiplier: f64,
    max: f64,
}

impl HttpBackoff {
    fn new(settings: &KontrolSettings) -> Self {
        HttpBackoff {
            next: settings.http_backoff_initial.as_secs_f64(),
            multiplier: settings.http_backoff_multiplier.max(1.0),
            max: settings
                .http_backoff_max
                .as_secs_f64()
                .max(settings.http_backoff_initial.as_secs_f64()),
        }
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.next.min(self.max);
        self.next = (self.next * self.multiplier).min(self.max);
        let jitter: f64 = rand::random::<f64>() - 0.5;
        Duration::from_secs_f64((base + base * jitter).max(0.0))
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<KontrolClient>();
    is::<Weak<KontrolState>>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_base_strips_kite() {
        assert_eq!(http_base("http://k:4000/kite"), "http://k:4000");
        assert_eq!(http_base("http://k:4000/kite/"), "http://k:4000");
        assert_eq!(http_base("http://k:4000/x"), "http://k:4000/x");
    }

    #[test]
    fn http_backoff_grows_and_caps() {
        let settings = KontrolSettings::default();
        let mut b = HttpBackoff::new(&settings);
        let d = b.next_delay().as_secs_f64();
        assert!((15.0..=45.0).contains(&d), "{d}");
        let d = b.next_delay().as_secs_f64();
        assert!((25.5..=76.5).contains(&d), "{d}");
        for _ in 0..20 {
            b.next_delay();
        }
        let d = b.next_delay().as_secs_f64();
        assert!((150.0..=450.0).contains(&d), "{d}");
    }

    #[test]
    fn register_result_shapes() {
        let r: RegisterResult =
            serde_json::from_str(r#"{"url":"http://a/kite","heartbeatInterval":0}"#).unwrap();
        assert_eq!(r.url, "http://a/kite");
        assert_eq!(r.public_key, None);
        let h: HttpRegisterResult = serde_json::from_str(r#"{"err":"empty URL"}"#).unwrap();
        assert_eq!(h.err.as_deref(), Some("empty URL"));
    }
}
