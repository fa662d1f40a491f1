//! Kontrol as a kite (PROTOCOL.md 8): the `kontrol` kite serving `register`, `getKites`,
//! `getToken`, `getKey`, `registerMachine` and `cancelWatcher` over SockJS, plus the HTTP
//! endpoints of [`crate::http`], all backed by a [`Kontrol`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use kontrol::kite_service::KontrolKite;
//! use kontrol::storage::{Storage, StorageConfig};
//! use kontrol::KontrolConfig;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let storage = Arc::new(Storage::connect(&StorageConfig::default()).await?);
//! let kite = KontrolKite::new_kite("0.0.1")?; // port 4000
//! let config = KontrolConfig::new("kontrol", "http://kontrol.example.com:4000/kite");
//! let server = KontrolKite::start(kite, config, storage).await?;
//! server.serve().await?;
//! # Ok(()) }
//! ```
//!
//! On `register` over a kite connection, Kontrol calls `kite.heartbeat` on the caller with
//! `[interval_seconds, callback]` — queued before the `register` response, as Go does — and
//! each invocation of the callback extends the registration by interval + grace. Watchers
//! started on a connection stop when it closes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;

use kite::{Connection, Function, KiteError, RemoteFunction, Request};
use kite_protocol::{Authentication, Kite as Identity};

use crate::args::{self, GetKitesArgs, WatchStyle};
use crate::config::{KontrolConfig, DEFAULT_PORT, KONTROL_NAME};
use crate::error::KontrolError;
use crate::service::{GetKitesResult, Kontrol, RegisterResult};
use crate::storage::{Registration, Storage};
use crate::watch::WatchSink;

/// The `kontrol` kite and the [`Kontrol`] behind it.
pub struct KontrolKite {
    kite: kite::Kite,
    kontrol: Kontrol,
}

impl std::fmt::Debug for KontrolKite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KontrolKite")
            .field("kite", &self.kite)
            .field("kontrol", &self.kontrol)
            .finish()
    }
}

/// Kontrol's authenticator, shared with the kite runtime.
struct SharedAuth(Arc<kite::auth::Authenticator>);

impl kite::Authenticate for SharedAuth {
    fn authenticate<'a>(
        &'a self,
        auth: &'a kite::Auth,
        local: &'a Identity,
    ) -> kite::handler::AuthFuture<'a> {
        kite::Authenticate::authenticate(&*self.0, auth, local)
    }

    // A connection reuses a success while the authenticator's window and epoch hold (a key
    // rotation or deletion moves the epoch on), as any kite serving with it does.
    fn reuse_for(&self, auth: &kite::Auth, local: &Identity) -> Option<kite::auth::Validity> {
        kite::Authenticate::reuse_for(&*self.0, auth, local)
    }

    fn epoch(&self) -> u64 {
        kite::Authenticate::epoch(&*self.0)
    }
}

fn to_authentication(auth: Option<&kite::Auth>) -> Option<Authentication> {
    auth.map(|a| Authentication::new(a.kind.clone(), a.key.clone()))
}

fn wire(e: KontrolError) -> KiteError {
    e.to_kite_error()
}

/// Scopes watchers to the connection they were started on.
fn owner_of(conn: &Connection) -> String {
    let info = conn.info();
    match info.remote_addr() {
        Some(addr) => format!("{}:{}@{addr}", info.transport().as_str(), info.id()),
        None => format!("{}:{}", info.transport().as_str(), info.id()),
    }
}

/// The identity a `register` request claims: the request's own `kite` (Q7), with the
/// username as the caller sent it when the runtime still knows it (the connection's first
/// request came from the same kite), so that a kite claiming another user's name is caught.
fn claimed_identity(r: &Request) -> Identity {
    let mut kite = r.caller().clone();
    if let Some(first) = r.connection().remote_kite() {
        if first.id == kite.id {
            kite.username.clone_from(&first.username);
        }
    }
    kite
}

impl KontrolKite {
    /// A kite named `kontrol` with the given version (Go's default `0.0.1`), listening on
    /// port 4000 of all interfaces; adjust `config.ip`/`config.port` before
    /// [`start`](Self::start).
    pub fn new_kite(version: &str) -> Result<kite::Kite, kite::NewKiteError> {
        let mut kite = kite::Kite::new(KONTROL_NAME, version)?;
        kite.config.port = DEFAULT_PORT;
        Ok(kite)
    }

