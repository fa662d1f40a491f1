//! Kite configuration (PROTOCOL.md 7): defaults, the kite.key, `KITE_*` variables.
//!
//! Two entry points, as in Go (7.3):
//! * [`Config::default()`] — defaults only, no kite.key is read (username `unknown`, no
//!   Kontrol settings);
//! * [`Config::load()`] — full load: defaults → kite.key (must exist) → environment
//!   variables, which override kite.key values.
//!
//! ```
//! use std::collections::HashMap;
//! use std::time::{Duration, SystemTime};
//! use kite::auth::{issue_kite_key, KeyPair};
//! use kite::config::{Config, Transport};
//!
//! let home = tempfile::tempdir().unwrap();
//! let kontrol = KeyPair::generate(1024).unwrap();
//! let key = issue_kite_key(&kontrol, "kontrol", "devrim", "http://127.0.0.1:4000/kite",
//!                          SystemTime::now()).unwrap();
//! kite::kitekey::write(home.path(), &key).unwrap();
//!
//! let env = HashMap::from([
//!     ("KITE_ENVIRONMENT".to_owned(), "production".to_owned()),
//!     ("KITE_TRANSPORT".to_owned(), "XHRPolling".to_owned()),
//!     ("KITE_TIMEOUT".to_owned(), "30s".to_owned()),
//! ]);
//! let config = Config::load_from(Some(home.path()), &env).unwrap();
//! assert_eq!(config.username, "devrim");          // from kite.key
//! assert_eq!(config.kontrol_user, "kontrol");
//! assert_eq!(config.environment, "production");   // from KITE_ENVIRONMENT
//! assert_eq!(config.transport, Transport::XhrPolling);
//! assert_eq!(config.timeout, Duration::from_secs(30));
//! assert_eq!(Config::default().username, "unknown");
//! ```

pub mod duration;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::auth::{DEFAULT_CLOCK_SKEW, DEFAULT_VERIFY_TTL};
use crate::kitekey::{self, KiteKey, KiteKeyError};

/// Default for [`Config::timeout`]: 15 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default for [`Config::handshake_timeout`]: 15 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Client transport selection (Go's `config.Transport`; `KITE_TRANSPORT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Pick automatically (WebSocket, falling back to XHR polling). `auto`.
    #[default]
    Auto,
    /// SockJS WebSocket transport. `WebSocket`.
    WebSocket,
    /// SockJS XHR polling transport. `XHRPolling`.
    XhrPolling,
}

