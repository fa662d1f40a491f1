//! Server-side verification of credentials (PROTOCOL.md 6.5, 6.6) and the verifier registry.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use kite_protocol::Kite;

use super::cache::{Cache, KeyHashing};
use super::issue::unix_seconds;
use super::jwt::{self, Claims, Decoded};
use super::keys::{KeyError, PublicKey};
use super::{AuthError, VerifyError, KITE_KEY, TOKEN};
use crate::config::Config;

/// Default lifetime of a cached trust decision about a kite key's Kontrol key (Go's
/// `VerifyTTL` default): 5 min.
pub const DEFAULT_VERIFY_TTL: Duration = Duration::from_secs(5 * 60);

/// Default clock-skew tolerance of the time checks: 30 s.
///
/// Go verifies with no leeway; issuers already back-date `iat`/`nbf` by 5 minutes, so only a
/// small tolerance is needed, mostly for `exp`. 30 s keeps the Go outcomes of PROTOCOL.md
/// Appendix B (which are 100 s away from the limits) while absorbing ordinary NTP drift.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// Largest accepted clock-skew tolerance (PROTOCOL.md 6.2: at most 5 min); larger settings
/// are clamped.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Default bound on each verification cache (entries).
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// A boxed, sendable future (what pluggable verifiers return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A verifier for one credential type (registered with [`Authenticator::register`]).
///
/// Returns the authenticated username, or why the key was rejected; the authenticator turns
/// a rejection into `authenticationError` `<type>: <reason>`. For a synchronous check, wrap a
/// closure with [`verifier_fn`].
pub trait CredentialVerifier: Send + Sync {
    /// Verifies `key` for a request arriving at the local kite `local`.
    fn verify<'a>(
        &'a self,
        key: &'a str,
        local: &'a Kite,
    ) -> BoxFuture<'a, Result<String, VerifyError>>;
}

struct FnVerifier<F>(F);

impl<F> CredentialVerifier for FnVerifier<F>
where
    F: Fn(&str, &Kite) -> Result<String, VerifyError> + Send + Sync,
{
    fn verify<'a>(
        &'a self,
        key: &'a str,
        local: &'a Kite,
    ) -> BoxFuture<'a, Result<String, VerifyError>> {
        Box::pin(std::future::ready((self.0)(key, local)))
    }
}

/// Makes a [`CredentialVerifier`] of a synchronous function.
///
/// ```
/// use kite::auth::{verifier_fn, VerifyError};
/// let sessions = verifier_fn(|key, _local| match key {
///     "s3cr3t" => Ok("alice".to_owned()),
///     _ => Err(VerifyError::Other("session not found".into())),
/// });
/// # let _ = sessions;
/// ```
pub fn verifier_fn<F>(f: F) -> Arc<dyn CredentialVerifier>
where
    F: Fn(&str, &Kite) -> Result<String, VerifyError> + Send + Sync + 'static,
{
    Arc::new(FnVerifier(f))
}

/// Decides whether the Kontrol key named in a kite key (`kontrolKey` claim) is trusted (Go's
/// `Config.VerifyFunc`). Kontrol itself plugs in "any key in my key-pair storage, deleted
/// ones included".
///
/// Return `Err(VerifyError::KontrolKeyNotTrusted)` to reject (the decision is cached for the
/// verify TTL, later attempts get `invalid kontrol key found`); any other error rejects
/// without being cached.
pub trait KontrolKeyTrust: Send + Sync {
    /// `pem` is the claim text, `key` the parsed key.
    fn check<'a>(
        &'a self,
        pem: &'a str,
        key: &'a PublicKey,
    ) -> BoxFuture<'a, Result<(), VerifyError>>;
}

struct FnTrust<F>(F);

impl<F> KontrolKeyTrust for FnTrust<F>
where
    F: Fn(&str, &PublicKey) -> Result<(), VerifyError> + Send + Sync,
{
    fn check<'a>(
        &'a self,
        pem: &'a str,
        key: &'a PublicKey,
    ) -> BoxFuture<'a, Result<(), VerifyError>> {
        Box::pin(std::future::ready((self.0)(pem, key)))
    }
}

