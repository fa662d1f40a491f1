//! The [`Kite`]: identity, configuration, methods, and the shared core every connection
//! serves from.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use kite_protocol::sockjs::Escaped;
use serde::Serialize;
use serde_json::Value;
use tower::{Layer, Service};

use crate::client::Client;
use crate::connection::{ConnShared, Connection};
use crate::error::KiteError;
use crate::handler::{
    handler_fn, layer_fn, Authenticate, FinalHandler, HandlerService, LayerFn, Method, MethodEntry,
    PostHandler, PreHandler,
};
use crate::protocol::Kite as KiteIdentity;
use crate::request::Request;
use crate::settings::Limits;
use crate::Config;
use kite_sockjs::session::Session;

/// Why a kite could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NewKiteError {
    /// The name is empty.
    #[error("kite name must not be empty")]
    EmptyName,
    /// The version does not have exactly three dot-separated parts.
    #[error("kite version must have three dot-separated parts (e.g. 1.0.0), got {0:?}")]
    BadVersion(String),
    /// The name or version contains `/`.
    #[error("kite name and version must not contain '/'")]
    Slash,
    /// The configuration could not be loaded ([`Kite::load`]).
    #[error("loading the kite configuration: {0}")]
    Config(String),
}

#[derive(Default, Clone)]
pub(crate) struct Hooks {
    pub pre: Vec<PreHandler>,
    pub post: Vec<PostHandler>,
    pub finals: Vec<FinalHandler>,
}

type ConnHook = Arc<dyn Fn(&Connection) + Send + Sync>;

#[derive(Default, Clone)]
pub(crate) struct ConnHooks {
    pub on_connect: Vec<ConnHook>,
    pub on_disconnect: Vec<ConnHook>,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// State shared by a kite and all its connections and clients.
pub(crate) struct Core {
    name: String,
    version: String,
    id: String,
    hostname: String,
    config: RwLock<Arc<Config>>,
    /// The identity derived from `name`/`version`/`id`/`hostname` and the current config,
    /// with its request JSON; replaced whenever the config is.
    ident: RwLock<Arc<CachedIdentity>>,
    limits: RwLock<Arc<Limits>>,
    methods: RwLock<HashMap<String, Arc<MethodEntry>>>,
    layers: RwLock<Vec<LayerFn>>,
    hooks: RwLock<Arc<Hooks>>,
    conn_hooks: RwLock<Arc<ConnHooks>>,
    authenticator: RwLock<Option<Arc<dyn Authenticate>>>,
    default_auth: Arc<crate::auth::Authenticator>,
    /// Moves on when the authenticator in force or the local identity changes: a
    /// connection reuses an earlier authentication only while this keeps its value.
    auth_epoch: AtomicU64,
    /// Accepted connections, for graceful shutdown.
    accepted: Mutex<HashMap<usize, Weak<ConnShared>>>,
    pub(crate) heartbeat: Mutex<Option<tokio::task::AbortHandle>>,
    pub(crate) url: RwLock<Option<String>>,
    pub(crate) server: crate::server::ServerState,
    next_client: AtomicU64,
    /// State of the Kontrol client (crate::kontrol_client), created on first use.
    pub(crate) kontrol: std::sync::OnceLock<Arc<crate::kontrol_client::KontrolState>>,
}

/// The kite's identity and its JSON as sent in every request's `kite` key, computed once
/// per configuration change instead of per call.
#[derive(Debug)]
pub(crate) struct CachedIdentity {
    pub kite: KiteIdentity,
    pub json: Box<str>,
    /// `json` escaped for SockJS frames.
    pub escaped: Escaped,
}

impl CachedIdentity {
    fn new(config: &Config, name: &str, version: &str, hostname: &str, id: &str) -> CachedIdentity {
        let kite = KiteIdentity {
            username: config.username.clone(),
            environment: config.environment.clone(),
            name: name.to_string(),
            version: version.to_string(),
            region: config.region.clone(),
            hostname: hostname.to_string(),
            id: id.to_string(),
        };
        let json = kite_protocol::envelope::kite_json(&kite).into_boxed_str();
        let escaped = Escaped::new(&json);
        CachedIdentity {
            kite,
            json,
            escaped,
        }
    }
}

impl Core {
    pub(crate) fn identity(&self) -> KiteIdentity {
        self.cached_identity().kite.clone()
    }

