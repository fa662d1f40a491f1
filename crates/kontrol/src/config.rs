//! Kontrol configuration: identity, URLs, token and heartbeat timing, machine registration
//! policy and resource limits (PROTOCOL.md 8.3, 8.6).

use std::fmt;
use std::time::Duration;

use kite_protocol::Kite;

/// Default Kontrol username (the `iss` of everything it signs).
pub const DEFAULT_USERNAME: &str = "kontrol";
/// Kontrol's kite name.
pub const KONTROL_NAME: &str = "kontrol";
/// Default Kontrol version.
pub const DEFAULT_VERSION: &str = "0.0.1";
/// Default port of the Kontrol kite.
pub const DEFAULT_PORT: u16 = 4000;
/// Default heartbeat interval asked from kites (`kite.heartbeat` argument, HTTP
/// `heartbeatInterval`): 10 s.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Default grace after a missed heartbeat: 20 s, so a silent kite is gone after 30 s.
pub const DEFAULT_HEARTBEAT_GRACE: Duration = Duration::from_secs(20);
/// Default token lifetime (before the leeway is added): 48 h.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(48 * 3600);
/// Default token leeway (back-dating of `iat`/`nbf`, extension of `exp`, cache margin): 5 min.
pub const DEFAULT_TOKEN_LEEWAY: Duration = Duration::from_secs(5 * 60);
/// Default period at which Kontrol re-reads the key pairs from storage (to learn rotations
/// made through another replica): 30 s.
pub const DEFAULT_KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Default size of generated RSA key pairs.
pub const DEFAULT_KEY_BITS: usize = 2048;
/// Default bound on cached tokens.
pub const DEFAULT_TOKEN_CACHE_CAPACITY: usize = 100_000;
/// Default bound on watchers per owner (connection).
pub const DEFAULT_MAX_WATCHERS_PER_OWNER: usize = 64;
/// Default bound on watchers in total.
pub const DEFAULT_MAX_WATCHERS: usize = 10_000;
/// Default bound on the body of `POST /register`: 64 KiB.
pub const DEFAULT_MAX_HTTP_BODY: usize = 64 * 1024;
/// Default bound on kites returned by one `getKites`.
pub const DEFAULT_MAX_RESULTS: usize = 10_000;
/// Default time allowed for Kontrol's `kite.heartbeat` call on a registering kite: 4 s.
pub const DEFAULT_HEARTBEAT_CALL_TIMEOUT: Duration = Duration::from_secs(4);

/// Who may obtain a kite key through `registerMachine` (PROTOCOL.md 8.1).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum RegisterMachinePolicy {
    /// Nobody (the default, like the stock Go binary): `no valid authentication key found`.
    #[default]
    Disabled,
    /// A caller presenting this secret (argument `{"secret": ...}`) gets one kite key; the
    /// secret is then used up and the policy falls back to [`Disabled`](Self::Disabled).
    /// The secret is per Kontrol process: with several replicas, set it on one of them.
    OneTimeSecret(String),
}

impl fmt::Debug for RegisterMachinePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => f.write_str("Disabled"),
            Self::OneTimeSecret(_) => f.write_str("OneTimeSecret(<redacted>)"),
        }
    }
}

/// Kontrol's configuration. Build it with [`KontrolConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct KontrolConfig {
    /// Kontrol's own identity. `identity.username` is Kontrol's username: the issuer (`iss`)
    /// of every kite key and token it signs, and the token issuer it accepts.
    pub identity: Kite,
    /// Kontrol's SockJS base URL as kites should dial it, e.g.
    /// `http://kontrol.example.com:4000/kite`; written into kite keys (`kontrolURL`).
    pub kontrol_url: String,
    /// URL Kontrol stores for its own registration; `None` = `kontrol_url`.
    pub register_url: Option<String>,
    /// Token lifetime before the leeway (default 48 h).
    pub token_ttl: Duration,
    /// Token leeway (default 5 min): `iat`/`nbf` = now − leeway, `exp` = now + ttl + leeway;
    /// cached tokens are reused for `ttl − leeway`.
    pub token_leeway: Duration,
    /// Whether tokens carry `nbf` (default true).
    pub token_nbf: bool,
    /// Heartbeat interval asked from kites (default 10 s). Whole seconds are sent on the wire
    /// (at least 1).
    pub heartbeat_interval: Duration,
    /// Grace after a missed heartbeat (default 20 s). A registration lives
    /// `heartbeat_interval + heartbeat_grace` after the last heartbeat.
    pub heartbeat_grace: Duration,
    /// Time allowed for Kontrol's `kite.heartbeat` call on a registering kite (default 4 s);
    /// a failure is only logged.
    pub heartbeat_call_timeout: Duration,
    /// How often key pairs are re-read from storage (default 30 s).
    pub key_refresh_interval: Duration,
    /// Size of generated key pairs (default 2048 bits).
    pub key_bits: usize,
    /// `registerMachine` policy (default disabled).
    pub register_machine: RegisterMachinePolicy,
    /// Reject a registration whose claimed `kite.username` is non-empty and differs from the
    /// kite key's username (default true). When false, the kite key's username silently
    /// replaces the claimed one (Go's behaviour). Either way a kite is only ever stored under
    /// its kite key's username.
    pub strict_username: bool,
    /// Require `username` in `getKites` queries (default false; `getToken` never requires it
    /// since Go's token renewer sends id-only queries).
    pub require_query_username: bool,
    /// Bound on cached tokens (default 100 000).
    pub token_cache_capacity: usize,
    /// Bound on kites returned by one `getKites` (default 10 000); larger results are
    /// truncated.
    pub max_results: usize,
    /// Bound on watchers per owner, i.e. per connection (default 64).
    pub max_watchers_per_owner: usize,
    /// Bound on watchers in total (default 10 000).
    pub max_watchers: usize,
    /// Bound on the body of `POST /register` (default 64 KiB); larger bodies get 413.
    pub max_http_body: usize,
    /// The web page at `/` and its API (`/api/kites`, `/api/watch`): enabled by default,
    /// open to anyone reaching the listen address (see [`crate::web`]).
    pub web: crate::web::WebConfig,
}

