//! Kontrol's storage: kite registrations with expiry, a change feed, and RSA key pairs,
//! behind one type, [`Storage`], with three interchangeable backends (PROTOCOL.md 8.3–8.5):
//!
//! * **embedded** (default): a [redb] database in a data directory plus an in-memory index;
//!   nothing else to run, survives restarts, one Kontrol process per data directory;
//! * **PostgreSQL**: tables in a schema of a database shared by any number of Kontrol
//!   replicas; changes reach every replica through `LISTEN`/`NOTIFY`;
//! * **etcd v3**: keys under a prefix, one lease per registration; changes reach every
//!   replica through etcd watches.
//!
//! Select one with a [`StorageConfig`] and [`connect`]. Every backend gives the same
//! guarantees, checked by the same test suite:
//!
//! * a registration ([`Storage::upsert`]) lives until `now + ttl` unless refreshed
//!   ([`Storage::refresh`]); an expired record is **never** returned by [`Storage::get`], even
//!   before the backend removes it, and a restarted Kontrol serves correct results at once;
//! * [`Storage::watch`] delivers `REGISTER` / `DEREGISTER` events for matching kites —
//!   registrations, deletions and expiries — including those made through other Kontrol
//!   processes sharing the same PostgreSQL database or etcd cluster;
//! * key pairs are persisted (every replica shares them); a deleted pair answers
//!   [`StorageError::KeyPairRemoved`] (`key pair is removed`).
//!
//! Query rules (PROTOCOL.md 1.3, the PostgreSQL behaviour, a superset of etcd's): every
//! non-empty query field must equal the kite's; any subset of fields may be set (gaps
//! allowed, `username` not required); a `version` that parses as a plain version matches
//! exactly, otherwise it must be a constraint list (`>= 1.0, < 1.4`, `~> 1.1`) the kite's
//! version satisfies; a query with every field empty is refused; no match is an empty list.
//! Results come in no particular order (Kontrol shuffles them).

mod codec;
mod embedded;
mod error;
mod etcd;
mod postgres;
mod query;
mod tasks;
mod watch;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use kite_protocol::{Kite, KontrolQuery};

pub use error::{Result, StorageError, ValidationError};
pub use watch::{WatchAction, WatchError, WatchEvent, Watcher};

use query::{CheckedKeyPair, Matcher};

/// Default data directory of the embedded backend (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "kontrol-data";
/// Default PostgreSQL schema.
pub const DEFAULT_PG_SCHEMA: &str = "kontrol";
/// Default etcd key prefix.
pub const DEFAULT_ETCD_PREFIX: &str = "/kontrol";
/// Default etcd endpoint.
pub const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";
/// Default period of the expiry sweep (embedded and PostgreSQL backends).
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What Kontrol stores for a registration: the kite's identity, where to reach it and the
/// id of the key pair its kite key was signed with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Registration {
    /// The kite's identity (every field non-empty, none containing `/`).
    pub kite: Kite,
    /// URL the kite is reachable at (non-empty).
    pub url: String,
    /// Id of the key pair (non-empty).
    pub key_id: String,
}

/// A stored registration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KiteRecord {
    /// The kite's identity.
    pub kite: Kite,
    /// URL the kite is reachable at.
    pub url: String,
    /// Id of the key pair its kite key was signed with.
    pub key_id: String,
    /// When this registration started (kept by upserts and refreshes of a live record).
    pub created_at: SystemTime,
    /// Last upsert or refresh.
    pub updated_at: SystemTime,
    /// When the record expires unless refreshed. Records past this instant are never served.
    pub expires_at: SystemTime,
}

impl KiteRecord {
    /// The registration part of the record.
    pub fn registration(&self) -> Registration {
        Registration {
            kite: self.kite.clone(),
            url: self.url.clone(),
            key_id: self.key_id.clone(),
        }
    }

    /// Whether the record is still live at `now`.
    pub fn is_live_at(&self, now: SystemTime) -> bool {
        self.expires_at > now
    }
}