/// Makes a [`KontrolKeyTrust`] of a synchronous function.
pub fn trust_fn<F>(f: F) -> Arc<dyn KontrolKeyTrust>
where
    F: Fn(&str, &PublicKey) -> Result<(), VerifyError> + Send + Sync + 'static,
{
    Arc::new(FnTrust(f))
}

/// A custom audience rule (Go's `Config.VerifyAudienceFunc`); the default is
/// [`verify_audience`].
pub type AudienceCheck = Arc<dyn Fn(&Kite, &str) -> Result<(), VerifyError> + Send + Sync>;

/// The default audience rule (PROTOCOL.md 6.6 step 5) for a token arriving at `local`:
/// `/` matches every kite; otherwise the audience is parsed as a kite path and its username
/// must equal ours, and its environment and name must equal ours unless empty. Later fields
/// are ignored.
///
/// ```
/// use kite::auth::verify_audience;
/// use kite_protocol::Kite;
/// let me = Kite { username: "devrim".into(), environment: "production".into(),
///                 name: "math".into(), ..Kite::default() };
/// assert!(verify_audience(&me, "/").is_ok());
/// assert!(verify_audience(&me, "/devrim").is_ok());
/// assert!(verify_audience(&me, "/devrim//math").is_ok());
/// assert_eq!(verify_audience(&me, "/devrim/staging").unwrap_err().to_string(),
///            "audience: environment \"staging\" not allowed (/devrim/staging)");
/// ```
pub fn verify_audience(local: &Kite, audience: &str) -> Result<(), VerifyError> {
    match audience {
        "/" => return Ok(()),
        "" => return Err(VerifyError::Other("invalid empty audience".to_owned())),
        _ => {}
    }
    let Some(rest) = audience.strip_prefix('/') else {
        return Err(VerifyError::InvalidAudience(audience.to_owned()));
    };
    let mut fields = rest.splitn(7, '/');
    let username = fields.next().unwrap_or("");
    let environment = fields.next().unwrap_or("");
    let name = fields.next().unwrap_or("");
    if local.username != username {
        return Err(VerifyError::AudienceUsername {
            username: username.to_owned(),
            audience: audience.to_owned(),
        });
    }
    if !environment.is_empty() && local.environment != environment {
        return Err(VerifyError::AudienceEnvironment {
            environment: environment.to_owned(),
            audience: audience.to_owned(),
        });
    }
    if !name.is_empty() && local.name != name {
        return Err(VerifyError::AudienceName {
            name: name.to_owned(),
            audience: audience.to_owned(),
        });
    }
    Ok(())
}

/// Settings of an [`Authenticator`].
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Kontrol's username (kite.key `iss`): the only accepted token issuer.
    pub kontrol_user: String,
    /// Kontrol's public key PEM (kite.key `kontrolKey`); empty = not configured.
    pub kontrol_key: String,
    /// How long trust decisions about kite-key Kontrol keys are cached (Go's `VerifyTTL`,
    /// default [`DEFAULT_VERIFY_TTL`]); zero disables that cache.
    pub verify_ttl: Duration,
    /// Clock-skew tolerance of the time checks (default [`DEFAULT_CLOCK_SKEW`], clamped to
    /// [`MAX_CLOCK_SKEW`]). It only widens acceptance: `exp` + skew, `iat`/`nbf` − skew.
    pub clock_skew: Duration,
    /// Bound on each verification cache (default [`DEFAULT_CACHE_CAPACITY`]); zero disables
    /// caching of verified credentials.
    pub cache_capacity: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            kontrol_user: String::new(),
            kontrol_key: String::new(),
            verify_ttl: DEFAULT_VERIFY_TTL,
            clock_skew: DEFAULT_CLOCK_SKEW,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        }
    }
}

impl AuthSettings {
    /// Settings taken from a kite configuration (Kontrol user/key, verify TTL, skew).
    pub fn from_config(config: &Config) -> Self {
        Self {
            kontrol_user: config.kontrol_user.clone(),
            kontrol_key: config.kontrol_key.clone(),
            verify_ttl: config.verify_ttl,
            clock_skew: config.clock_skew,
            ..Self::default()
        }
    }
}