impl KontrolConfig {
    /// Defaults for a Kontrol named `username` reachable at `kontrol_url`: identity
    /// `/<username>/unknown/kontrol/0.0.1/unknown/<hostname>/<random uuid>`.
    pub fn new(username: impl Into<String>, kontrol_url: impl Into<String>) -> Self {
        KontrolConfig {
            identity: Kite {
                username: username.into(),
                environment: "unknown".into(),
                name: KONTROL_NAME.into(),
                version: DEFAULT_VERSION.into(),
                region: "unknown".into(),
                hostname: local_hostname(),
                id: uuid::Uuid::new_v4().to_string(),
            },
            kontrol_url: kontrol_url.into(),
            register_url: None,
            token_ttl: DEFAULT_TOKEN_TTL,
            token_leeway: DEFAULT_TOKEN_LEEWAY,
            token_nbf: true,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_grace: DEFAULT_HEARTBEAT_GRACE,
            heartbeat_call_timeout: DEFAULT_HEARTBEAT_CALL_TIMEOUT,
            key_refresh_interval: DEFAULT_KEY_REFRESH_INTERVAL,
            key_bits: DEFAULT_KEY_BITS,
            register_machine: RegisterMachinePolicy::Disabled,
            strict_username: true,
            require_query_username: false,
            token_cache_capacity: DEFAULT_TOKEN_CACHE_CAPACITY,
            max_results: DEFAULT_MAX_RESULTS,
            max_watchers_per_owner: DEFAULT_MAX_WATCHERS_PER_OWNER,
            max_watchers: DEFAULT_MAX_WATCHERS,
            max_http_body: DEFAULT_MAX_HTTP_BODY,
            web: crate::web::WebConfig::default(),
        }
    }

    /// Kontrol's username (`identity.username`).
    pub fn username(&self) -> &str {
        &self.identity.username
    }

    /// The URL Kontrol stores for itself.
    pub fn self_url(&self) -> &str {
        self.register_url.as_deref().unwrap_or(&self.kontrol_url)
    }

    /// Lifetime of a registration after its last heartbeat: interval + grace.
    pub fn record_ttl(&self) -> Duration {
        self.heartbeat_interval.saturating_add(self.heartbeat_grace)
    }

    /// The heartbeat interval in whole seconds as sent on the wire (at least 1).
    pub fn heartbeat_interval_secs(&self) -> u64 {
        self.heartbeat_interval.as_secs().max(1)
    }

    /// How long a signed token is reused: `token_ttl − token_leeway`.
    pub fn token_cache_ttl(&self) -> Duration {
        self.token_ttl.saturating_sub(self.token_leeway)
    }

    /// Checks the settings for values Kontrol cannot work with.
    pub fn validate(&self) -> Result<(), String> {
        self.identity
            .validate_for_registration()
            .map_err(|e| format!("kontrol identity: {e}"))?;
        if self.kontrol_url.is_empty() {
            return Err("kontrol_url is empty".into());
        }
        url::Url::parse(&self.kontrol_url).map_err(|e| format!("kontrol_url: {e}"))?;
        url::Url::parse(self.self_url()).map_err(|e| format!("register_url: {e}"))?;
        if self.heartbeat_interval.is_zero() {
            return Err("heartbeat_interval must be positive".into());
        }
        if self.token_ttl <= self.token_leeway {
            return Err("token_ttl must exceed token_leeway".into());
        }
        if self.key_refresh_interval.is_zero() {
            return Err("key_refresh_interval must be positive".into());
        }
        if self.max_http_body == 0 || self.max_results == 0 {
            return Err("limits must be positive".into());
        }
        Ok(())
    }
}

/// The host name of this machine (`HOSTNAME`, `/etc/hostname`, else `localhost`), with `/`
/// replaced so that it is a valid identity field.
pub fn local_hostname() -> String {
    let name = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    name.replace('/', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = KontrolConfig::new("kontrol", "http://127.0.0.1:4000/kite");
        assert!(c.validate().is_ok());
        assert_eq!(c.record_ttl(), Duration::from_secs(30));
        assert_eq!(c.heartbeat_interval_secs(), 10);
        assert_eq!(
            c.token_cache_ttl(),
            Duration::from_secs(47 * 3600 + 55 * 60)
        );
        assert_eq!(c.self_url(), "http://127.0.0.1:4000/kite");
        assert_eq!(c.identity.name, "kontrol");
        assert_eq!(c.identity.version, "0.0.1");
        assert_eq!(
            format!("{:?}", RegisterMachinePolicy::OneTimeSecret("s".into())),
            "OneTimeSecret(<redacted>)"
        );
    }

    #[test]
    fn invalid() {
        let mut c = KontrolConfig::new("kontrol", "not a url");
        assert!(c.validate().is_err());
        c.kontrol_url = "http://x/kite".into();
        c.identity.username = "a/b".into();
        assert!(c.validate().is_err());
    }
}