    /// Binds `kite`'s listener, starts Kontrol on `storage` and installs the methods, the
    /// authenticator (kite keys signed by any stored pair; tokens of this Kontrol) and the
    /// HTTP endpoints. Kontrol's identity is the kite's (name, version, hostname, id) with
    /// username, environment and region from `config.identity`; an empty
    /// `config.kontrol_url` becomes the kite's own URL. Run [`serve`](Self::serve) next.
    pub async fn start(
        mut kite: kite::Kite,
        mut config: KontrolConfig,
        storage: Arc<Storage>,
    ) -> Result<KontrolKite, KontrolError> {
        kite.config.username.clone_from(&config.identity.username);
        kite.config
            .environment
            .clone_from(&config.identity.environment);
        kite.config.region.clone_from(&config.identity.region);
        kite.listen()
            .await
            .map_err(|e| KontrolError::InvalidArgument(format!("kontrol listener: {e}")))?;
        config.identity = kite.identity();
        if config.kontrol_url.is_empty() {
            config.kontrol_url = kite.url().unwrap_or_default();
        }
        let kontrol = Kontrol::start(config, storage).await?;
        kite.config.kontrol_user = kontrol.config().username().to_owned();
        kite.config
            .kontrol_url
            .clone_from(&kontrol.config().kontrol_url);
        kite.config.kontrol_key = kontrol.public_key();
        kite.config.kite_key = kontrol.kite_key();
        install(&kite, &kontrol);
        Ok(KontrolKite { kite, kontrol })
    }

    /// Starts Kontrol inside this process, for tests and embedding: a [`new_kite`](Self::new_kite)
    /// listening on 127.0.0.1 with an ephemeral port, [`start`](Self::start)ed on
    /// `storage` and served on a spawned task (a serve error is logged). Its URL is
    /// [`url`](Self::url); stop it with [`shutdown`](Self::shutdown).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use kontrol::kite_service::KontrolKite;
    /// use kontrol::storage::{EmbeddedConfig, Storage, StorageConfig};
    /// use kontrol::KontrolConfig;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let embedded = EmbeddedConfig::new(dir.path().join("data"));
    /// let storage = Storage::connect(&StorageConfig::Embedded(embedded)).await?;
    /// let mut config = KontrolConfig::new("kontrol", "");
    /// config.key_bits = 1024; // quick to generate; keep the default in production
    /// let kontrol = KontrolKite::spawn_local(config, Arc::new(storage)).await?;
    /// assert!(kontrol.url().is_some_and(|u| u.starts_with("http://127.0.0.1:")));
    /// kontrol.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn spawn_local(
        config: KontrolConfig,
        storage: Arc<Storage>,
    ) -> Result<Arc<KontrolKite>, KontrolError> {
        let mut kite = Self::new_kite(env!("CARGO_PKG_VERSION"))
            .map_err(|e| KontrolError::InvalidArgument(format!("kontrol kite: {e}")))?;
        kite.config.ip = "127.0.0.1".into();
        kite.config.port = 0;
        let server = Arc::new(Self::start(kite, config, storage).await?);
        let s = server.clone();
        tokio::spawn(async move {
            if let Err(e) = s.serve().await {
                tracing::error!("in-process Kontrol: {e}");
            }
        });
        Ok(server)
    }

    /// The kite.
    pub fn kite(&self) -> &kite::Kite {
        &self.kite
    }

    /// The Kontrol core.
    pub fn kontrol(&self) -> &Kontrol {
        &self.kontrol
    }

    /// The URL kites dial (`http://<ip>:<port>/kite`).
    pub fn url(&self) -> Option<String> {
        self.kite.url()
    }

    /// Serves until [`shutdown`](Self::shutdown) (or the kite's shutdown handle).
    pub async fn serve(&self) -> Result<(), kite::ServeError> {
        self.kite.serve().await
    }

    /// Stops Kontrol (removing its own registration) and the kite's server.
    pub async fn shutdown(&self) {
        self.kontrol.shutdown().await;
        self.kite.shutdown_handle().shutdown();
    }
}

/// Installs Kontrol's methods, authenticator, disconnect hook and HTTP endpoints on `kite`.
/// [`KontrolKite::start`] does this; use it directly to add Kontrol to a kite you set up
/// yourself (its identity should be `kontrol.identity()`).
pub fn install(kite: &kite::Kite, kontrol: &Kontrol) {
    kite.set_authenticator(SharedAuth(kontrol.authenticator()));

    let k = kontrol.clone();
    kite.handle_func("register", move |r: Request| {
        let k = k.clone();
        async move { register(&k, r).await }
    });
    let k = kontrol.clone();
    kite.handle_func("getKites", move |r: Request| {
        let k = k.clone();
        async move { get_kites(&k, r).await }
    });
    let k = kontrol.clone();
    kite.handle_func("getToken", move |r: Request| {
        let k = k.clone();
        async move {
            k.get_token(r.args().raw().first(), r.username())
                .await
                .map_err(wire)
        }
    });
    let k = kontrol.clone();
    kite.handle_func("getKey", move |r: Request| {
        let k = k.clone();
        async move {
            k.get_key(to_authentication(r.auth()).as_ref())
                .await
                .map_err(wire)
        }
    });
    let k = kontrol.clone();
    kite.handle_func("registerMachine", move |r: Request| {
        let k = k.clone();
        async move {
            k.register_machine(&r.caller().username, r.args().raw().first())
                .await
                .map_err(wire)
        }
    })
    .disable_authentication();
    let k = kontrol.clone();
    kite.handle_func("cancelWatcher", move |r: Request| {
        let k = k.clone();
        async move {
            let id = args::watcher_id(r.args().raw().first()).map_err(wire)?;
            k.cancel_watcher(&owner_of(r.connection()), &id)
                .map_err(wire)?;
            Ok(Value::Null)
        }
    });

    let k = kontrol.clone();
    kite.on_disconnect(move |conn| {
        if conn.role() == kite::Role::Accepted {
            let n = k.cancel_watchers(&owner_of(conn));
            if n > 0 {
                tracing::debug!(watchers = n, "kontrol: connection closed, watchers stopped");
            }
        }
    });

    kite.add_routes(crate::http::routes(kontrol.clone()));
}