/// A successful authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The authenticated username; it replaces the caller's claimed `kite.username`.
    pub username: String,
}

/// When a successful verification may be reused without verifying again: a window of
/// time, inclusive at both ends (see [`crate::Authenticate::reuse_for`]).
///
/// Bounds are either whole Unix seconds compared with the floor of the clock (the rule of
/// the JWT time claims, so a reused token expires exactly when verifying it again would
/// fail) or instants.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use kite::auth::Validity;
/// let t = |s| UNIX_EPOCH + Duration::from_secs(s);
/// let v = Validity::between(Some(t(10)), Some(t(20)));
/// assert!(!v.holds_at(t(9)) && v.holds_at(t(10)) && v.holds_at(t(20)));
/// assert!(!v.holds_at(t(20) + Duration::from_nanos(1)));
/// assert!(Validity::ALWAYS.holds_at(t(0)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    from_secs: Option<i64>,
    until_secs: Option<i64>,
    from: Option<SystemTime>,
    until: Option<SystemTime>,
}

impl Validity {
    /// No time bound (reusable until the authenticator's epoch changes).
    pub const ALWAYS: Validity = Validity {
        from_secs: None,
        until_secs: None,
        from: None,
        until: None,
    };

    /// From `from` to `until`, both inclusive; `None` leaves that side open.
    pub fn between(from: Option<SystemTime>, until: Option<SystemTime>) -> Validity {
        Validity {
            from,
            until,
            ..Validity::ALWAYS
        }
    }

    /// Whether the verification still holds at `now`.
    pub fn holds_at(&self, now: SystemTime) -> bool {
        if self.from.is_some_and(|from| now < from) || self.until.is_some_and(|until| now > until) {
            return false;
        }
        if self.from_secs.is_none() && self.until_secs.is_none() {
            return true;
        }
        let now_s = unix_seconds(now);
        self.from_secs.is_none_or(|from| now_s >= from)
            && self.until_secs.is_none_or(|until| now_s <= until)
    }

    /// The window of the JWT time claims as [`Authenticator`] checks them: `exp` + skew,
    /// `iat`/`nbf` − skew (same arithmetic as its cache hits).
    fn of_claims(exp: Option<i64>, not_before: Option<i64>, skew_secs: i64) -> Validity {
        Validity {
            from_secs: not_before.map(|nb| nb.saturating_sub(skew_secs)),
            until_secs: exp.map(|exp| exp.saturating_add(skew_secs)),
            ..Validity::ALWAYS
        }
    }
}

/// The Kontrol settings in force, swapped as a whole.
struct KontrolState {
    user: String,
    key_pem: String,
    key: Option<Arc<PublicKey>>,
    generation: u64,
}

#[derive(Clone)]
enum Registered {
    Token,
    KiteKey,
    Custom(Arc<dyn CredentialVerifier>),
}

/// A verified token: signature and issuer were good; time and audience are re-checked on
/// every hit.
struct TokenEntry {
    sub: Box<str>,
    aud: Box<str>,
    exp: Option<i64>,
    not_before: Option<i64>,
}

/// A verified kite key; valid while its trust decision is (`until`).
struct KiteKeyEntry {
    sub: Box<str>,
    exp: Option<i64>,
    not_before: Option<i64>,
    until: Option<SystemTime>,
}

/// A cached trust decision about a Kontrol key PEM, with the parsed key.
struct TrustEntry {
    trusted: bool,
    key: Arc<PublicKey>,
    until: SystemTime,
}

