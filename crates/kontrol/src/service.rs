//! The Kontrol core: registration, liveness, discovery with tokens, key distribution,
//! machine registration and watching (PROTOCOL.md 6.3–6.8, 8), independent of any
//! transport. The HTTP endpoints ([`crate::http`]) and the kite adapter
//! ([`crate::kite_service`]) are thin layers over [`Kontrol`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Instant, SystemTime};

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::task::JoinHandle;

use kite::auth::{
    sign_claims, token_claims, AuthSettings, Authenticator, BoxFuture, Claims, KeyPair,
    KontrolKeyTrust, PublicKey, VerifyError, KITE_KEY,
};
use kite_protocol::{Authentication, Kite, KontrolQuery};

use crate::args::{self, GetKitesArgs, GetTokenArgs, RegisterMachineArgs, WatchStyle};
use crate::config::{KontrolConfig, RegisterMachinePolicy};
use crate::error::KontrolError;
use crate::keys::{KeyRing, PublicStatus};
use crate::storage::{KiteRecord, Registration, Storage, WatchAction, WatchError};
use crate::tokens::{TokenCache, TokenKey};
use crate::watch::{WatchSink, Watches};

/// What `register` answers (PROTOCOL.md 8.1): `{"url", "heartbeatInterval", "publicKey"?,
/// "kiteKey"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResult {
    /// The registered URL.
    pub url: String,
    /// Seconds between heartbeats: 0 on the kite-protocol path (the interval comes with the
    /// `kite.heartbeat` call, Q8), the configured interval on the HTTP path.
    #[serde(rename = "heartbeatInterval")]
    pub heartbeat_interval: u64,
    /// Kontrol's current public key, when the caller's kite key names a deleted pair.
    #[serde(rename = "publicKey", default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The caller's kite key re-signed with the current pair, in the same case.
    #[serde(rename = "kiteKey", default, skip_serializing_if = "Option::is_none")]
    pub kite_key: Option<String>,
}

/// A successful registration: the stored record and the answer for the kite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// What was stored (identity with the kite key's username, URL, key-pair id); pass it to
    /// [`Kontrol::heartbeat`] on every heartbeat.
    pub registration: Registration,
    /// The answer.
    pub result: RegisterResult,
}

/// One `getKites` result: `{"kite", "url", "keyId"?, "token"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KiteWithToken {
    /// The kite's identity.
    pub kite: Kite,
    /// Its URL.
    pub url: String,
    /// Id of the key pair it registered with (omitted when empty).
    #[serde(rename = "keyId", default, skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    /// A token for the requester towards this kite.
    pub token: String,
}

/// The `getKites` result: `{"kites": [...]}`, plus `"watcherID"` when watching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetKitesResult {
    /// The matching kites, in random order.
    pub kites: Vec<KiteWithToken>,
    /// The watcher's id, for `cancelWatcher`.
    #[serde(rename = "watcherID", default, skip_serializing_if = "Option::is_none")]
    pub watcher_id: Option<String>,
}

/// A credential verified by Kontrol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The authenticated username.
    pub username: String,
    /// The credential type (`kiteKey`, `token`, ...).
    pub auth_type: String,
}

/// The Kontrol service. Cheap to clone (shared state); all methods take `&self`.
///
/// Start it with [`Kontrol::start`] over a [`Storage`]; it then keeps its own registration
/// alive, re-reads key pairs periodically and purges its token cache, until
/// [`Kontrol::shutdown`] or until the last clone is dropped.
#[derive(Clone)]
pub struct Kontrol {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Kontrol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kontrol")
            .field("identity", &self.inner.config.identity.to_string())
            .field("storage", &self.inner.storage)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: KontrolConfig,
    storage: Arc<Storage>,
    keys: Arc<KeyRing>,
    auth: Arc<Authenticator>,
    tokens: TokenCache,
    watches: Watches,
    machine_secret: Mutex<Option<String>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Turns `true` when shutdown starts (for [`Kontrol::closed`]).
    closed_signal: tokio::sync::watch::Sender<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
        self.watches.cancel_all();
    }
}

/// Kontrol's kite-key trust rule: any stored pair, deleted ones included.
struct StoredKeyTrust(Arc<KeyRing>);

