//! Kontrol's errors, with the exact texts of the Go original (PROTOCOL.md 8.1, 8.2).
//!
//! Every [`KontrolError`] converts into the wire error ([`KiteError`]) a kite peer sees:
//! [`KontrolError::error_type`] is its `type`, `to_string()` its `message`.

use kite::auth::{AuthError, KeyError};
use kite_protocol::{IdentityError, KiteError};

use crate::storage::StorageError;

/// Why a Kontrol operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KontrolError {
    /// The request carries no credentials (`authenticationError`).
    #[error("No authentication information is provided")]
    NoAuthentication,
    /// The operation needs a kite key but got another credential type.
    #[error("Unexpected authentication type: {0}")]
    UnexpectedAuthType(String),
    /// The credential was rejected (`authenticationError` `<type>: <reason>`).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The method's argument has the wrong shape.
    #[error("{0}")]
    InvalidArgument(String),
    /// `register` without a URL.
    #[error("empty url")]
    EmptyUrl,
    /// `register` with a URL that does not parse (or is not http/https/ws/wss).
    #[error("invalid register URL: {0}")]
    InvalidUrl(String),
    /// The identity to register fails the registration check (PROTOCOL.md 1.2).
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A kite claims another user's name than its kite key's.
    #[error("kite username {claimed:?} does not match the kite key's username {owner:?}")]
    UsernameMismatch {
        /// `kite.username` as claimed by the caller.
        claimed: String,
        /// The kite key's `sub`.
        owner: String,
    },
    /// The kite key names a Kontrol key this Kontrol does not have (or no key can be used).
    #[error("no valid authentication key found")]
    NoValidKey,
    /// `getKey` with a kite key lacking `kontrolKey`.
    #[error("public key is not passed")]
    PublicKeyNotPassed,
    /// Storing a registration failed.
    #[error("internal error - register")]
    InternalRegister,
    /// `getToken` with an argument that is not a query.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A query the storage refuses (`all query fields are empty`, a field containing `/`,
    /// `Malformed constraint: latest`, ...).
    #[error("{0}")]
    Query(String),
    /// `getKites` without a username while Kontrol requires one.
    #[error("Empty username field")]
    EmptyUsername,
    /// `getToken`: nothing matches.
    #[error("no kites found")]
    NoKitesFound,
    /// `getToken`: the query is ambiguous.
    #[error("query matches more than one kite")]
    MultipleKites,
    /// `registerMachine` refused the caller.
    #[error("cannot authenticate user: {0}")]
    CannotAuthenticateUser(String),
    /// Too many watchers.
    #[error("too many watchers (limit {0})")]
    TooManyWatchers(usize),
    /// `cancelWatcher` with an id this caller does not own.
    #[error("watcher not found: {0}")]
    WatcherNotFound(String),
    /// A storage failure (logged; the peer sees `internal error - <operation>`).
    #[error("internal error - {operation}")]
    Storage {
        /// What was being done.
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: StorageError,
    },
    /// Signing failed (logged; the peer sees `internal error - signing`).
    #[error("internal error - signing")]
    Signing(#[source] KeyError),
    /// Kontrol is shutting down.
    #[error("kontrol is shutting down")]
    Closed,
}

impl KontrolError {
    /// The wire error type: `authenticationError` for missing or rejected credentials
    /// (`genericError` for a token arriving without a configured Kontrol key, as in Go),
    /// `genericError` for everything else (Kontrol's handlers return plain errors in Go).
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::NoAuthentication => KiteError::AUTHENTICATION_ERROR,
            Self::Auth(e) => e.error_type(),
            _ => KiteError::GENERIC_ERROR,
        }
    }

    /// Wraps a storage error: errors caused by the input (invalid fields, unknown or removed
    /// key pairs) keep their text, failures of the storage itself become
    /// `internal error - <operation>`.
    pub(crate) fn storage(operation: &'static str, source: StorageError) -> Self {
        if source.is_client_error() {
            Self::Query(source.to_string())
        } else {
            Self::Storage { operation, source }
        }
    }

    /// The wire error.
    pub fn to_kite_error(&self) -> KiteError {
        KiteError::new(self.error_type(), self.to_string())
    }
}

impl From<KontrolError> for KiteError {
    fn from(e: KontrolError) -> KiteError {
        e.to_kite_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        assert_eq!(
            KontrolError::UnexpectedAuthType("token".into()).to_string(),
            "Unexpected authentication type: token"
        );
        assert_eq!(
            KontrolError::InvalidUrl("relative URL without a base".into()).to_string(),
            "invalid register URL: relative URL without a base"
        );
        assert_eq!(
            KontrolError::Identity(IdentityError::EmptyKiteField("region")).to_string(),
            "Empty Kite field: region"
        );
        let e = KontrolError::NoAuthentication.to_kite_error();
        assert_eq!(e.kind, "authenticationError");
        let e = KontrolError::NoKitesFound.to_kite_error();
        assert_eq!(
            (e.kind.as_str(), e.message.as_str()),
            ("genericError", "no kites found")
        );
        assert_eq!(
            KontrolError::UsernameMismatch {
                claimed: "bob".into(),
                owner: "alice".into()
            }
            .to_string(),
            "kite username \"bob\" does not match the kite key's username \"alice\""
        );
    }
}