/// Verifies credentials of requests arriving at a kite: the built-in `kiteKey` and `token`
/// verifiers plus any registered ones. Cheap to share (`Arc<Authenticator>`); all methods
/// take `&self`.
///
/// Successful verifications are cached per credential string (bounded, honouring `exp`), so
/// a repeated token costs a hash lookup and the audience check. Changing the Kontrol key or
/// user empties the caches.
pub struct Authenticator {
    kontrol: RwLock<Arc<KontrolState>>,
    /// Moves on whenever an earlier success may no longer hold: Kontrol key or user
    /// changed, caches cleared, a verifier registered or removed ([`Self::epoch`]).
    epoch: AtomicU64,
    verifiers: RwLock<HashMap<String, Registered>>,
    /// Fast path: `token` / `kiteKey` still map to the built-ins (no registry lookup).
    builtin_token: AtomicBool,
    builtin_kite_key: AtomicBool,
    trust: Option<Arc<dyn KontrolKeyTrust>>,
    audience: Option<AudienceCheck>,
    verify_ttl: Duration,
    skew_secs: i64,
    tokens: Cache<TokenEntry>,
    kite_keys: Cache<KiteKeyEntry>,
    trusted: Cache<TrustEntry>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Authenticator")
            .field("kontrol_user", &state.user)
            .field("kontrol_key_set", &state.key.is_some())
            .field("verify_ttl", &self.verify_ttl)
            .field("skew_secs", &self.skew_secs)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator with the built-in `kiteKey` and `token` verifiers. Fails if
    /// `settings.kontrol_key` is non-empty but not an RSA public key.
    pub fn new(settings: AuthSettings) -> Result<Self, KeyError> {
        let key = parse_optional_key(&settings.kontrol_key)?;
        let skew = settings.clock_skew.min(MAX_CLOCK_SKEW);
        let mut verifiers = HashMap::new();
        verifiers.insert(TOKEN.to_owned(), Registered::Token);
        verifiers.insert(KITE_KEY.to_owned(), Registered::KiteKey);
        Ok(Self {
            kontrol: RwLock::new(Arc::new(KontrolState {
                user: settings.kontrol_user,
                key_pem: settings.kontrol_key.trim().to_owned(),
                key,
                generation: 0,
            })),
            epoch: AtomicU64::new(0),
            verifiers: RwLock::new(verifiers),
            builtin_token: AtomicBool::new(true),
            builtin_kite_key: AtomicBool::new(true),
            trust: None,
            audience: None,
            verify_ttl: settings.verify_ttl,
            skew_secs: i64::try_from(skew.as_secs()).unwrap_or(300),
            tokens: Cache::new(settings.cache_capacity, KeyHashing::Tail),
            kite_keys: Cache::new(settings.cache_capacity, KeyHashing::Tail),
            // Keyed by PEM text, which an attacker can vary freely: hash all of it.
            trusted: Cache::new(settings.cache_capacity, KeyHashing::Full),
        })
    }

    /// [`Authenticator::new`] with [`AuthSettings::from_config`].
    pub fn from_config(config: &Config) -> Result<Self, KeyError> {
        Self::new(AuthSettings::from_config(config))
    }

    /// Replaces the default kite-key trust rule ("the key equals my Kontrol key", compared
    /// by value) — Kontrol uses this to trust every key pair it stores.
    pub fn with_trust(mut self, trust: Arc<dyn KontrolKeyTrust>) -> Self {
        self.trust = Some(trust);
        self
    }

    /// Replaces the default audience rule [`verify_audience`].
    pub fn with_audience_check(mut self, check: AudienceCheck) -> Self {
        self.audience = Some(check);
        self
    }