impl KontrolKeyTrust for StoredKeyTrust {
    fn check<'a>(
        &'a self,
        pem: &'a str,
        _key: &'a PublicKey,
    ) -> BoxFuture<'a, Result<(), VerifyError>> {
        Box::pin(self.0.trust(pem))
    }
}

fn storage_err(
    operation: &'static str,
) -> impl FnOnce(crate::storage::StorageError) -> KontrolError {
    move |e| KontrolError::storage(operation, e)
}

impl Kontrol {
    /// Starts Kontrol over `storage`: loads the key pairs (generating and storing one if
    /// there is none), signs its own kite key, registers itself and starts its background
    /// work (self-refresh every heartbeat interval, key reload every `key_refresh_interval`).
    pub async fn start(config: KontrolConfig, storage: Arc<Storage>) -> Result<Self, KontrolError> {
        config.validate().map_err(KontrolError::InvalidArgument)?;
        let keys = Arc::new(
            KeyRing::load(
                Arc::clone(&storage),
                config.key_bits,
                config.username(),
                &config.kontrol_url,
            )
            .await?,
        );
        let auth = Authenticator::new(AuthSettings {
            kontrol_user: config.username().to_owned(),
            kontrol_key: keys.current().public_pem().to_owned(),
            ..AuthSettings::default()
        })
        .map_err(KontrolError::Signing)?
        .with_trust(Arc::new(StoredKeyTrust(Arc::clone(&keys))));
        let machine_secret = match &config.register_machine {
            RegisterMachinePolicy::Disabled => None,
            RegisterMachinePolicy::OneTimeSecret(s) => Some(s.clone()),
        };
        let inner = Arc::new(Inner {
            tokens: TokenCache::new(config.token_cache_capacity, config.token_cache_ttl()),
            watches: Watches::new(config.max_watchers_per_owner, config.max_watchers),
            machine_secret: Mutex::new(machine_secret),
            config,
            storage,
            keys,
            auth: Arc::new(auth),
            tasks: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            closed_signal: tokio::sync::watch::Sender::new(false),
        });
        let kontrol = Kontrol { inner };
        kontrol.register_self().await?;
        kontrol.spawn_background();
        tracing::info!(
            kontrol = %kontrol.inner.config.identity,
            key_id = kontrol.inner.keys.current().id(),
            storage = %kontrol.inner.storage.kind(),
            "kontrol started"
        );
        Ok(kontrol)
    }

    /// The configuration.
    pub fn config(&self) -> &KontrolConfig {
        &self.inner.config
    }

    /// Kontrol's own identity.
    pub fn identity(&self) -> &Kite {
        &self.inner.config.identity
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.inner.storage
    }

    /// The authenticator Kontrol verifies credentials with: `kiteKey` credentials signed by
    /// any stored pair (deleted ones included), `token` credentials issued by this Kontrol
    /// (verified with the current pair). Kite runtimes serving Kontrol's methods use it.
    pub fn authenticator(&self) -> Arc<Authenticator> {
        Arc::clone(&self.inner.auth)
    }

    /// Kontrol's own kite key (`iss` = `sub` = Kontrol's username), signed by the current
    /// pair.
    pub fn kite_key(&self) -> String {
        self.inner.keys.state().kite_key.clone()
    }

    /// The current public key (PEM).
    pub fn public_key(&self) -> String {
        self.inner.keys.current().public_pem().to_owned()
    }

    /// The id of the current key pair.
    pub fn current_key_id(&self) -> String {
        self.inner.keys.current().id().to_owned()
    }

    /// Number of running watchers.
    pub fn watcher_count(&self) -> usize {
        self.inner.watches.len()
    }