/// A key pair to add (PROTOCOL.md 8.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKeyPair {
    /// The id; a random UUID when `None`.
    pub id: Option<String>,
    /// Public key, PEM (whitespace around it is trimmed).
    pub public: String,
    /// Private key, PEM (whitespace around it is trimmed).
    pub private: String,
}

/// A stored key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The id (kites' `key_id`, kite keys' `kontrolKey` is the public key).
    pub id: String,
    /// Public key, PEM.
    pub public: String,
    /// Private key, PEM.
    pub private: String,
    /// When it was added.
    pub created_at: SystemTime,
    /// When it was deleted, if it was.
    pub deleted_at: Option<SystemTime>,
}

impl KeyPair {
    /// Whether the pair was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("id", &self.id)
            .field("public", &self.public)
            .field("private", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("deleted_at", &self.deleted_at)
            .finish()
    }
}

/// Bounds on what the storage accepts and buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest identity field, key id or query field, in bytes. Default 255.
    pub max_field_len: usize,
    /// Longest URL, in bytes. Default 2048.
    pub max_url_len: usize,
    /// Longest TTL accepted by `upsert`/`refresh`. Default 1 day.
    pub max_ttl: Duration,
    /// Events buffered per storage for watchers; a watcher further behind gets
    /// [`WatchError::Lagged`]. Default 4096.
    pub watch_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_field_len: 255,
            max_url_len: 2048,
            max_ttl: Duration::from_secs(24 * 3600),
            watch_buffer: 4096,
        }
    }
}

/// Embedded backend configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Directory holding the database file `kontrol.redb` (created if missing). Only one
    /// process may use it at a time.
    pub data_dir: PathBuf,
    /// Period of the expiry sweep that removes expired records and emits `DEREGISTER`.
    /// Default [`DEFAULT_SWEEP_INTERVAL`].
    pub sweep_interval: Duration,
    /// Writes waiting for the database writer; further writers wait. Default 4096.
    pub write_queue: usize,
    /// Input and buffer limits.
    pub limits: Limits,
}

impl EmbeddedConfig {
    /// Defaults with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            data_dir: data_dir.into(),
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            write_queue: 4096,
            limits: Limits::default(),
        }
    }
}

/// PostgreSQL backend configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// Connection string, either key/value (`host=127.0.0.1 port=5432 user=kontrol
    /// dbname=kontrol password=...`) or URL (`postgresql://kontrol@127.0.0.1/kontrol`).
    /// TLS is not supported yet: use a local or otherwise protected network.
    pub conninfo: String,
    /// Schema holding Kontrol's tables (created if missing; lower-case letters, digits and
    /// `_`, at most 48 bytes). Default [`DEFAULT_PG_SCHEMA`].
    pub schema: String,
    /// Connections used for queries (plus one for `LISTEN` once something watches).
    /// Default 4.
    pub pool_size: usize,
    /// Period of the expiry sweep. Default [`DEFAULT_SWEEP_INTERVAL`].
    pub sweep_interval: Duration,
    /// Time allowed to establish a connection. Default 10 s.
    pub connect_timeout: Duration,
    /// Input and buffer limits.
    pub limits: Limits,
}

impl PostgresConfig {
    /// Defaults with the given connection string.
    pub fn new(conninfo: impl Into<String>) -> Self {
        PostgresConfig {
            conninfo: conninfo.into(),
            schema: DEFAULT_PG_SCHEMA.to_owned(),
            pool_size: 4,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            connect_timeout: Duration::from_secs(10),
            limits: Limits::default(),
        }
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection string may carry a password.
        f.debug_struct("PostgresConfig")
            .field("conninfo", &"<redacted>")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("sweep_interval", &self.sweep_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("limits", &self.limits)
            .finish()
    }
}

/// etcd backend configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client endpoints, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix, e.g. `/kontrol`; keys are `<prefix>/kites/...`, `<prefix>/ids/...` and
    /// `<prefix>/keypairs/...`. Default [`DEFAULT_ETCD_PREFIX`].
    pub prefix: String,
    /// Time allowed to connect. Default 10 s.
    pub connect_timeout: Duration,
    /// Time allowed for each request. Default 10 s.
    pub request_timeout: Duration,
    /// Input and buffer limits.
    pub limits: Limits,
}