    /// Registers (or replaces) the verifier for credential type `auth_type`; registering
    /// `token` or `kiteKey` overrides the built-in one.
    pub fn register(&self, auth_type: impl Into<String>, verifier: Arc<dyn CredentialVerifier>) {
        let auth_type = auth_type.into();
        let mut verifiers = self
            .verifiers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.builtin_flag(&auth_type, false);
        verifiers.insert(auth_type, Registered::Custom(verifier));
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Removes the verifier for `auth_type` (built-ins included); later credentials of that
    /// type get `Unknown authentication type`.
    pub fn unregister(&self, auth_type: &str) {
        let mut verifiers = self
            .verifiers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.builtin_flag(auth_type, false);
        verifiers.remove(auth_type);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn builtin_flag(&self, auth_type: &str, value: bool) {
        match auth_type {
            TOKEN => self.builtin_token.store(value, Ordering::Release),
            KITE_KEY => self.builtin_kite_key.store(value, Ordering::Release),
            _ => {}
        }
    }

    /// Sets the Kontrol public key (e.g. the `publicKey` or new kite key of a registration
    /// result, PROTOCOL.md 8.4). An empty string unsets it. Empties the caches.
    pub fn set_kontrol_key(&self, pem: &str) -> Result<(), KeyError> {
        let key = parse_optional_key(pem)?;
        self.update(|state| KontrolState {
            user: state.user.clone(),
            key_pem: pem.trim().to_owned(),
            key: key.clone(),
            generation: state.generation + 1,
        });
        Ok(())
    }

    /// Sets the Kontrol username (the accepted token issuer). Empties the caches.
    pub fn set_kontrol_user(&self, user: &str) {
        self.update(|state| KontrolState {
            user: user.to_owned(),
            key_pem: state.key_pem.clone(),
            key: state.key.clone(),
            generation: state.generation + 1,
        });
    }

    /// The Kontrol key PEM in force (empty if none).
    pub fn kontrol_key(&self) -> String {
        self.state().key_pem.clone()
    }

    /// The Kontrol username in force.
    pub fn kontrol_user(&self) -> String {
        self.state().user.clone()
    }

    /// Forgets every cached verification and trust decision.
    pub fn clear_caches(&self) {
        self.update(|state| KontrolState {
            user: state.user.clone(),
            key_pem: state.key_pem.clone(),
            key: state.key.clone(),
            generation: state.generation + 1,
        });
    }

    fn update(&self, f: impl Fn(&KontrolState) -> KontrolState) {
        let mut guard = self.kontrol.write().unwrap_or_else(PoisonError::into_inner);
        let next = f(&guard);
        let generation = next.generation;
        *guard = Arc::new(next);
        // Reset while still holding the state lock so that no verification can observe the
        // new state and a cache of the old generation.
        self.tokens.reset(generation);
        self.kite_keys.reset(generation);
        self.trusted.reset(generation);
        // After the new state is in place: whoever reads the new epoch verifies with it.
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// A counter that moves on whenever a success returned earlier may no longer hold: the
    /// Kontrol key or user changed, the caches were cleared, or a verifier was registered
    /// or removed. A success reused under [`Self::validity`] is valid only while this is the
    /// value read before the verification began.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// How long a success of [`authenticate`](Self::authenticate) for this credential may
    /// be reused for the same local kite, as long as [`epoch`](Self::epoch) keeps the
    /// value it had before that verification: the window in which a verification cache hit
    /// would give the same answer. Call it right after a success.
    ///
    /// `None` when that is not known: the type is not verified by a built-in verifier, the
    /// success is not cached (caching disabled, or evicted), or a custom audience rule is
    /// set (it is re-run on every request, as it may depend on more than the audience).
    pub fn validity(&self, auth_type: &str, key: &str) -> Option<Validity> {
        match auth_type {
            TOKEN if self.builtin_token.load(Ordering::Acquire) && self.audience.is_none() => {
                self.tokens.with(key, |e| {
                    Validity::of_claims(e.exp, e.not_before, self.skew_secs)
                })
            }
            KITE_KEY if self.builtin_kite_key.load(Ordering::Acquire) => {
                self.kite_keys.with(key, |e| Validity {
                    until: e.until,
                    ..Validity::of_claims(e.exp, e.not_before, self.skew_secs)
                })
            }
            _ => None,
        }
    }

    fn state(&self) -> Arc<KontrolState> {
        Arc::clone(&self.kontrol.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Authenticates a credential `{type: auth_type, key}` arriving at `local`, now.
    pub async fn authenticate(
        &self,
        auth_type: &str,
        key: &str,
        local: &Kite,
    ) -> Result<Authenticated, AuthError> {
        self.authenticate_at(auth_type, key, local, SystemTime::now())
            .await
    }

    /// [`authenticate`](Self::authenticate) with an explicit clock (tests, replays).
    pub async fn authenticate_at(
        &self,
        auth_type: &str,
        key: &str,
        local: &Kite,
        now: SystemTime,
    ) -> Result<Authenticated, AuthError> {
        let registered = match auth_type {
            TOKEN if self.builtin_token.load(Ordering::Acquire) => Some(Registered::Token),
            KITE_KEY if self.builtin_kite_key.load(Ordering::Acquire) => Some(Registered::KiteKey),
            _ => self
                .verifiers
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(auth_type)
                .cloned(),
        };
        let result = match registered {
            None => return Err(AuthError::UnknownType(auth_type.to_owned())),
            Some(Registered::Token) => self.verify_token(key, local, now),
            Some(Registered::KiteKey) => self.verify_kite_key(key, now).await,
            Some(Registered::Custom(verifier)) => verifier.verify(key, local).await,
        };
        match result {
            Ok(username) => Ok(Authenticated { username }),
            Err(VerifyError::KontrolKeyNotSet) => Err(AuthError::KontrolKeyNotSet),
            Err(reason) => Err(AuthError::Rejected {
                auth_type: auth_type.to_owned(),
                reason,
            }),
        }
    }

    /// Verifies a `token` credential (PROTOCOL.md 6.6) for a request arriving at `local`;
    /// returns the username (`sub`).
    pub fn verify_token(
        &self,
        token: &str,
        local: &Kite,
        now: SystemTime,
    ) -> Result<String, VerifyError> {
        let now_s = unix_seconds(now);
        let hit = self.tokens.with(token, |entry| {
            if self.time_ok(entry.exp, entry.not_before, now_s) {
                Some(
                    self.check_audience(local, &entry.aud)
                        .map(|()| String::from(&*entry.sub)),
                )
            } else {
                None
            }
        });
        match hit {
            Some(Some(result)) => return result,
            Some(None) => self.tokens.remove(token),
            None => {}
        }

        let state = self.state();
        let decoded = jwt::decode(token)?;
        let kontrol_key = state.key.as_ref().ok_or(VerifyError::KontrolKeyNotSet)?;
        let issuer = decoded.claims.iss.as_deref().unwrap_or("");
        if issuer != state.user {
            return Err(VerifyError::IssuerNotTrusted(issuer.to_owned()));
        }
        let Decoded { claims, .. } = self.check_signed(decoded, kontrol_key, now_s, true)?;
        let aud = claims.audience().ok_or(VerifyError::NoAudience)?;
        let sub = claims.subject().ok_or(VerifyError::NoUsername)?;
        self.tokens.insert(
            state.generation,
            token,
            TokenEntry {
                sub: sub.into(),
                aud: aud.into(),
                exp: claims.exp,
                not_before: not_before(&claims),
            },
            |e| !self.time_ok(e.exp, e.not_before, now_s),
        );
        self.check_audience(local, aud)?;
        Ok(sub.to_owned())
    }

    /// Verifies a `kiteKey` credential (PROTOCOL.md 6.5); returns the username (`sub`).
    /// There is no issuer and no audience check.
    pub async fn verify_kite_key(&self, key: &str, now: SystemTime) -> Result<String, VerifyError> {
        let now_s = unix_seconds(now);
        let hit = self.kite_keys.with(key, |entry| {
            let trusted = entry.until.is_none_or(|until| now <= until);
            (trusted && self.time_ok(entry.exp, entry.not_before, now_s))
                .then(|| String::from(&*entry.sub))
        });
        match hit {
            Some(Some(username)) => return Ok(username),
            Some(None) => self.kite_keys.remove(key),
            None => {}
        }

        let state = self.state();
        let decoded = jwt::decode(key)?;
        let pem = decoded
            .claims
            .kontrol_key
            .as_deref()
            .filter(|pem| !pem.is_empty())
            .ok_or(VerifyError::NoKontrolKey)?;
        let (public_key, until) = self.trusted_key(pem, &state, now).await?;
        let Decoded { claims, .. } = self.check_signed(decoded, &public_key, now_s, false)?;
        let sub = claims.subject().ok_or(VerifyError::NoUsername)?;
        // With a custom trust rule the result may be reused only as long as the trust
        // decision; the default rule is re-evaluated by emptying the caches on key change.
        let cache_until = match (&self.trust, until) {
            (None, _) => Some(None),
            (Some(_), Some(until)) => Some(Some(until)),
            (Some(_), None) => None,
        };
        if let Some(until) = cache_until {
            self.kite_keys.insert(
                state.generation,
                key,
                KiteKeyEntry {
                    sub: sub.into(),
                    exp: claims.exp,
                    not_before: not_before(&claims),
                    until,
                },
                |e| {
                    !self.time_ok(e.exp, e.not_before, now_s)
                        || e.until.is_some_and(|until| now > until)
                },
            );
        }
        Ok(sub.to_owned())
    }

    /// Parses and trust-checks the Kontrol key of a kite key, with Go's cache semantics.
    /// Returns the key and until when the (cached) decision holds, if it was cached.
    async fn trusted_key(
        &self,
        pem: &str,
        state: &KontrolState,
        now: SystemTime,
    ) -> Result<(Arc<PublicKey>, Option<SystemTime>), VerifyError> {
        let caching = !self.verify_ttl.is_zero();
        if caching {
            let hit = self.trusted.with(pem, |entry| {
                (now <= entry.until).then(|| (entry.trusted, Arc::clone(&entry.key), entry.until))
            });
            match hit {
                Some(Some((true, key, until))) => return Ok((key, Some(until))),
                Some(Some((false, _, _))) => return Err(VerifyError::InvalidKontrolKey),
                Some(None) => self.trusted.remove(pem),
                None => {}
            }
        }
        let key = Arc::new(PublicKey::from_pem(pem)?);
        let decision = match &self.trust {
            Some(trust) => trust.check(pem, &key).await,
            None => match &state.key {
                Some(ours) if **ours == *key => Ok(()),
                _ => Err(VerifyError::KontrolKeyNotTrusted),
            },
        };
        let until = now.checked_add(self.verify_ttl);
        let remember = |trusted: bool| {
            if let (true, Some(until)) = (caching, until) {
                self.trusted.insert(
                    state.generation,
                    pem,
                    TrustEntry {
                        trusted,
                        key: Arc::clone(&key),
                        until,
                    },
                    |e| now > e.until,
                );
            }
        };
        match decision {
            Ok(()) => {
                remember(true);
                Ok((Arc::clone(&key), until.filter(|_| caching)))
            }
            Err(VerifyError::KontrolKeyNotTrusted) => {
                remember(false);
                Err(VerifyError::KontrolKeyNotTrusted)
            }
            Err(other) => Err(other),
        }
    }

    /// Time claims and signature, reported like jwt-go: a bad signature wins over a time
    /// error. `token_wording` reports a bad signature as `token is expired` (Q6).
    fn check_signed<'a>(
        &self,
        decoded: Decoded<'a>,
        key: &PublicKey,
        now_s: i64,
        token_wording: bool,
    ) -> Result<Decoded<'a>, VerifyError> {
        let time = check_time(&decoded.claims, now_s, self.skew_secs);
        if !key.verify(
            decoded.alg,
            decoded.signing_input.as_bytes(),
            &decoded.signature,
        ) {
            return Err(if token_wording {
                VerifyError::TokenExpired
            } else {
                VerifyError::SignatureInvalid
            });
        }
        time?;
        Ok(decoded)
    }

    fn check_audience(&self, local: &Kite, aud: &str) -> Result<(), VerifyError> {
        match &self.audience {
            Some(check) => check(local, aud),
            None => verify_audience(local, aud),
        }
    }

    fn time_ok(&self, exp: Option<i64>, not_before: Option<i64>, now_s: i64) -> bool {
        exp.is_none_or(|exp| now_s <= exp.saturating_add(self.skew_secs))
            && not_before.is_none_or(|nb| now_s.saturating_add(self.skew_secs) >= nb)
    }

    /// How many entries the caches hold (diagnostics).
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            tokens: self.tokens.len(),
            kite_keys: self.kite_keys.len(),
            trust_decisions: self.trusted.len(),
        }
    }
}

/// Sizes of an [`Authenticator`]'s caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Verified tokens.
    pub tokens: usize,
    /// Verified kite keys.
    pub kite_keys: usize,
    /// Trust decisions about Kontrol keys named in kite keys.
    pub trust_decisions: usize,
}