    /// The identity with its request JSON (an `Arc` clone, no copy).
    pub(crate) fn cached_identity(&self) -> Arc<CachedIdentity> {
        read(&self.ident)
    }

    pub(crate) fn config(&self) -> Arc<Config> {
        read(&self.config)
    }

    /// Replaces the configuration snapshot (keys adopted from Kontrol).
    pub(crate) fn set_config(&self, config: Config) {
        self.store_config(Arc::new(config));
    }

    fn store_config(&self, config: Arc<Config>) {
        let ident =
            CachedIdentity::new(&config, &self.name, &self.version, &self.hostname, &self.id);
        // Config first, then identity: both under their own locks, never held together.
        *write(&self.config) = config;
        let mut current = write(&self.ident);
        if current.kite != ident.kite {
            *current = Arc::new(ident);
            // After the new identity is in place (see `auth_epoch`).
            self.auth_epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The built-in authenticator.
    pub(crate) fn default_authenticator(&self) -> Arc<crate::auth::Authenticator> {
        self.default_auth.clone()
    }

    pub(crate) fn limits(&self) -> Arc<Limits> {
        read(&self.limits)
    }

    pub(crate) fn method(&self, name: &str) -> Option<Arc<MethodEntry>> {
        match self.methods.read() {
            Ok(g) => g.get(name).cloned(),
            Err(p) => p.into_inner().get(name).cloned(),
        }
    }

    pub(crate) fn hooks(&self) -> Arc<Hooks> {
        read(&self.hooks)
    }

    /// The authenticator in force: the one set with [`Kite::set_authenticator`], else the
    /// built-in one.
    pub(crate) fn authenticator(&self) -> Arc<dyn Authenticate> {
        match read(&self.authenticator) {
            Some(a) => a,
            None => self.default_auth.clone(),
        }
    }

    /// Changes whenever the authenticator in force or the local identity changes. Read it
    /// before [`Core::authenticator`] and [`Core::cached_identity`]: both are replaced
    /// before it moves on.
    pub(crate) fn auth_epoch(&self) -> u64 {
        self.auth_epoch.load(Ordering::Acquire)
    }

    pub(crate) fn connection_opened(&self, conn: &Arc<ConnShared>) {
        let c = Connection(conn.clone());
        if c.role() == kite_sockjs::Role::Accepted {
            lock(&self.accepted).insert(Arc::as_ptr(conn) as usize, Arc::downgrade(conn));
        }
        for h in &read(&self.conn_hooks).on_connect {
            h(&c);
        }
    }

    pub(crate) fn connection_closed(&self, conn: &Arc<ConnShared>) {
        lock(&self.accepted).remove(&(Arc::as_ptr(conn) as usize));
        let c = Connection(conn.clone());
        for h in &read(&self.conn_hooks).on_disconnect {
            h(&c);
        }
    }

    pub(crate) fn accepted_connections(&self) -> Vec<Arc<ConnShared>> {
        lock(&self.accepted)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    pub(crate) fn next_client_id(&self) -> u64 {
        self.next_client.fetch_add(1, Ordering::Relaxed)
    }
}

/// A kite: a named, versioned service with methods, that serves callers and calls other
/// kites.
///
/// Configure it through the public fields before starting it; [`Kite::listen`],
/// [`Kite::run`], [`Kite::new_client`] and [`Kite::accept`] take a snapshot of them.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let mut k = kite::Kite::new("first", "1.0.0")?;
/// k.config.port = 6000;
/// k.config.disable_authentication = true;
/// k.handle_func("square", |r: kite::Request| async move {
///     let a: f64 = r.args().one()?;
///     Ok(a * a)
/// });
/// k.run().await?;
/// # Ok(()) }
/// ```
pub struct Kite {
    /// Go-compatible configuration (identity fields, port, authentication, Kontrol...).
    pub config: Config,
    /// Runtime bounds and timeouts.
    pub limits: Limits,
    /// TLS for the listener (rustls with ring); `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// SockJS server settings (prefix `/kite`, heartbeat 10 s, raw WebSocket on...).
    pub sockjs: kite_sockjs::server::ServerConfig,
    pub(crate) core: Arc<Core>,
}

impl fmt::Debug for Kite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kite")
            .field("name", &self.core.name)
            .field("version", &self.core.version)
            .field("id", &self.core.id)
            .finish()
    }
}

impl Kite {
    /// Creates a kite with default configuration (no kite.key is read: PROTOCOL.md 7.3
    /// "defaults only") and the default methods. Fails unless `name` is non-empty and
    /// `version` has exactly three dot-separated parts (Go panics there; we return an
    /// error).
    pub fn new(name: &str, version: &str) -> Result<Kite, NewKiteError> {
        Kite::with_config(name, version, Config::default())
    }