impl EtcdConfig {
    /// Defaults with the given endpoints.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_ETCD_PREFIX.to_owned(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            limits: Limits::default(),
        }
    }
}

/// Which backend to use, and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// Embedded database in a data directory (the default).
    Embedded(EmbeddedConfig),
    /// PostgreSQL.
    Postgres(PostgresConfig),
    /// etcd v3.
    Etcd(EtcdConfig),
}

impl Default for StorageConfig {
    /// Embedded storage in [`DEFAULT_DATA_DIR`].
    fn default() -> Self {
        StorageConfig::Embedded(EmbeddedConfig::new(DEFAULT_DATA_DIR))
    }
}

impl StorageConfig {
    /// The input and buffer limits of the configuration.
    pub fn limits(&self) -> &Limits {
        match self {
            StorageConfig::Embedded(c) => &c.limits,
            StorageConfig::Postgres(c) => &c.limits,
            StorageConfig::Etcd(c) => &c.limits,
        }
    }
}

/// The backend kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Embedded database.
    Embedded,
    /// PostgreSQL.
    Postgres,
    /// etcd v3.
    Etcd,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Embedded => "embedded",
            BackendKind::Postgres => "postgres",
            BackendKind::Etcd => "etcd",
        })
    }
}

/// Connects to (or opens) the configured storage. Equivalent to [`Storage::connect`].
pub async fn connect(config: &StorageConfig) -> Result<Storage> {
    Storage::connect(config).await
}

enum Backend {
    Embedded(embedded::Embedded),
    Postgres(Box<postgres::Postgres>),
    Etcd(Box<etcd::Etcd>),
}

macro_rules! dispatch {
    ($self:expr, $b:ident => $e:expr) => {
        match &$self.backend {
            Backend::Embedded($b) => $e,
            Backend::Postgres($b) => $e,
            Backend::Etcd($b) => $e,
        }
    };
}

/// Kontrol's storage: kite registrations, their change feed, and key pairs.
///
/// All methods take `&self` and may be called concurrently; share it with an `Arc`. Dropping
/// it stops its background tasks (for the embedded backend it also waits for the database
/// writer to finish its current batch and close the file); [`Storage::close`] does the same
/// without blocking.
pub struct Storage {
    backend: Backend,
    limits: Limits,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("backend", &self.kind())
            .finish_non_exhaustive()
    }
}

/// How a key pair is looked up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyLookup<'a> {
    Id(&'a str),
    Public(&'a str),
}

impl KeyLookup<'_> {
    pub(crate) fn matches(&self, p: &KeyPair) -> bool {
        match self {
            KeyLookup::Id(id) => p.id == *id,
            KeyLookup::Public(public) => p.public == *public,
        }
    }
}

/// What adding a key pair amounts to, given the stored pairs that share its id or public key.
pub(crate) enum AddKeyPair {
    /// Nothing conflicts: store it.
    Insert,
    /// The same pair is already stored: return it.
    Existing(KeyPair),
}

/// Adding is idempotent: a pair with the same public and private key (and the same id, when
/// one was given) is returned as is; a deleted one is [`StorageError::KeyPairRemoved`];
/// any other overlap in id or public key is a conflict.
pub(crate) fn resolve_add_key_pair<'a>(
    new: &CheckedKeyPair,
    stored: impl IntoIterator<Item = &'a KeyPair>,
) -> Result<AddKeyPair> {
    for p in stored {
        if p.public == new.public {
            if p.private != new.private {
                return Err(StorageError::KeyPairConflict(
                    "the public key is stored with another private key".into(),
                ));
            }
            if new.explicit_id && p.id != new.id {
                return Err(StorageError::KeyPairConflict(format!(
                    "the public key is stored under id {}",
                    p.id
                )));
            }
            if p.is_deleted() {
                return Err(StorageError::KeyPairRemoved);
            }
            return Ok(AddKeyPair::Existing(p.clone()));
        }
        if p.id == new.id {
            return Err(StorageError::KeyPairConflict(format!(
                "id {} is used by another key pair",
                p.id
            )));
        }
    }
    Ok(AddKeyPair::Insert)
}

