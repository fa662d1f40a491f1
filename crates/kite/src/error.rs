//! Errors of kite calls: the wire error object of PROTOCOL.md 4.2/4.4 and the local error
//! types a caller sees (`timeout`, `disconnect`, `sendError`, `invalidResponse`).
//!
//! Every failure a kite call can end with is a [`KiteError`]: a `type` string, a message, an
//! optional application `code` and the request `id` the server assigned. Handlers return
//! `Result<T, KiteError>`; a user error type becomes a kite error through
//! `impl From<MyError> for KiteError` (give it its own `type`/`code` with
//! [`KiteError::custom`]) so that `?` works inside handlers.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Error type strings of PROTOCOL.md 4.4.
pub mod types {
    /// Unknown method name.
    pub const METHOD_NOT_FOUND: &str = "methodNotFound";
    /// Missing or rejected credentials.
    pub const AUTHENTICATION: &str = "authenticationError";
    /// The method's rate limit is exhausted.
    pub const REQUEST_LIMIT: &str = "requestLimitError";
    /// Arguments of the wrong shape or type.
    pub const ARGUMENT: &str = "argumentError";
    /// Any other handler error, or a panic.
    pub const GENERIC: &str = "genericError";
    /// No response within the call's timeout (local).
    pub const TIMEOUT: &str = "timeout";
    /// The connection was lost while waiting (local).
    pub const DISCONNECT: &str = "disconnect";
    /// The request could not be sent (local).
    pub const SEND: &str = "sendError";
    /// The response had an unusable shape (local).
    pub const INVALID_RESPONSE: &str = "invalidResponse";
}

/// A kite error: what travels in the `error` key of a response (PROTOCOL.md 4.2), and what
/// every failed call returns.
///
/// `Display` renders like Go: the message, prefixed by `type + ": "` unless the type is empty
/// or `genericError`, suffixed by `" (" + id + ")"` when the id is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KiteError {
    /// The error class (`methodNotFound`, `genericError`, a custom string...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Human-readable text.
    pub message: String,
    /// Optional application code (`""` when unused).
    pub code: String,
    /// The request id the server assigned (`""` when no request existed).
    pub id: String,
}

impl KiteError {
    /// An error of any type with a message.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        KiteError {
            kind: kind.into(),
            message: message.into(),
            code: String::new(),
            id: String::new(),
        }
    }

    /// A custom error with its own type and application code.
    pub fn custom(
        kind: impl Into<String>,
        message: impl Into<String>,
        code: impl Into<String>,
    ) -> Self {
        KiteError {
            code: code.into(),
            ..KiteError::new(kind, message)
        }
    }

    /// `genericError` with the text of any displayable error: `.map_err(KiteError::generic)`.
    pub fn generic(message: impl fmt::Display) -> Self {
        KiteError::new(types::GENERIC, message.to_string())
    }

    /// `argumentError`.
    pub fn argument(message: impl fmt::Display) -> Self {
        KiteError::new(types::ARGUMENT, message.to_string())
    }

    /// `methodNotFound` for `method` (`Method not found: <name>`).
    pub fn method_not_found(method: &str) -> Self {
        KiteError::new(
            types::METHOD_NOT_FOUND,
            format!("Method not found: {method}"),
        )
    }

    /// `authenticationError` with a message.
    pub fn authentication(message: impl fmt::Display) -> Self {
        KiteError::new(types::AUTHENTICATION, message.to_string())
    }

    /// `requestLimitError` (`The maximum request rate is exceeded.`).
    pub fn request_limit() -> Self {
        KiteError::new(
            types::REQUEST_LIMIT,
            "The maximum request rate is exceeded.",
        )
    }

    /// Local `timeout` error (`No response to "<method>" method in <duration>`).
    pub fn timeout(method: &str, after: Duration) -> Self {
        KiteError::new(
            types::TIMEOUT,
            format!("No response to {method:?} method in {after:?}"),
        )
    }

    /// Local `disconnect` error (`Remote kite has disconnected`).
    pub fn disconnect() -> Self {
        KiteError::new(types::DISCONNECT, "Remote kite has disconnected")
    }

    /// Local `sendError`.
    pub fn send(message: impl fmt::Display) -> Self {
        KiteError::new(types::SEND, message.to_string())
    }

    /// Local `invalidResponse`.
    pub fn invalid_response(message: impl fmt::Display) -> Self {
        KiteError::new(types::INVALID_RESPONSE, message.to_string())
    }

    /// The error with its request id set.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// The error with its application code set.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = code.into();
        self
    }

    /// Whether the error has the given type.
    pub fn is(&self, kind: &str) -> bool {
        self.kind == kind
    }

    /// Whether this error asks the caller to renew its token (type `authenticationError`
    /// and a message containing `token is expired`, PROTOCOL.md 4.4).
    pub fn is_token_expired(&self) -> bool {
        self.kind == types::AUTHENTICATION && self.message.contains("token is expired")
    }
}

impl fmt::Display for KiteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.kind.is_empty() && self.kind != types::GENERIC {
            write!(f, "{}: ", self.kind)?;
        }
        f.write_str(&self.message)?;
        if !self.id.is_empty() {
            write!(f, " ({})", self.id)?;
        }
        Ok(())
    }
}

impl std::error::Error for KiteError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_like_go() {
        let e = KiteError::generic("negative argument").with_id("3fa9c07d12e4b856");
        assert_eq!(e.to_string(), "negative argument (3fa9c07d12e4b856)");
        let e = KiteError::method_not_found("sqaure");
        assert_eq!(e.to_string(), "methodNotFound: Method not found: sqaure");
    }

    #[test]
    fn wire_shape() {
        let e = KiteError::method_not_found("x");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"type":"methodNotFound","message":"Method not found: x","code":"","id":""})
        );
    }
}