    /// Creates a kite with the full configuration load of PROTOCOL.md 7.3: defaults, then
    /// `$KITE_HOME/kite.key` (must exist), then `KITE_*` environment variables.
    pub fn load(name: &str, version: &str) -> Result<Kite, NewKiteError> {
        let config = Config::load().map_err(|e| NewKiteError::Config(e.to_string()))?;
        Kite::with_config(name, version, config)
    }

    /// Creates a kite with the given configuration (e.g. a fully loaded one).
    pub fn with_config(name: &str, version: &str, config: Config) -> Result<Kite, NewKiteError> {
        if name.is_empty() {
            return Err(NewKiteError::EmptyName);
        }
        if name.contains('/') || version.contains('/') {
            return Err(NewKiteError::Slash);
        }
        if version.split('.').count() != 3 {
            return Err(NewKiteError::BadVersion(version.to_string()));
        }
        let limits = Limits::default();
        let id = uuid::Uuid::new_v4().to_string();
        let hostname = crate::default_methods::hostname();
        let ident = CachedIdentity::new(&config, name, version, &hostname, &id);
        let core = Arc::new(Core {
            name: name.to_string(),
            version: version.to_string(),
            id,
            hostname,
            config: RwLock::new(Arc::new(config.clone())),
            ident: RwLock::new(Arc::new(ident)),
            limits: RwLock::new(Arc::new(limits.clone())),
            methods: RwLock::new(HashMap::new()),
            layers: RwLock::new(Vec::new()),
            hooks: RwLock::new(Arc::new(Hooks::default())),
            conn_hooks: RwLock::new(Arc::new(ConnHooks::default())),
            authenticator: RwLock::new(None),
            default_auth: Arc::new(default_authenticator(&config)),
            auth_epoch: AtomicU64::new(0),
            accepted: Mutex::new(HashMap::new()),
            heartbeat: Mutex::new(None),
            url: RwLock::new(None),
            server: crate::server::ServerState::default(),
            next_client: AtomicU64::new(0),
            kontrol: std::sync::OnceLock::new(),
        });
        let k = Kite {
            config,
            limits,
            tls: None,
            sockjs: kite_sockjs::server::ServerConfig::default(),
            core,
        };
        crate::default_methods::register(&k);
        Ok(k)
    }

