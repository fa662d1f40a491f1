//! Storage errors.

use std::time::Duration;

/// Input the storage refuses: a registration, query, TTL or key pair that is not acceptable.
///
/// The `Display` text is meant to be shown to the peer that sent the input (Kontrol replies
/// with it as a `genericError` / HTTP `{"err": ...}`); the texts of the registration checks
/// follow PROTOCOL.md 1.2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A kite identity field is empty (registration check).
    #[error("Empty Kite field: {0}")]
    EmptyField(&'static str),
    /// A field contains `/`, which the string form and the etcd key layout reserve.
    #[error("Field \"{0}\" must not contain '/'")]
    SlashInField(&'static str),
    /// A field contains a NUL character, which no backend can store.
    #[error("Field \"{0}\" must not contain NUL characters")]
    NulInField(&'static str),
    /// A field is longer than [`Limits::max_field_len`](crate::storage::Limits::max_field_len)
    /// or [`Limits::max_url_len`](crate::storage::Limits::max_url_len).
    #[error("Field \"{field}\" is too long: {len} bytes, the limit is {limit}")]
    FieldTooLong {
        /// JSON key of the field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The registration URL is empty.
    #[error("empty url")]
    EmptyUrl,
    /// The registration has no key-pair id.
    #[error("empty key id")]
    EmptyKeyId,
    /// A TTL of zero, or one above [`Limits::max_ttl`](crate::storage::Limits::max_ttl).
    #[error("invalid ttl {ttl:?}: must be greater than zero and at most {max:?}")]
    InvalidTtl {
        /// The TTL asked for.
        ttl: Duration,
        /// The configured maximum.
        max: Duration,
    },
    /// A query with every field empty.
    #[error("all query fields are empty")]
    EmptyQuery,
    /// A query `version` that is neither a version nor a constraint list (PROTOCOL.md 1.3),
    /// e.g. `Malformed constraint: latest`.
    #[error(transparent)]
    Version(#[from] kite_protocol::VersionError),
    /// The registration does not fit the backend's change-notification limit (PostgreSQL
    /// `NOTIFY` payloads must stay under 8000 bytes, JSON-escaped).
    #[error("registration is too large: {len} bytes, the limit is {limit}")]
    RecordTooLarge {
        /// Size of the encoded registration (an upper bound).
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A key-pair field is empty (after trimming whitespace).
    #[error("key pair {0} is empty")]
    EmptyKeyPairField(&'static str),
}

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The input was refused; the message is fit for the peer.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The key pair exists but was deleted (PROTOCOL.md 8.4).
    #[error("key pair is removed")]
    KeyPairRemoved,
    /// No key pair with this id or public key.
    #[error("no key pair found")]
    KeyPairNotFound,
    /// Adding a key pair whose id or public key is already stored with other contents.
    #[error("key pair conflicts with a stored one: {0}")]
    KeyPairConflict(String),
    /// The storage configuration cannot be used.
    #[error("invalid storage configuration: {0}")]
    Config(String),
    /// The backend cannot be reached or is not ready (connection lost, still reconnecting).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A concurrent writer kept changing the same record; the operation gave up after
    /// a bounded number of attempts.
    #[error("storage conflict: {0}")]
    Conflict(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The storage was closed.
    #[error("storage is closed")]
    Closed,
    /// Error from the embedded database.
    #[error("embedded database: {0}")]
    Embedded(#[from] Box<redb::Error>),
    /// Error from PostgreSQL.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// Error from etcd.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// Filesystem error (embedded data directory).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl StorageError {
    /// Whether the error is the caller's fault (bad input, unknown or removed key pair),
    /// as opposed to a storage failure that Kontrol reports as an internal error.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            StorageError::Invalid(_)
                | StorageError::KeyPairRemoved
                | StorageError::KeyPairNotFound
                | StorageError::KeyPairConflict(_)
        )
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError::Embedded(Box::new(redb::Error::from(e)))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Result alias of the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
