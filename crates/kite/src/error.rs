//! Errors of kite calls: the wire error object of PROTOCOL.md 4.2/4.4 and the local error
//! types a caller sees (`timeout`, `disconnect`, `sendError`, `invalidResponse`).
//!
//! Every failure a kite call can end with is a [`KiteError`] (defined in `kite-protocol`):
//! a `type` string (`kind`), a message, an optional application `code` and the request `id`
//! the server assigned. Handlers return `Result<T, KiteError>`; a user error type becomes a
//! kite error through `impl From<MyError> for KiteError` (give it its own type and code with
//! `KiteError::new(kind, message).with_code(code)`) so that `?` works inside handlers. Any
//! other error: `.map_err(|e| KiteError::generic(e.to_string()))`.
//!
//! `Display` renders like Go: the message, prefixed by `type + ": "` unless the type is
//! empty or `genericError`, suffixed by `" (" + id + ")"` when the id is set.

pub use kite_protocol::KiteError;

/// Error type strings of PROTOCOL.md 4.4.
pub mod types {
    use kite_protocol::KiteError;
    /// Unknown method name.
    pub const METHOD_NOT_FOUND: &str = KiteError::METHOD_NOT_FOUND;
    /// Missing or rejected credentials.
    pub const AUTHENTICATION: &str = KiteError::AUTHENTICATION_ERROR;
    /// The method's rate limit is exhausted.
    pub const REQUEST_LIMIT: &str = KiteError::REQUEST_LIMIT_ERROR;
    /// Arguments of the wrong shape or type.
    pub const ARGUMENT: &str = KiteError::ARGUMENT_ERROR;
    /// Any other handler error, or a panic.
    pub const GENERIC: &str = KiteError::GENERIC_ERROR;
    /// No response within the call's timeout (local).
    pub const TIMEOUT: &str = KiteError::TIMEOUT;
    /// The connection was lost while waiting (local).
    pub const DISCONNECT: &str = KiteError::DISCONNECT;
    /// The request could not be sent (local).
    pub const SEND: &str = KiteError::SEND_ERROR;
    /// The response had an unusable shape (local).
    pub const INVALID_RESPONSE: &str = KiteError::INVALID_RESPONSE;
}