    fn check_open(&self) -> Result<(), KontrolError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(KontrolError::Closed)
        } else {
            Ok(())
        }
    }

    // ---------------------------------------------------------------------------------
    // Authentication

    /// Verifies a credential as Kontrol's methods do; returns the authenticated caller.
    pub async fn authenticate(
        &self,
        auth: Option<&Authentication>,
    ) -> Result<Caller, KontrolError> {
        let auth = auth.ok_or(KontrolError::NoAuthentication)?;
        let who = self
            .inner
            .auth
            .authenticate(&auth.kind, &auth.key, &self.inner.config.identity)
            .await?;
        Ok(Caller {
            username: who.username,
            auth_type: auth.kind.clone(),
        })
    }

    /// Verifies a kite key; returns its claims.
    async fn verify_kite_key(&self, key: &str) -> Result<Claims, KontrolError> {
        self.inner
            .auth
            .authenticate(KITE_KEY, key, &self.inner.config.identity)
            .await?;
        // Verified just above, so decoding cannot fail; map defensively anyway.
        Claims::decode_unverified(key).map_err(|reason| {
            KontrolError::Auth(kite::auth::AuthError::Rejected {
                auth_type: KITE_KEY.to_owned(),
                reason,
            })
        })
    }

    /// The kite key of a credential that must be one (`Unexpected authentication type`).
    fn require_kite_key(auth: Option<&Authentication>) -> Result<&str, KontrolError> {
        let auth = auth.ok_or(KontrolError::NoAuthentication)?;
        if auth.kind != KITE_KEY {
            return Err(KontrolError::UnexpectedAuthType(auth.kind.clone()));
        }
        Ok(&auth.key)
    }

    // ---------------------------------------------------------------------------------
    // Registration and liveness

    /// `register` (PROTOCOL.md 8.1) for a caller identifying as `kite` (the `kite` of the
    /// request, Q7) with credentials `auth` and method argument `arg` (`{"url": ...}` or a
    /// bare URL string, Q16).
    ///
    /// Checks, in order: credential type (`Unexpected authentication type: <type>`), kite
    /// key (`authenticationError`), URL (`empty url`, `invalid register URL: <err>`),
    /// identity (the kite key's username replaces the claimed one; another non-empty
    /// username is refused when `strict_username`; `Empty Kite field: <key>` ...), key pair
    /// (`no valid authentication key found`; a deleted pair gets a re-signed kite key and
    /// the new public key). Then the registration is stored with TTL interval + grace
    /// (`internal error - register` on storage failure). The result's `heartbeatInterval`
    /// is 0; the caller should now be asked to heartbeat (`kite.heartbeat`).
    pub async fn register(
        &self,
        kite: &Kite,
        auth: Option<&Authentication>,
        arg: Option<&Value>,
    ) -> Result<Registered, KontrolError> {
        self.check_open()?;
        let key = Self::require_kite_key(auth)?;
        let claims = self.verify_kite_key(key).await?;
        let url = args::register_url(arg)?;
        self.complete_registration(kite, &claims, url, 0).await
    }

    /// The HTTP `/register` flow after the body was decoded: credential type, URL, kite key,
    /// identity and key pair as in [`register`](Self::register), with `heartbeatInterval` set.
    /// Errors are mapped to statuses by [`crate::http`].
    pub(crate) async fn register_http(
        &self,
        kite: &Kite,
        auth: &Authentication,
        url: &str,
    ) -> Result<Registered, KontrolError> {
        self.check_open()?;
        if auth.kind != KITE_KEY {
            return Err(KontrolError::UnexpectedAuthType(auth.kind.clone()));
        }
        if url.is_empty() {
            return Err(KontrolError::EmptyUrl);
        }
        let claims = self.verify_kite_key(&auth.key).await?;
        args::check_url(url)?;
        let interval = self.inner.config.heartbeat_interval_secs();
        self.complete_registration(kite, &claims, url.to_owned(), interval)
            .await
    }

    async fn complete_registration(
        &self,
        kite: &Kite,
        claims: &Claims,
        url: String,
        heartbeat_interval: u64,
    ) -> Result<Registered, KontrolError> {
        let owner = claims.subject().unwrap_or_default();
        let mut kite = kite.clone();
        if self.inner.config.strict_username && !kite.username.is_empty() && kite.username != owner
        {
            return Err(KontrolError::UsernameMismatch {
                claimed: kite.username,
                owner: owner.to_owned(),
            });
        }
        owner.clone_into(&mut kite.username);
        kite.validate_for_registration()?;

        // A kite id live under another user's name cannot be taken over.
        let by_id = KontrolQuery {
            id: kite.id.clone(),
            ..KontrolQuery::default()
        };
        let existing = self
            .inner
            .storage
            .get(&by_id)
            .await
            .map_err(storage_err("register"))?;
        if existing.iter().any(|r| r.kite.username != kite.username) {
            return Err(KontrolError::IdTaken(kite.id));
        }

        let (key_id, public_key, kite_key) = self.resolve_kite_key(claims).await?;
        let registration = Registration { kite, url, key_id };
        self.inner
            .storage
            .upsert(&registration, self.inner.config.record_ttl())
            .await
            .map_err(|e| {
                if e.is_client_error() {
                    KontrolError::Query(e.to_string())
                } else {
                    tracing::error!(error = %e, kite = %registration.kite, "kontrol: storing a registration failed");
                    KontrolError::InternalRegister
                }
            })?;
        tracing::info!(kite = %registration.kite, url = %registration.url, key_id = %registration.key_id, "kontrol: registered");
        let result = RegisterResult {
            url: registration.url.clone(),
            heartbeat_interval,
            public_key,
            kite_key,
        };
        Ok(Registered {
            registration,
            result,
        })
    }

    /// Key-pair resolution by the kite key's `kontrolKey` (PROTOCOL.md 8.1): the pair's id
    /// while it is active; when it was deleted the current pair's id, its public key and the
    /// caller's kite key re-signed with it.
    async fn resolve_kite_key(
        &self,
        claims: &Claims,
    ) -> Result<(String, Option<String>, Option<String>), KontrolError> {
        let pem = claims.kontrol_key.as_deref().unwrap_or_default();
        match self.inner.keys.public_status(pem).await? {
            PublicStatus::Active(id) => Ok((id, None, None)),
            PublicStatus::Deleted => {
                let current = self.inner.keys.current();
                let mut resigned = claims.clone();
                resigned.kontrol_key = Some(current.public_pem().to_owned());
                let kite_key = sign_claims(&current, &resigned).map_err(KontrolError::Signing)?;
                Ok((
                    current.id().to_owned(),
                    Some(current.public_pem().to_owned()),
                    Some(kite_key),
                ))
            }
            PublicStatus::Unknown => Err(KontrolError::NoValidKey),
        }
    }

    /// A heartbeat of a kite registered as `registration` (the kite-protocol path): extends
    /// its record to now + interval + grace; if the record already expired (the kite was
    /// silent too long), stores it again.
    pub async fn heartbeat(&self, registration: &Registration) -> Result<(), KontrolError> {
        self.check_open()?;
        let ttl = self.inner.config.record_ttl();
        let storage = &self.inner.storage;
        if storage
            .refresh(&registration.kite.id, ttl)
            .await
            .map_err(storage_err("heartbeat"))?
        {
            return Ok(());
        }
        tracing::debug!(kite = %registration.kite, "kontrol: heartbeat after expiry, registering again");
        storage
            .upsert(registration, ttl)
            .await
            .map_err(storage_err("heartbeat"))?;
        Ok(())
    }

    /// A heartbeat of kite `id` on the HTTP path: `true` (`pong`) if it has a live
    /// registration, now extended; `false` (`registeragain`) otherwise.
    pub async fn http_heartbeat(&self, id: &str) -> Result<bool, KontrolError> {
        self.check_open()?;
        self.inner
            .storage
            .refresh(id, self.inner.config.record_ttl())
            .await
            .map_err(storage_err("heartbeat"))
    }

    /// Removes the registration of kite `id` (e.g. an operator evicting a kite). Returns
    /// whether a live one was removed.
    pub async fn deregister(&self, id: &str) -> Result<bool, KontrolError> {
        self.inner
            .storage
            .delete(id)
            .await
            .map_err(storage_err("deregister"))
    }

    // ---------------------------------------------------------------------------------
    // Discovery and tokens

    /// `getKites` without watching: the live kites matching `query` in random order, each
    /// with a token for `requester` (PROTOCOL.md 6.4; the audience comes from the query, or
    /// from the kite when the query has no username, Q13). No match is an empty list.
    /// Records naming a key pair Kontrol does not have are skipped (Q30).
    pub async fn get_kites(
        &self,
        query: &KontrolQuery,
        requester: &str,
    ) -> Result<Vec<KiteWithToken>, KontrolError> {
        self.check_open()?;
        if self.inner.config.require_query_username && query.username.is_empty() {
            return Err(KontrolError::EmptyUsername);
        }
        let mut records = self
            .inner
            .storage
            .get(query)
            .await
            .map_err(storage_err("getKites"))?;
        records.shuffle(&mut rand::rng());
        records.truncate(self.inner.config.max_results);
        let mut kites = Vec::with_capacity(records.len());
        for record in records {
            let audience = self.audience(query, &record.kite);
            match self
                .token_for(&audience, &record.key_id, requester, false)
                .await
            {
                Ok(token) => kites.push(KiteWithToken {
                    kite: record.kite,
                    url: record.url,
                    key_id: record.key_id,
                    token,
                }),
                Err(KontrolError::NoValidKey) => {
                    tracing::warn!(kite = %record.kite, key_id = %record.key_id, "kontrol: skipping a kite registered with an unknown key pair");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(kites)
    }

    /// `getKites` as a method: decodes the argument and answers `{"kites": [...]}`. A watch
    /// function in the argument is ignored here; adapters that can call it back use
    /// [`watch`](Self::watch).
    pub async fn get_kites_method(
        &self,
        arg: Option<&Value>,
        requester: &str,
    ) -> Result<GetKitesResult, KontrolError> {
        let args = GetKitesArgs::decode(arg)?;
        Ok(GetKitesResult {
            kites: self.get_kites(&args.query, requester).await?,
            watcher_id: None,
        })
    }

    /// `getToken` (PROTOCOL.md 8.1): a token for `requester` towards the one kite matching
    /// the query in `arg` (`invalid query: <err>`, `no kites found`,
    /// `query matches more than one kite`); `"force": true` mints a new one.
    pub async fn get_token(
        &self,
        arg: Option<&Value>,
        requester: &str,
    ) -> Result<String, KontrolError> {
        self.check_open()?;
        let GetTokenArgs { query, force } = GetTokenArgs::decode(arg)?;
        let mut records = self
            .inner
            .storage
            .get(&query)
            .await
            .map_err(storage_err("getToken"))?;
        let record = match records.len() {
            0 => return Err(KontrolError::NoKitesFound),
            1 => records.swap_remove(0),
            _ => return Err(KontrolError::MultipleKites),
        };
        let audience = self.audience(&query, &record.kite);
        self.token_for(&audience, &record.key_id, requester, force)
            .await
    }

    /// The token audience for `kite` found by `query` (PROTOCOL.md 6.4, Q13).
    fn audience(&self, query: &KontrolQuery, kite: &Kite) -> String {
        if query.username.is_empty() {
            kite.audience()
        } else {
            query.audience()
        }
    }

    /// A token for `requester` towards `audience`, signed with the pair of `key_id` (the
    /// current pair if it was deleted), from the cache unless `force`.
    async fn token_for(
        &self,
        audience: &str,
        key_id: &str,
        requester: &str,
        force: bool,
    ) -> Result<String, KontrolError> {
        let signer = self.inner.keys.signer_for(key_id).await?;
        let config = &self.inner.config;
        let key = TokenKey {
            audience,
            username: requester,
            issuer: config.username(),
            key_id: signer.id(),
        };
        let now = Instant::now();
        if !force {
            if let Some(token) = self.inner.tokens.get(&key, now) {
                return Ok(token);
            }
        }
        let claims = token_claims(
            audience,
            requester,
            config.username(),
            config.token_ttl,
            SystemTime::now(),
            config.token_leeway,
            config.token_nbf,
        );
        let token = sign_claims(&signer, &claims).map_err(KontrolError::Signing)?;
        self.inner.tokens.insert(&key, &token, now);
        Ok(token)
    }

    /// `getKey` (PROTOCOL.md 8.1): the public key a kite should trust, given its kite key:
    /// the same key while its pair is active, the current one if it was deleted.
    pub async fn get_key(&self, auth: Option<&Authentication>) -> Result<String, KontrolError> {
        self.check_open()?;
        let key = Self::require_kite_key(auth)?;
        let unverified = Claims::decode_unverified(key).ok();
        if unverified
            .as_ref()
            .is_some_and(|c| c.kontrol_key.as_deref().is_none_or(str::is_empty))
        {
            return Err(KontrolError::PublicKeyNotPassed);
        }
        let claims = self.verify_kite_key(key).await?;
        let pem = claims.kontrol_key.as_deref().unwrap_or_default();
        match self.inner.keys.public_status(pem).await? {
            PublicStatus::Active(_) => Ok(pem.trim().to_owned()),
            PublicStatus::Deleted => Ok(self.public_key()),
            PublicStatus::Unknown => Err(KontrolError::NoValidKey),
        }
    }

    /// `registerMachine` (PROTOCOL.md 8.1, Q15): a new kite key for a machine. Disabled by
    /// default (`no valid authentication key found`); with a one-time secret configured, the
    /// caller must present it (`{"secret": ...}`; `cannot authenticate user: invalid
    /// secret`), which uses it up. The key's username is the argument's (`"bob"` or
    /// `{"username": "bob"}`), else the caller's claimed `kite.username`.
    pub async fn register_machine(
        &self,
        claimed_username: &str,
        arg: Option<&Value>,
    ) -> Result<String, KontrolError> {
        self.check_open()?;
        let args = RegisterMachineArgs::decode(arg)?;
        let username = args
            .username
            .as_deref()
            .filter(|u| !u.is_empty())
            .unwrap_or(claimed_username);
        {
            let mut secret = self
                .inner
                .machine_secret
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(expected) = secret.as_deref() else {
                return Err(KontrolError::NoValidKey);
            };
            let given = args.secret.as_deref().unwrap_or_default();
            if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
                return Err(KontrolError::CannotAuthenticateUser(
                    "invalid secret".into(),
                ));
            }
            if username.is_empty() || username.contains('/') || username.len() > 255 {
                return Err(KontrolError::CannotAuthenticateUser(format!(
                    "invalid username {username:?}"
                )));
            }
            *secret = None;
        }
        let key = self.issue_kite_key(username)?;
        tracing::info!(username, "kontrol: issued a machine kite key");
        Ok(key)
    }

    /// Issues a kite key for `username` signed by the current pair (what an operator hands
    /// to a user or machine; PROTOCOL.md 6.3). The username must be non-empty, without `/`.
    pub fn issue_kite_key(&self, username: &str) -> Result<String, KontrolError> {
        if username.is_empty() || username.contains('/') {
            return Err(KontrolError::InvalidArgument(format!(
                "invalid username {username:?}"
            )));
        }
        kite::auth::issue_kite_key(
            &self.inner.keys.current(),
            self.inner.config.username(),
            username,
            &self.inner.config.kontrol_url,
            SystemTime::now(),
        )
        .map_err(KontrolError::Signing)
    }

    /// Sets (or clears) the one-time `registerMachine` secret at run time.
    pub fn set_register_machine_secret(&self, secret: Option<String>) {
        *self
            .inner
            .machine_secret
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = secret.filter(|s| !s.is_empty());
    }

    // ---------------------------------------------------------------------------------
    // Watching

    /// `getKites` with a watch function: answers like [`get_kites`](Self::get_kites) plus a
    /// `watcherID`, then delivers an event through `sink` each time a matching kite
    /// registers or goes away, until `sink` reports the peer gone, the watcher is cancelled
    /// ([`cancel_watcher`](Self::cancel_watcher), [`cancel_watchers`](Self::cancel_watchers))
    /// or Kontrol shuts down. Events are `{"err"|"error": null, "result": {"action":
    /// "REGISTER"|"DEREGISTER", "kite", "url", "token"}}` (`err` for kite.js's
    /// `watchHandler`, `error` for Go's `watchCallback`); a loss of events is reported as
    /// `{"err": {"type": "genericError", "message": ...}}` and watching goes on.
    /// `owner` scopes cancellation (use one per connection).
    pub async fn watch(
        &self,
        owner: &str,
        query: &KontrolQuery,
        requester: &str,
        style: WatchStyle,
        mut sink: WatchSink,
    ) -> Result<GetKitesResult, KontrolError> {
        self.check_open()?;
        self.inner.watches.check_room(owner)?;
        if self.inner.config.require_query_username && query.username.is_empty() {
            return Err(KontrolError::EmptyUsername);
        }
        // Subscribe before reading, so that nothing happening in between is missed.
        let mut watcher = self
            .inner
            .storage
            .watch(query)
            .await
            .map_err(storage_err("watch"))?;
        let kites = self.get_kites(query, requester).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let (go, ready) = tokio::sync::oneshot::channel::<()>();
        let weak = Arc::downgrade(&self.inner);
        let query = query.clone();
        let requester = requester.to_owned();
        let task_id = id.clone();
        let task = tokio::spawn(async move {
            if ready.await.is_err() {
                return;
            }
            loop {
                let event = match watcher.recv().await {
                    Ok(event) => event,
                    Err(WatchError::Closed) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "kontrol: watcher lost events");
                        let mut payload = Map::new();
                        payload.insert(
                            style.error_key().to_owned(),
                            json!({"type": "genericError", "message": e.to_string(), "code": "", "id": ""}),
                        );
                        if !sink(Value::Object(payload)).await {
                            break;
                        }
                        continue;
                    }
                };
                let Some(kontrol) = weak.upgrade().map(|inner| Kontrol { inner }) else {
                    break;
                };
                let payload = kontrol
                    .event_payload(&query, &requester, style, event.action, event.record)
                    .await;
                drop(kontrol);
                if let Some(payload) = payload {
                    if !sink(payload).await {
                        break;
                    }
                }
            }
            if let Some(inner) = weak.upgrade() {
                inner.watches.remove(&task_id);
            }
        });
        self.inner
            .watches
            .insert(id.clone(), owner, task.abort_handle())?;
        let _ = go.send(());
        Ok(GetKitesResult {
            kites,
            watcher_id: Some(id),
        })
    }

    async fn event_payload(
        &self,
        query: &KontrolQuery,
        requester: &str,
        style: WatchStyle,
        action: WatchAction,
        record: KiteRecord,
    ) -> Option<Value> {
        let mut result = Map::new();
        result.insert("action".into(), Value::from(action.as_str()));
        // DEREGISTER events carry a token too: kite.js builds a client from every event
        // and fails on a missing token.
        let audience = self.audience(query, &record.kite);
        match self
            .token_for(&audience, &record.key_id, requester, false)
            .await
        {
            Ok(token) => {
                result.insert("token".into(), Value::from(token));
            }
            Err(e) => {
                tracing::warn!(kite = %record.kite, error = %e, "kontrol: no token for a watch event; skipped");
                return None;
            }
        }
        result.insert("url".into(), Value::from(record.url));
        result.insert("kite".into(), serde_json::to_value(&record.kite).ok()?);
        let mut payload = Map::new();
        payload.insert(style.error_key().to_owned(), Value::Null);
        payload.insert("result".into(), Value::Object(result));
        Some(Value::Object(payload))
    }

    /// `cancelWatcher`: stops watcher `id` started by `owner`
    /// (`watcher not found: <id>` otherwise).
    pub fn cancel_watcher(&self, owner: &str, id: &str) -> Result<(), KontrolError> {
        self.inner.watches.cancel(owner, id)
    }

    /// Stops every watcher of `owner` (call it when the owner's connection closes). Returns
    /// how many were stopped.
    pub fn cancel_watchers(&self, owner: &str) -> usize {
        self.inner.watches.cancel_owner(owner)
    }

    // ---------------------------------------------------------------------------------
    // Key pairs

    /// Re-reads the key pairs from storage (also done every `key_refresh_interval`). If the
    /// current pair changed, Kontrol re-signs its own kite key, trusts tokens of the new pair
    /// and re-registers itself. Returns whether it changed.
    pub async fn reload_keys(&self) -> Result<bool, KontrolError> {
        let changed = self.inner.keys.reload().await?;
        if changed {
            self.on_current_key_changed().await?;
        }
        Ok(changed)
    }

    async fn on_current_key_changed(&self) -> Result<(), KontrolError> {
        let current = self.inner.keys.current();
        tracing::info!(key_id = current.id(), "kontrol: current key pair changed");
        self.inner
            .auth
            .set_kontrol_key(current.public_pem())
            .map_err(KontrolError::Signing)?;
        self.register_self().await
    }

    /// Rotates the key pairs (PROTOCOL.md 8.4): generates a new pair, stores it (it becomes
    /// current), deletes the previous current pair. Kites registering with kite keys of the
    /// old pair then get re-signed kite keys and the new public key; tokens for kites of the
    /// old pair are signed with the new one. Other replicas follow at their next key reload.
    pub async fn rotate_keys(&self) -> Result<String, KontrolError> {
        let old = self.inner.keys.current();
        let new = self.inner.keys.rotate().await?;
        self.inner.tokens.forget_key(old.id());
        self.on_current_key_changed().await?;
        Ok(new.id().to_owned())
    }

    /// Adds a key pair (PEM texts; `id` empty = a random UUID); being the newest, it becomes
    /// current.
    pub async fn add_key_pair(
        &self,
        id: &str,
        public: &str,
        private: &str,
    ) -> Result<(), KontrolError> {
        let before = self.inner.keys.current();
        self.inner.keys.add(id, public, private).await?;
        if self.inner.keys.current().id() != before.id() {
            self.on_current_key_changed().await?;
        }
        Ok(())
    }

    /// Soft-deletes key pair `id` (refused for the last active pair).
    pub async fn delete_key_pair(&self, id: &str) -> Result<(), KontrolError> {
        let before = self.inner.keys.current();
        self.inner.keys.delete(id).await?;
        self.inner.tokens.forget_key(id);
        if self.inner.keys.current().id() != before.id() {
            self.on_current_key_changed().await?;
        }
        Ok(())
    }

    /// The current key pair (for operators and tests).
    pub fn current_key_pair(&self) -> Arc<KeyPair> {
        self.inner.keys.current()
    }

    // ---------------------------------------------------------------------------------
    // Self-registration, background work, shutdown

    fn self_registration(&self) -> Registration {
        let config = &self.inner.config;
        Registration {
            kite: config.identity.clone(),
            url: config.self_url().to_owned(),
            key_id: self.inner.keys.current().id().to_owned(),
        }
    }

    async fn register_self(&self) -> Result<(), KontrolError> {
        self.inner
            .storage
            .upsert(&self.self_registration(), self.inner.config.record_ttl())
            .await
            .map_err(storage_err("register kontrol"))?;
        Ok(())
    }

    fn spawn_background(&self) {
        let config = &self.inner.config;
        let heartbeat = self.spawn_every(config.heartbeat_interval, |k| {
            Box::pin(async move {
                let registration = k.self_registration();
                if let Err(e) = k.heartbeat(&registration).await {
                    tracing::warn!(error = %e, "kontrol: refreshing own registration failed");
                }
            })
        });
        let keys = self.spawn_every(config.key_refresh_interval, |k| {
            Box::pin(async move {
                if let Err(e) = k.reload_keys().await {
                    tracing::warn!(error = %e, "kontrol: reloading key pairs failed");
                }
                k.inner.tokens.purge(Instant::now());
            })
        });
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend([heartbeat, keys]);
    }

    /// Runs `f` every `period` while Kontrol is alive and open.
    fn spawn_every(
        &self,
        period: std::time::Duration,
        f: impl Fn(Kontrol) -> BoxFuture<'static, ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                if inner.closed.load(Ordering::Acquire) {
                    break;
                }
                f(Kontrol { inner }).await;
            }
        })
    }

    /// Stops Kontrol: background work and watchers end, its own registration is removed,
    /// and every later call fails with `kontrol is shutting down`. Idempotent. The storage
    /// stays open (it belongs to the caller).
    pub async fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.closed_signal.send_replace(true);
        for task in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
        self.inner.watches.cancel_all();
        if let Err(e) = self
            .inner
            .storage
            .delete(&self.inner.config.identity.id)
            .await
        {
            tracing::warn!(error = %e, "kontrol: removing own registration failed");
        }
        tracing::info!(kontrol = %self.inner.config.identity, "kontrol stopped");
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Completes once [`shutdown`](Self::shutdown) has been called (at once if it was), so
    /// that long-lived streams (the web page's live feed) can end.
    pub async fn closed(&self) {
        let mut rx = self.inner.closed_signal.subscribe();
        // The sender lives as long as `self`, so this only ends on `true`.
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Whether the storage answers (for readiness checks).
    pub async fn is_ready(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire) && self.inner.storage.count().await.is_ok()
    }
}

/// Compares two byte strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