impl Transport {
    /// The Go name: `auto`, `WebSocket`, `XHRPolling`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::WebSocket => "WebSocket",
            Self::XhrPolling => "XHRPolling",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Transport {
    type Err = ConfigError;

    /// Case-sensitive Go names; anything else is [`ConfigError::UnknownTransport`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "WebSocket" => Ok(Self::WebSocket),
            "XHRPolling" => Ok(Self::XhrPolling),
            other => Err(ConfigError::UnknownTransport(other.to_owned())),
        }
    }
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The kite.key could not be located, read or verified.
    #[error(transparent)]
    KiteKey(#[from] KiteKeyError),
    /// `KITE_TRANSPORT` is not `WebSocket`, `XHRPolling` or `auto` (Go's wording).
    #[error("transport '{0}' doesn't exists")]
    UnknownTransport(String),
    /// `KITE_PORT` is not a port number.
    #[error("invalid KITE_PORT {value:?}: {reason}")]
    InvalidPort {
        /// The variable's value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// The configuration of a kite (PROTOCOL.md 7.1, the fields that apply to this runtime).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Owner of the kite; default `unknown`; kite.key `sub`; `KITE_USERNAME`.
    pub username: String,
    /// Default `unknown`; `KITE_ENVIRONMENT`.
    pub environment: String,
    /// Default `unknown`; `KITE_REGION`.
    pub region: String,
    /// kite.key `jti`; informational only (the kite id is a fresh UUID per process).
    pub id: String,
    /// The raw kite.key JWT (used for `kiteKey` authentication towards Kontrol).
    pub kite_key: String,
    /// Kontrol's SockJS URL, the primary one; kite.key `kontrolURL`; the first entry of
    /// `KITE_KONTROL_URL`.
    pub kontrol_url: String,
    /// Every Kontrol of a scale-out registry this kite may use, in the order it tries them
    /// (see [`Config::kontrol_url_list`]): `KITE_KONTROL_URL` as a comma-separated list
    /// (`http://a:4000/kite,http://b:4000/kite`). Default empty: then the kite uses
    /// `kontrol_url` alone (the kite.key's `kontrolURL` unless overridden).
    pub kontrol_urls: Vec<String>,
    /// Kontrol's public key PEM; kite.key `kontrolKey`.
    pub kontrol_key: String,
    /// Kontrol's username (accepted token issuer); kite.key `iss`.
    pub kontrol_user: String,
    /// All methods skip authentication.
    pub disable_authentication: bool,
    /// Client transport; default [`Transport::Auto`]; `KITE_TRANSPORT`.
    pub transport: Transport,
    /// Listen address; default `0.0.0.0`; `KITE_IP`.
    pub ip: String,
    /// Listen port; default 0 (ephemeral); `KITE_PORT`.
    pub port: u16,
    /// Lifetime of cached kite-key trust decisions; default 5 min; zero = no caching;
    /// `KITE_VERIFY_TTL` (Go duration; `0` means the default, negative disables the cache).
    pub verify_ttl: Duration,
    /// Clock-skew tolerance when verifying credentials (not a Go setting); default
    /// [`DEFAULT_CLOCK_SKEW`], at most 5 min.
    pub clock_skew: Duration,
    /// XHR poll timeout, default timeout of Kontrol calls, HTTP register/heartbeat; default
    /// 15 s; `KITE_TIMEOUT`.
    pub timeout: Duration,
    /// WebSocket handshake timeout; default 15 s; `KITE_HANDSHAKE_TIMEOUT`.
    pub handshake_timeout: Duration,
}

impl Default for Config {
    /// Defaults only; no kite.key is read.
    fn default() -> Self {
        Self {
            username: "unknown".to_owned(),
            environment: "unknown".to_owned(),
            region: "unknown".to_owned(),
            id: String::new(),
            kite_key: String::new(),
            kontrol_url: String::new(),
            kontrol_urls: Vec::new(),
            kontrol_key: String::new(),
            kontrol_user: String::new(),
            disable_authentication: false,
            transport: Transport::Auto,
            ip: "0.0.0.0".to_owned(),
            port: 0,
            verify_ttl: DEFAULT_VERIFY_TTL,
            clock_skew: DEFAULT_CLOCK_SKEW,
            timeout: DEFAULT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl Config {
    /// Full load from this process's environment: defaults → `$KITE_HOME/kite.key`
    /// (default `~/.kite/kite.key`; must exist and be valid) → `KITE_*` variables.
    pub fn load() -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(None, &env)
    }

    /// Full load with an explicit environment: the kite.key is read from `kite_home` if
    /// given, else from the home derived from `env` (`KITE_HOME`, else `$HOME/.kite`); then
    /// the `KITE_*` variables of `env` apply.
    pub fn load_from(
        kite_home: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let home = match kite_home {
            Some(home) => home.to_owned(),
            None => kitekey::kite_home_from(env)?,
        };
        let key = KiteKey::load(&home, SystemTime::now())?;
        let mut config = Self::default();
        config.apply_kite_key(&key);
        config.apply_env(env)?;
        Ok(config)
    }

    /// Takes `KiteKey`, `Username` (`sub`), `KontrolUser` (`iss`), `Id` (`jti`),
    /// `KontrolURL` and `KontrolKey` from a kite key (6.3).
    pub fn apply_kite_key(&mut self, key: &KiteKey) {
        self.kite_key = key.raw.clone();
        self.username = key.username().to_owned();
        self.kontrol_user = key.kontrol_user().to_owned();
        self.id = key.id().to_owned();
        self.kontrol_url = key.kontrol_url().to_owned();
        self.kontrol_key = key.kontrol_key().to_owned();
    }

    /// The Kontrol URLs to try, in order: [`kontrol_url`](Self::kontrol_url) first (when
    /// set), then the entries of [`kontrol_urls`](Self::kontrol_urls) not already listed.
    /// Setting only `kontrol_url` (as before) therefore gives a one-entry list, and setting
    /// `kontrol_url` to another value makes it the primary while the others stay fallbacks.
    ///
    /// ```
    /// let mut c = kite::Config::default();
    /// c.kontrol_url = "http://b/kite".into();
    /// c.kontrol_urls = vec!["http://a/kite".into(), "http://b/kite".into()];
    /// assert_eq!(c.kontrol_url_list(), ["http://b/kite", "http://a/kite"]);
    /// ```
    pub fn kontrol_url_list(&self) -> Vec<String> {
        let mut list: Vec<String> = Vec::with_capacity(self.kontrol_urls.len() + 1);
        let candidates = std::iter::once(&self.kontrol_url).chain(&self.kontrol_urls);
        for url in candidates {
            let url = url.trim();
            if !url.is_empty() && !list.iter().any(|u| u == url) {
                list.push(url.to_owned());
            }
        }
        list
    }

    /// Applies the `KITE_*` variables of `env` (7.1): empty values are ignored; an unknown
    /// `KITE_TRANSPORT` or a `KITE_PORT` that is not a port number is an error; invalid
    /// durations are silently ignored, like Go, and so are negative `KITE_TIMEOUT` /
    /// `KITE_HANDSHAKE_TIMEOUT` values (Go would take them; they make no sense).
    /// `KITE_KONTROL_URL` may list several Kontrols separated by commas: the first becomes
    /// [`kontrol_url`](Self::kontrol_url), all of them [`kontrol_urls`](Self::kontrol_urls)
    /// (blank entries and duplicates are dropped).
    /// `KITE_HOME` is not a field: it is used by [`Config::load_from`] to find the kite.key.
    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let var = |name: &str| env.get(name).map(String::as_str).filter(|v| !v.is_empty());
        if let Some(v) = var("KITE_USERNAME") {
            self.username = v.to_owned();
        }
        if let Some(v) = var("KITE_ENVIRONMENT") {
            self.environment = v.to_owned();
        }
        if let Some(v) = var("KITE_REGION") {
            self.region = v.to_owned();
        }
        if let Some(v) = var("KITE_IP") {
            self.ip = v.to_owned();
        }
        if let Some(v) = var("KITE_PORT") {
            self.port =
                v.parse()
                    .map_err(|e: std::num::ParseIntError| ConfigError::InvalidPort {
                        value: v.to_owned(),
                        reason: e.to_string(),
                    })?;
        }
        if let Some(v) = var("KITE_KONTROL_URL") {
            let urls = parse_url_list(v);
            if let Some(first) = urls.first() {
                self.kontrol_url.clone_from(first);
                self.kontrol_urls = urls;
            }
        }
        if let Some(v) = var("KITE_TRANSPORT") {
            self.transport = v.parse()?;
        }
        if let Some(ttl) = var("KITE_VERIFY_TTL").and_then(|v| duration::parse_go_duration(v).ok())
        {
            // Go: 0 means the default, negative means "no cache".
            self.verify_ttl = match ttl {
                0 => DEFAULT_VERIFY_TTL,
                n if n < 0 => Duration::ZERO,
                n => Duration::from_nanos(n.unsigned_abs()),
            };
        }
        if let Some(timeout) = var("KITE_TIMEOUT").and_then(|v| duration::parse_duration(v).ok()) {
            self.timeout = timeout;
        }
        if let Some(timeout) =
            var("KITE_HANDSHAKE_TIMEOUT").and_then(|v| duration::parse_duration(v).ok())
        {
            self.handshake_timeout = timeout;
        }
        Ok(())
    }
}

/// Splits a comma-separated URL list (`KITE_KONTROL_URL`): entries are trimmed, blank ones
/// and repeats dropped, the order kept.
///
/// ```
/// use kite::config::parse_url_list;
/// assert_eq!(parse_url_list(" http://a/kite, ,http://b/kite,http://a/kite"),
///            ["http://a/kite", "http://b/kite"]);
/// ```
pub fn parse_url_list(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for url in s.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        if !out.iter().any(|u| u == url) {
            out.push(url.to_owned());
        }
    }
    out
}