fn parse_optional_key(pem: &str) -> Result<Option<Arc<PublicKey>>, KeyError> {
    let pem = pem.trim();
    if pem.is_empty() {
        Ok(None)
    } else {
        PublicKey::from_pem(pem).map(|k| Some(Arc::new(k)))
    }
}

/// The later of `iat` and `nbf` (zero = absent, as in Go).
fn not_before(claims: &Claims) -> Option<i64> {
    let iat = claims.iat.filter(|v| *v != 0);
    let nbf = claims.nbf.filter(|v| *v != 0);
    match (iat, nbf) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Go's `StandardClaims.Valid()` with a tolerance: expired if `now > exp + skew`, used
/// before issued if `now + skew < iat`, not valid yet if `now + skew < nbf`; zero claims are
/// absent. When several fail, the last message (nbf, then iat, then exp) is the one
/// reported, as in Go. The "expired by" amount is measured from `exp` itself.
pub(crate) fn check_time(claims: &Claims, now_s: i64, skew_s: i64) -> Result<(), VerifyError> {
    if let Some(nbf) = claims.nbf.filter(|v| *v != 0) {
        if now_s.saturating_add(skew_s) < nbf {
            return Err(VerifyError::NotValidYet);
        }
    }
    if let Some(iat) = claims.iat.filter(|v| *v != 0) {
        if now_s.saturating_add(skew_s) < iat {
            return Err(VerifyError::UsedBeforeIssued);
        }
    }
    if let Some(exp) = claims.exp.filter(|v| *v != 0) {
        if now_s > exp.saturating_add(skew_s) {
            let late = u64::try_from(now_s.saturating_sub(exp)).unwrap_or(0);
            return Err(VerifyError::ExpiredBy(Duration::from_secs(late)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{issue_kite_key, issue_token, KeyPair, DEFAULT_TOKEN_TTL};
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn time_rules() {
        let c = Claims {
            exp: Some(100),
            iat: Some(50),
            nbf: Some(60),
            ..Claims::default()
        };
        assert_eq!(check_time(&c, 100, 0), Ok(()));
        assert_eq!(
            check_time(&c, 101, 0),
            Err(VerifyError::ExpiredBy(Duration::from_secs(1)))
        );
        assert_eq!(check_time(&c, 101, 5), Ok(()));
        assert_eq!(check_time(&c, 55, 0), Err(VerifyError::NotValidYet));
        assert_eq!(check_time(&c, 55, 5), Ok(()));
        assert_eq!(check_time(&c, 40, 0), Err(VerifyError::NotValidYet));
        let c = Claims {
            exp: Some(10),
            iat: Some(50),
            ..Claims::default()
        };
        assert_eq!(check_time(&c, 40, 0), Err(VerifyError::UsedBeforeIssued));
        let zero = Claims {
            exp: Some(0),
            iat: Some(0),
            nbf: Some(0),
            ..Claims::default()
        };
        assert_eq!(check_time(&zero, i64::MAX, 300), Ok(()));
        assert_eq!(check_time(&Claims::default(), i64::MIN, 0), Ok(()));
    }

    #[tokio::test]
    async fn caches_fill_and_reset() {
        let pair = KeyPair::generate(1024).unwrap();
        let auth = Authenticator::new(AuthSettings {
            kontrol_user: "kontrol".into(),
            kontrol_key: pair.public_pem().into(),
            ..AuthSettings::default()
        })
        .unwrap();
        let me = Kite {
            username: "alice".into(),
            ..Kite::default()
        };
        let now = at(1_600_000_000);
        let token = issue_token(
            &pair,
            "/alice",
            "bob",
            "kontrol",
            DEFAULT_TOKEN_TTL,
            now,
            true,
        )
        .unwrap();
        let key = issue_kite_key(&pair, "kontrol", "carol", "http://k/kite", now).unwrap();
        assert_eq!(auth.verify_token(&token, &me, now).unwrap(), "bob");
        assert_eq!(auth.verify_kite_key(&key, now).await.unwrap(), "carol");
        let stats = auth.cache_stats();
        assert_eq!(
            (stats.tokens, stats.kite_keys, stats.trust_decisions),
            (1, 1, 1)
        );
        auth.set_kontrol_user("kontrol");
        let stats = auth.cache_stats();
        assert_eq!(
            (stats.tokens, stats.kite_keys, stats.trust_decisions),
            (0, 0, 0)
        );
        assert_eq!(auth.verify_token(&token, &me, now).unwrap(), "bob");
        assert_eq!(auth.cache_stats().tokens, 1);
    }
}
