//! Authentication: verifying and issuing kite keys and tokens (RS256 JWTs, PROTOCOL.md 6).
//!
//! * Servers verify the `authentication` object of incoming requests with an
//!   [`Authenticator`]: built-in verifiers for `kiteKey` (6.5) and `token` (6.6), plus any
//!   number of pluggable [`CredentialVerifier`]s registered by type string (`sessionID`, ...).
//! * Kontrol issues credentials with [`issue_kite_key`] and [`issue_token`], signing with a
//!   [`KeyPair`].
//!
//! Every failure carries the exact Go wording, so an [`AuthError`] can be sent as the wire
//! error `{"type": err.error_type(), "message": err.to_string()}`.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use kite::auth::{issue_token, AuthSettings, Authenticator, KeyPair, DEFAULT_TOKEN_TTL};
//! use kite_protocol::Kite;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! // Kontrol side.
//! let kontrol = KeyPair::generate(1024).unwrap();
//! let now = SystemTime::now();
//! let token = issue_token(&kontrol, "/alice/production/math", "bob", "kontrol",
//!                         DEFAULT_TOKEN_TTL, now, true).unwrap();
//!
//! // Server side: a kite that trusts this Kontrol.
//! let auth = Authenticator::new(AuthSettings {
//!     kontrol_user: "kontrol".into(),
//!     kontrol_key: kontrol.public_pem().into(),
//!     ..AuthSettings::default()
//! }).unwrap();
//! let me = Kite {
//!     username: "alice".into(), environment: "production".into(), name: "math".into(),
//!     ..Kite::default()
//! };
//! let who = auth.authenticate("token", &token, &me).await.unwrap();
//! assert_eq!(who.username, "bob");
//!
//! let err = auth.authenticate("password", "x", &me).await.unwrap_err();
//! assert_eq!(err.to_string(), "Unknown authentication type: password");
//! assert_eq!(err.error_type(), "authenticationError");
//! # });
//! ```

mod cache;
mod issue;
mod jwt;
mod keys;
mod verify;

use std::time::Duration;

pub(crate) use jwt::decode as jwt_decode;
pub(crate) use verify::check_time;

pub use issue::{
    issue_kite_key, issue_token, kite_key_claims, token_audience, token_claims, unix_seconds,
    DEFAULT_TOKEN_TTL, TOKEN_LEEWAY,
};
pub use jwt::{sign_claims, Claims, RS256_HEADER_B64};
pub use keys::{
    parse_private_key_pem, KeyError, KeyPair, PublicKey, RsaAlgorithm, DEFAULT_KEY_BITS,
    MIN_KEY_BITS,
};
pub use verify::{
    trust_fn, verifier_fn, verify_audience, AudienceCheck, AuthSettings, Authenticated,
    Authenticator, BoxFuture, CacheStats, CredentialVerifier, KontrolKeyTrust, Validity,
    DEFAULT_CACHE_CAPACITY, DEFAULT_CLOCK_SKEW, DEFAULT_VERIFY_TTL, MAX_CLOCK_SKEW,
};

use crate::config::duration::{format_duration, go_quote};

/// Credential type string of kite keys.
pub const KITE_KEY: &str = "kiteKey";
/// Credential type string of Kontrol-issued tokens.
pub const TOKEN: &str = "token";