    /// Pushes the public configuration fields into the running core.
    pub(crate) fn sync(&self) {
        self.core.store_config(Arc::new(self.config.clone()));
        *write(&self.core.limits) = Arc::new(self.limits.clone());
        let auth = &self.core.default_auth;
        if auth.kontrol_user() != self.config.kontrol_user {
            auth.set_kontrol_user(&self.config.kontrol_user);
        }
        if auth.kontrol_key() != self.config.kontrol_key.trim() {
            if let Err(e) = auth.set_kontrol_key(&self.config.kontrol_key) {
                tracing::warn!("invalid Kontrol key in the configuration: {e}");
            }
        }
        // Keys adopted from Kontrol (RegisterResult, getKey) outlive configuration pushes.
        crate::kontrol_client::reapply_adopted(&self.core);
    }

    /// The default authenticator (verifies `kiteKey` and `token`); register verifiers for
    /// more credential types on it (`sessionID`, ...).
    pub fn authenticator(&self) -> Arc<crate::auth::Authenticator> {
        self.core.default_auth.clone()
    }

    /// The kite's identity (username, environment and region from the configuration).
    pub fn identity(&self) -> KiteIdentity {
        let mut id = self.core.identity();
        id.username = self.config.username.clone();
        id.environment = self.config.environment.clone();
        id.region = self.config.region.clone();
        id
    }

    /// The kite's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The kite's version.
    pub fn version(&self) -> &str {
        &self.core.version
    }

    /// The instance id (a UUID generated at construction).
    pub fn id(&self) -> &str {
        &self.core.id
    }

    /// The URL callers dial (`http(s)://<ip>:<port>/kite`) once the kite listens.
    pub fn url(&self) -> Option<String> {
        read(&self.core.url)
    }

    /// Registers a method handled by an async closure returning `Result<T, KiteError>`
    /// (`T: Serialize`). A method registered again replaces the previous one.
    ///
    /// ```
    /// # let k = kite::Kite::new("math", "1.0.0").unwrap();
    /// k.handle_func("square", |r: kite::Request| async move {
    ///     let a: f64 = r.args().one()?;
    ///     Ok(a * a)
    /// })
    /// .throttle(100.0, 10);
    /// ```
    pub fn handle_func<F, Fut, T>(&self, method: &str, f: F) -> Method
    where
        F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<T, KiteError>> + Send + 'static,
        T: Serialize,
    {
        let direct = crate::handler::direct_fn(f.clone());
        self.register_method(method, handler_fn(f), Some(direct))
    }

    /// Registers a method handled by any tower service.
    pub fn handle<S>(&self, method: &str, service: S) -> Method
    where
        S: Service<Request, Response = Value, Error = KiteError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        self.register_method(method, HandlerService::new(service), None)
    }

    fn register_method(
        &self,
        method: &str,
        raw: HandlerService,
        direct: Option<crate::handler::DirectFn>,
    ) -> Method {
        let layers = read(&self.core.layers);
        let entry = Arc::new(MethodEntry::new(method, raw, direct, &layers));
        write(&self.core.methods).insert(method.to_string(), entry.clone());
        Method { entry }
    }

    /// Removes a method; later calls get `methodNotFound`.
    pub fn remove_method(&self, method: &str) -> bool {
        write(&self.core.methods).remove(method).is_some()
    }

    /// Settings of a registered method.
    pub fn method(&self, method: &str) -> Option<Method> {
        self.core.method(method).map(|entry| Method { entry })
    }

    /// Wraps every method's handler (present and future) in a tower layer. The first
    /// layer added is the outermost. Service errors that are not [`KiteError`]s become
    /// `genericError` with their text.
    pub fn layer<L>(&self, layer: L)
    where
        L: Layer<HandlerService> + Send + Sync + 'static,
        L::Service: Service<Request, Response = Value> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Error: Into<tower::BoxError>,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        let layers = {
            let mut l = write(&self.core.layers);
            l.push(layer_fn(layer));
            l.clone()
        };
        let methods: Vec<_> = match self.core.methods.read() {
            Ok(g) => g.values().cloned().collect(),
            Err(p) => p.into_inner().values().cloned().collect(),
        };
        for m in methods {
            m.recompose(&layers);
        }
    }