impl Storage {
    /// Connects to (or opens) the configured storage: opens the embedded database and loads
    /// its index, or connects to PostgreSQL and applies migrations, or connects to etcd.
    /// Background expiry sweeping starts at once.
    pub async fn connect(config: &StorageConfig) -> Result<Storage> {
        let limits = config.limits().clone();
        if limits.watch_buffer == 0 {
            return Err(StorageError::Config("watch_buffer must be positive".into()));
        }
        let backend = match config {
            StorageConfig::Embedded(c) => Backend::Embedded(embedded::Embedded::open(c).await?),
            StorageConfig::Postgres(c) => {
                Backend::Postgres(Box::new(postgres::Postgres::connect(c).await?))
            }
            StorageConfig::Etcd(c) => Backend::Etcd(Box::new(etcd::Etcd::connect(c).await?)),
        };
        Ok(Storage { backend, limits })
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Embedded(_) => BackendKind::Embedded,
            Backend::Postgres(_) => BackendKind::Postgres,
            Backend::Etcd(_) => BackendKind::Etcd,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Registers a kite, or re-registers it (same `kite.id`): the record lives until
    /// `now + ttl` unless refreshed. Returns the stored record.
    ///
    /// Emits `REGISTER` when the kite was not live, or its identity, URL or key id changed
    /// (a changed identity also emits `DEREGISTER` of the old one); re-upserting an
    /// identical live record only extends it.
    ///
    /// Errors: [`StorageError::Invalid`] for an empty or malformed field (`Empty Kite field:
    /// region`, `Field "name" must not contain '/'`, `empty url`, `empty key id`, an invalid
    /// TTL); storage failures otherwise.
    pub async fn upsert(&self, registration: &Registration, ttl: Duration) -> Result<KiteRecord> {
        query::validate_registration(registration, &self.limits)?;
        query::validate_ttl(ttl, &self.limits)?;
        dispatch!(self, b => b.upsert(registration, ttl).await)
    }

    /// Heartbeat: extends the live record of kite `id` to `now + ttl`. Returns `false` when
    /// no live record exists (never registered, deleted or expired): Kontrol then answers
    /// `registeragain`. Emits no event.
    pub async fn refresh(&self, id: &str, ttl: Duration) -> Result<bool> {
        query::validate_id(id, &self.limits)?;
        query::validate_ttl(ttl, &self.limits)?;
        dispatch!(self, b => b.refresh(id, ttl).await)
    }

    /// Removes the record of kite `id`. Returns whether a live record was removed. Emits
    /// `DEREGISTER` for any removed record (also one that had expired but was not swept yet).
    pub async fn delete(&self, id: &str) -> Result<bool> {
        query::validate_id(id, &self.limits)?;
        dispatch!(self, b => b.delete(id).await)
    }

    /// The live records matching `query` (see the module documentation for the rules), in
    /// no particular order; empty when nothing matches.
    ///
    /// Errors: [`ValidationError::EmptyQuery`] (`all query fields are empty`),
    /// [`ValidationError::MalformedConstraint`] (`Malformed constraint: latest`), a field
    /// containing `/` or too long.
    pub async fn get(&self, query: &KontrolQuery) -> Result<Vec<KiteRecord>> {
        let matcher = Matcher::compile(query, &self.limits)?;
        dispatch!(self, b => b.get(&matcher).await)
    }

    /// Number of live records.
    pub async fn count(&self) -> Result<u64> {
        dispatch!(self, b => b.count().await)
    }

    /// Subscribes to `REGISTER`/`DEREGISTER` events of the kites matching `query` (same rules
    /// and errors as [`Storage::get`]), made by this or any other Kontrol sharing the
    /// backend. Every change committed after this returns is delivered (unless the watcher
    /// reports a loss). Expiries are reported when the backend removes the record: within
    /// the sweep interval (embedded, PostgreSQL) or the lease expiry (etcd, about a second).
    pub async fn watch(&self, query: &KontrolQuery) -> Result<Watcher> {
        let matcher = Matcher::compile(query, &self.limits)?;
        let rx = dispatch!(self, b => b.subscribe().await)?;
        Ok(Watcher::new(rx, matcher))
    }

    /// Removes expired records now (emitting `DEREGISTER`), returning how many. This also
    /// happens periodically in the background; etcd removes expired records itself (lease
    /// expiry), so there this returns 0.
    pub async fn sweep(&self) -> Result<u64> {
        dispatch!(self, b => b.sweep().await)
    }

    /// Adds a key pair and returns it as stored. Idempotent: adding a pair whose public and
    /// private keys are already stored (under the same id, when one is given) returns the
    /// stored pair — so Kontrol may add its configured pair at every start.
    ///
    /// Errors: [`StorageError::Invalid`] for an empty PEM or id;
    /// [`StorageError::KeyPairRemoved`] if that pair was deleted;
    /// [`StorageError::KeyPairConflict`] if the id or public key is stored with other
    /// contents.
    pub async fn add_key_pair(&self, pair: &NewKeyPair) -> Result<KeyPair> {
        let checked = query::validate_key_pair(pair, &self.limits)?;
        dispatch!(self, b => b.add_key_pair(checked).await)
    }

    /// Soft-deletes key pair `id` (idempotent). [`StorageError::KeyPairNotFound`] if unknown.
    pub async fn delete_key_pair(&self, id: &str) -> Result<()> {
        dispatch!(self, b => b.delete_key_pair(id).await)
    }

    /// The key pair with this id; [`StorageError::KeyPairRemoved`] if it was deleted,
    /// [`StorageError::KeyPairNotFound`] if unknown.
    pub async fn key_pair(&self, id: &str) -> Result<KeyPair> {
        self.lookup_active(KeyLookup::Id(id)).await
    }

    /// The key pair with this public key (compared after trimming whitespace);
    /// [`StorageError::KeyPairRemoved`] if it was deleted, [`StorageError::KeyPairNotFound`]
    /// if unknown.
    pub async fn key_pair_by_public(&self, public: &str) -> Result<KeyPair> {
        self.lookup_active(KeyLookup::Public(public.trim())).await
    }

    /// Whether a non-deleted key pair has this public key. Use
    /// [`Storage::key_pair_by_public`] to tell unknown from deleted.
    pub async fn is_valid_key_pair(&self, public: &str) -> Result<bool> {
        match self.key_pair_by_public(public).await {
            Ok(_) => Ok(true),
            Err(StorageError::KeyPairRemoved | StorageError::KeyPairNotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The most recently added key pair that is not deleted, if any.
    pub async fn current_key_pair(&self) -> Result<Option<KeyPair>> {
        let pairs = self.key_pairs().await?;
        Ok(pairs.into_iter().rev().find(|p| !p.is_deleted()))
    }

    /// Every key pair, deleted ones included, oldest first.
    pub async fn key_pairs(&self) -> Result<Vec<KeyPair>> {
        dispatch!(self, b => b.key_pairs().await)
    }

    /// Stops background work and closes connections or the database file, waiting for
    /// pending writes. Watchers then receive [`WatchError::Closed`].
    pub async fn close(self) -> Result<()> {
        match self.backend {
            Backend::Embedded(b) => b.close().await,
            // Dropping stops their background tasks and closes their connections.
            Backend::Postgres(_) | Backend::Etcd(_) => Ok(()),
        }
    }

    async fn lookup_active(&self, by: KeyLookup<'_>) -> Result<KeyPair> {
        let found = dispatch!(self, b => b.find_key_pair(by).await)?;
        match found {
            Some(p) if p.is_deleted() => Err(StorageError::KeyPairRemoved),
            Some(p) => Ok(p),
            None => Err(StorageError::KeyPairNotFound),
        }
    }
}