/// Why a credential was rejected: the `<reason>` part of `<type>: <reason>`. Display texts
/// are Go's, byte for byte where a Kite peer can see them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The JWT is structurally broken (segments, base64, JSON, claim types, missing `alg`).
    #[error("{0}")]
    Malformed(String),
    /// `alg` is anything but RS256/RS384/RS512 (`none`, HMAC, ECDSA, PSS, unknown).
    #[error("invalid signing method")]
    InvalidSigningMethod,
    /// A kite key's signature does not match its `kontrolKey` (Go's RSA error text).
    #[error("crypto/rsa: verification error")]
    SignatureInvalid,
    /// A token's signature does not match the Kontrol key. Go deliberately reports
    /// signature failures on tokens this way (Q6) so that clients fetch a fresh token.
    #[error("token is expired")]
    TokenExpired,
    /// `exp` has passed by the given amount (formatted as a Go duration, e.g. `1m40s`).
    #[error("token is expired by {}", format_duration(*.0))]
    ExpiredBy(Duration),
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotValidYet,
    /// `iat` is in the future.
    #[error("Token used before issued")]
    UsedBeforeIssued,
    /// A kite key without a `kontrolKey` claim.
    #[error("no kontrol key found")]
    NoKontrolKey,
    /// The kite key's Kontrol key is not the one this kite trusts.
    #[error("kontrol key is not trusted")]
    KontrolKeyNotTrusted,
    /// The kite key's Kontrol key was recently found untrusted (cached negative decision).
    #[error("invalid kontrol key found")]
    InvalidKontrolKey,
    /// The `kontrolKey` claim is not a usable RSA public key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// `sub` is absent or empty.
    #[error("token has no username")]
    NoUsername,
    /// `aud` is absent or empty.
    #[error("token has no audience")]
    NoAudience,
    /// `iss` is not this kite's Kontrol user.
    #[error("issuer is not trusted: {0}")]
    IssuerNotTrusted(String),
    /// The audience does not start with `/`.
    #[error("invalid audience: invalid kite string ({0})")]
    InvalidAudience(String),
    /// The audience names another user.
    #[error("audience: username {} not allowed ({audience})", go_quote(.username))]
    AudienceUsername {
        /// Username in the audience.
        username: String,
        /// The whole audience.
        audience: String,
    },
    /// The audience names another environment.
    #[error("audience: environment {} not allowed ({audience})", go_quote(.environment))]
    AudienceEnvironment {
        /// Environment in the audience.
        environment: String,
        /// The whole audience.
        audience: String,
    },
    /// The audience names another kite.
    #[error("audience: kite {} not allowed ({audience})", go_quote(.name))]
    AudienceName {
        /// Kite name in the audience.
        name: String,
        /// The whole audience.
        audience: String,
    },
    /// A token arrived but this kite has no Kontrol key to check it with. Surfaced as the
    /// `genericError` `kontrol key is not set in config` (what Go reports).
    #[error("kontrol key is not set in config")]
    KontrolKeyNotSet,
    /// Any other reason (pluggable verifiers use this).
    #[error("{0}")]
    Other(String),
}

/// An authentication failure, ready to be sent as a wire error: type
/// [`error_type`](Self::error_type), message `to_string()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request has no `authentication` object (for runtimes; the authenticator never
    /// returns it itself).
    #[error("No authentication information is provided")]
    Missing,
    /// No verifier is registered for this type.
    #[error("Unknown authentication type: {0}")]
    UnknownType(String),
    /// The verifier for `auth_type` rejected the key.
    #[error("{auth_type}: {reason}")]
    Rejected {
        /// The credential type (`kiteKey`, `token`, ...).
        auth_type: String,
        /// Why.
        reason: VerifyError,
    },
    /// A token arrived but no Kontrol key is configured (Go: `genericError`).
    #[error("kontrol key is not set in config")]
    KontrolKeyNotSet,
}

impl AuthError {
    /// The wire error type: `genericError` for [`AuthError::KontrolKeyNotSet`],
    /// `authenticationError` otherwise.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::KontrolKeyNotSet => "genericError",
            _ => "authenticationError",
        }
    }

    /// Whether a client seeing this error should fetch a new token (Go's check: the message
    /// contains `token is expired`).
    pub fn is_token_expired(&self) -> bool {
        matches!(
            self,
            Self::Rejected {
                reason: VerifyError::TokenExpired | VerifyError::ExpiredBy(_),
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let rejected = |auth_type: &str, reason| AuthError::Rejected {
            auth_type: auth_type.into(),
            reason,
        };
        assert_eq!(
            rejected("token", VerifyError::ExpiredBy(Duration::from_secs(100))).to_string(),
            "token: token is expired by 1m40s"
        );
        assert_eq!(
            rejected(
                "token",
                VerifyError::AudienceUsername {
                    username: "bob".into(),
                    audience: "/bob/production/math".into()
                }
            )
            .to_string(),
            "token: audience: username \"bob\" not allowed (/bob/production/math)"
        );
        assert_eq!(
            rejected("kiteKey", VerifyError::KontrolKeyNotTrusted).to_string(),
            "kiteKey: kontrol key is not trusted"
        );
        assert!(rejected("token", VerifyError::TokenExpired).is_token_expired());
        assert!(!rejected("token", VerifyError::NotValidYet).is_token_expired());
        assert_eq!(AuthError::KontrolKeyNotSet.error_type(), "genericError");
        assert_eq!(
            AuthError::Missing.to_string(),
            "No authentication information is provided"
        );
    }
}