    /// Adds a handler run before every method (after authentication and throttling).
    pub fn pre_handle(
        &self,
        f: impl Fn(&Request) -> Result<(), KiteError> + Send + Sync + 'static,
    ) {
        let mut h = write(&self.core.hooks);
        let mut new = (**h).clone();
        new.pre.push(Arc::new(f));
        *h = Arc::new(new);
    }

    /// Adds a handler run after every method; it may change the outcome.
    pub fn post_handle(
        &self,
        f: impl Fn(&Request, &mut Result<Value, KiteError>) + Send + Sync + 'static,
    ) {
        let mut h = write(&self.core.hooks);
        let mut new = (**h).clone();
        new.post.push(Arc::new(f));
        *h = Arc::new(new);
    }

    /// Adds a handler run after each response was sent, with the outcome.
    pub fn final_func(
        &self,
        f: impl Fn(&Request, &Result<Value, KiteError>) + Send + Sync + 'static,
    ) {
        let mut h = write(&self.core.hooks);
        let mut new = (**h).clone();
        new.finals.push(Arc::new(f));
        *h = Arc::new(new);
    }

    /// Runs `f` for every new connection (accepted or dialed).
    pub fn on_connect(&self, f: impl Fn(&Connection) + Send + Sync + 'static) {
        let mut h = write(&self.core.conn_hooks);
        let mut new = (**h).clone();
        new.on_connect.push(Arc::new(f));
        *h = Arc::new(new);
    }

    /// Runs `f` whenever a connection (accepted or dialed) ends.
    pub fn on_disconnect(&self, f: impl Fn(&Connection) + Send + Sync + 'static) {
        let mut h = write(&self.core.conn_hooks);
        let mut new = (**h).clone();
        new.on_disconnect.push(Arc::new(f));
        *h = Arc::new(new);
    }

    /// Replaces the authenticator deciding `kiteKey`/`token`/other credentials.
    pub fn set_authenticator(&self, a: impl Authenticate) {
        *write(&self.core.authenticator) = Some(Arc::new(a));
        // After the new one is in place (see `Core::auth_epoch`).
        self.core.auth_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Serves a session accepted by some transport (e.g. a tunnel): requests on it are
    /// authenticated as on any accepted connection.
    pub fn accept(&self, session: Session) -> Connection {
        self.sync();
        Connection::start(self.core.clone(), self.core.limits(), session, None)
    }

    /// A cloneable handle that serves sessions accepted by any transport (what the SockJS
    /// router calls for each new session; also usable for tunnels and tests).
    pub fn acceptor(&self) -> Acceptor {
        self.sync();
        Acceptor {
            core: self.core.clone(),
        }
    }

    /// A client for the kite at `url` (e.g. `http://localhost:6000/kite`). It sends the
    /// kite key from the configuration as `kiteKey` credential when one is set.
    pub fn new_client(&self, url: &str) -> Client {
        self.sync();
        Client::new(self.core.clone(), url.to_string())
    }
}

fn default_authenticator(config: &Config) -> crate::auth::Authenticator {
    match crate::auth::Authenticator::from_config(config) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("invalid Kontrol key in the configuration: {e}");
            crate::auth::Authenticator::new(crate::auth::AuthSettings::default())
                .expect("an authenticator without a Kontrol key always builds")
        }
    }
}

/// Serves accepted sessions for a kite (see [`Kite::acceptor`]).
#[derive(Clone)]
pub struct Acceptor {
    core: Arc<Core>,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Acceptor")
    }
}

impl Acceptor {
    /// Starts serving `session` (requests on it are authenticated when methods require
    /// it) and returns its connection.
    pub fn accept(&self, session: Session) -> Connection {
        Connection::start(self.core.clone(), self.core.limits(), session, None)
    }
}