async fn register(k: &Kontrol, r: Request) -> Result<RegisterResult, KiteError> {
    let identity = claimed_identity(&r);
    let auth = to_authentication(r.auth());
    let registered = k
        .register(&identity, auth.as_ref(), r.args().raw().first())
        .await
        .map_err(wire)?;

    // Ask the kite to heartbeat: `kite.heartbeat [interval, ping]`. The call is queued
    // before this handler returns, so it precedes the register response on the wire.
    let config = k.config();
    let interval = config.heartbeat_interval_secs();
    let ping = heartbeat_callback(k.clone(), registered.registration.clone(), config);
    let conn = r.connection().clone();
    let timeout = config.heartbeat_call_timeout;
    let kite_name = registered.registration.kite.to_string();
    let mut call = Box::pin(async move {
        conn.tell_with_timeout("kite.heartbeat", &(interval, ping), Some(timeout))
            .await
    });
    let log = move |result: Result<kite::Response, KiteError>| {
        if let Err(e) = result {
            tracing::warn!(kite = %kite_name, error = %e, "kontrol: kite.heartbeat call failed");
        }
    };
    match futures_util::future::poll_immediate(&mut call).await {
        Some(result) => log(result),
        None => {
            tokio::spawn(async move { log(call.await) });
        }
    }
    Ok(registered.result)
}

/// The `kite.heartbeat` callback: each invocation extends the registration. Invocations
/// closer together than half the interval, or while the previous one is still being
/// stored, are ignored (a kite cannot make Kontrol write faster than that).
fn heartbeat_callback(k: Kontrol, registration: Registration, config: &KontrolConfig) -> Function {
    let min_gap = config.heartbeat_interval / 2;
    let last: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let busy = Arc::new(AtomicBool::new(false));
    let registration = Arc::new(registration);
    Function::new(move |_args| {
        let now = Instant::now();
        {
            let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| now.duration_since(t) < min_gap) {
                return;
            }
            *last = Some(now);
        }
        if busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let (k, registration, busy) = (k.clone(), Arc::clone(&registration), Arc::clone(&busy));
        tokio::spawn(async move {
            if let Err(e) = k.heartbeat(&registration).await {
                tracing::warn!(kite = %registration.kite, error = %e, "kontrol: heartbeat not stored");
            }
            busy.store(false, Ordering::Release);
        });
    })
}

/// The watch functions a `getKites` argument may carry.
#[derive(Deserialize)]
struct WatchFunctions {
    #[serde(rename = "watchHandler", default)]
    handler: Option<RemoteFunction>,
    #[serde(rename = "watchCallback", default)]
    callback: Option<RemoteFunction>,
}

async fn get_kites(k: &Kontrol, r: Request) -> Result<GetKitesResult, KiteError> {
    let args = GetKitesArgs::decode(r.args().raw().first()).map_err(wire)?;
    let Some(style) = args.watch else {
        return Ok(GetKitesResult {
            kites: k.get_kites(&args.query, r.username()).await.map_err(wire)?,
            watcher_id: None,
        });
    };
    let functions: WatchFunctions = r.args().get(0).map_err(|e| {
        KiteError::argument(format!(
            "getKites: {} must be a function: {}",
            style.key(),
            e.message
        ))
    })?;
    let function = match style {
        WatchStyle::Handler => functions.handler,
        WatchStyle::Callback => functions.callback,
    }
    .ok_or_else(|| KiteError::argument(format!("getKites: {} must be a function", style.key())))?;
    let sink: WatchSink = Box::new(move |event: Value| {
        let function = function.clone();
        Box::pin(async move { function.call(&(event,)).await.is_ok() })
    });
    k.watch(
        &owner_of(r.connection()),
        &args.query,
        r.username(),
        style,
        sink,
    )
    .await
    .map_err(wire)
}
