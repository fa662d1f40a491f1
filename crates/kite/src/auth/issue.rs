//! Issuing kite keys (PROTOCOL.md 6.3) and tokens (6.4) — what Kontrol does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kite_protocol::KontrolQuery;

use super::jwt::{sign_claims, Claims};
use super::keys::{KeyError, KeyPair};

/// How far issuers back-date `iat`/`nbf` (and extend `exp`) to absorb clock skew: 5 min.
pub const TOKEN_LEEWAY: Duration = Duration::from_secs(5 * 60);

/// Default token lifetime (before the leeway is added): 48 h.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(48 * 3600);

/// Seconds since the Unix epoch, rounded down (Go's `Time.Unix()`), also for times before
/// 1970.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use kite::auth::unix_seconds;
/// assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_millis(1_530_000_000_999)), 1_530_000_000);
/// assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_millis(1)), -1);
/// ```
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() > 0 {
                secs.saturating_neg().saturating_sub(1)
            } else {
                secs.saturating_neg()
            }
        }
    }
}

fn add(t: SystemTime, d: Duration) -> i64 {
    t.checked_add(d).map_or(i64::MAX, unix_seconds)
}

fn sub(t: SystemTime, d: Duration) -> i64 {
    t.checked_sub(d).map_or(i64::MIN, unix_seconds)
}

/// Claims of a new kite key (6.3): `jti` a random UUID, `iat` = now − `leeway`, `iss`,
/// `sub`, `kontrolKey` (trimmed), `kontrolURL`; no `exp`, `aud`, `nbf`.
pub fn kite_key_claims(
    issuer: &str,
    subject: &str,
    kontrol_url: &str,
    kontrol_key_pem: &str,
    now: SystemTime,
    leeway: Duration,
) -> Claims {
    Claims {
        jti: Some(uuid::Uuid::new_v4().to_string()),
        iat: Some(sub(now, leeway)),
        iss: Some(issuer.to_owned()),
        sub: Some(subject.to_owned()),
        kontrol_key: Some(kontrol_key_pem.trim().to_owned()),
        kontrol_url: Some(kontrol_url.to_owned()),
        ..Claims::default()
    }
}

/// Claims of a new token (6.4): `aud`, `exp` = now + `ttl` + `leeway`, `jti` a random UUID,
/// `iat` = now − `leeway`, `iss`, `nbf` = now − `leeway` (only if `set_nbf`), `sub`.
pub fn token_claims(
    audience: &str,
    subject: &str,
    issuer: &str,
    ttl: Duration,
    now: SystemTime,
    leeway: Duration,
    set_nbf: bool,
) -> Claims {
    let not_before = sub(now, leeway);
    Claims {
        aud: Some(audience.to_owned()),
        exp: Some(add(now, ttl.saturating_add(leeway))),
        jti: Some(uuid::Uuid::new_v4().to_string()),
        iat: Some(not_before),
        iss: Some(issuer.to_owned()),
        nbf: set_nbf.then_some(not_before),
        sub: Some(subject.to_owned()),
        ..Claims::default()
    }
}

/// Issues a kite key for `subject`, signed by `signer`, naming `signer`'s public key as the
/// `kontrolKey` and `kontrol_url` as the `kontrolURL` (6.3, leeway [`TOKEN_LEEWAY`]).
///
/// ```
/// use std::time::SystemTime;
/// use kite::auth::{issue_kite_key, Claims, KeyPair};
/// let kontrol = KeyPair::generate(1024).unwrap();
/// let key = issue_kite_key(&kontrol, "kontrol", "devrim",
///                          "http://kontrol.example.com:4000/kite", SystemTime::now()).unwrap();
/// let claims = Claims::decode_unverified(&key).unwrap();
/// assert_eq!(claims.sub.as_deref(), Some("devrim"));
/// assert_eq!(claims.kontrol_key.as_deref(), Some(kontrol.public_pem()));
/// ```
pub fn issue_kite_key(
    signer: &KeyPair,
    issuer: &str,
    subject: &str,
    kontrol_url: &str,
    now: SystemTime,
) -> Result<String, KeyError> {
    let claims = kite_key_claims(
        issuer,
        subject,
        kontrol_url,
        signer.public_pem(),
        now,
        TOKEN_LEEWAY,
    );
    sign_claims(signer, &claims)
}

/// Issues a token for `subject` towards `audience` (6.4, leeway [`TOKEN_LEEWAY`]); `ttl` is
/// normally [`DEFAULT_TOKEN_TTL`]. `set_nbf` = false omits `nbf` (a Kontrol option).
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use kite::auth::{issue_token, Claims, KeyPair, DEFAULT_TOKEN_TTL};
/// let kontrol = KeyPair::generate(1024).unwrap();
/// let now = UNIX_EPOCH + Duration::from_secs(1_530_000_000);
/// let token = issue_token(&kontrol, "/devrim/production/math", "alice", "kontrol",
///                         DEFAULT_TOKEN_TTL, now, true).unwrap();
/// let claims = Claims::decode_unverified(&token).unwrap();
/// assert_eq!(claims.exp, Some(1_530_173_100));
/// assert_eq!(claims.iat, Some(1_529_999_700));
/// assert_eq!(claims.nbf, claims.iat);
/// ```
pub fn issue_token(
    signer: &KeyPair,
    audience: &str,
    subject: &str,
    issuer: &str,
    ttl: Duration,
    now: SystemTime,
    set_nbf: bool,
) -> Result<String, KeyError> {
    let claims = token_claims(audience, subject, issuer, ttl, now, TOKEN_LEEWAY, set_nbf);
    sign_claims(signer, &claims)
}

/// The audience Kontrol derives from a query (6.4): `/<u>/<e>/<n>` when `name` is set
/// (environment may be empty), else `/<u>/<e>` when `environment` is set, else `/<u>` — which
/// is `/` (every kite) for an empty username.
///
/// ```
/// use kite::auth::token_audience;
/// use kite_protocol::KontrolQuery;
/// let q = |u: &str, e: &str, n: &str| KontrolQuery {
///     username: u.into(), environment: e.into(), name: n.into(), ..KontrolQuery::default()
/// };
/// assert_eq!(token_audience(&q("alice", "unknown", "math")), "/alice/unknown/math");
/// assert_eq!(token_audience(&q("alice", "", "math")), "/alice//math");
/// assert_eq!(token_audience(&q("alice", "prod", "")), "/alice/prod");
/// assert_eq!(token_audience(&q("alice", "", "")), "/alice");
/// assert_eq!(token_audience(&q("", "", "")), "/");
/// ```
pub fn token_audience(query: &KontrolQuery) -> String {
    if !query.name.is_empty() {
        format!("/{}/{}/{}", query.username, query.environment, query.name)
    } else if !query.environment.is_empty() {
        format!("/{}/{}", query.username, query.environment)
    } else {
        format!("/{}", query.username)
    }
}
