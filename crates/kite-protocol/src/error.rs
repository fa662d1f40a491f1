//! Kite errors as they travel in responses (PROTOCOL.md 4.2, 4.4), request ids, and Go's
//! duration formatting used in several error texts.
//!
//! ```
//! use kite_protocol::KiteError;
//!
//! let e = KiteError::method_not_found("sqaure");
//! assert_eq!(
//!     serde_json::to_string(&e).unwrap(),
//!     r#"{"type":"methodNotFound","message":"Method not found: sqaure","code":"","id":""}"#
//! );
//! assert_eq!(e.to_string(), "methodNotFound: Method not found: sqaure");
//! let g = KiteError::generic("negative argument").with_id("3fa9c07d12e4b856");
//! assert_eq!(g.to_string(), "negative argument (3fa9c07d12e4b856)");
//! ```

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fmt::{self, Write as _};
use std::hash::BuildHasher;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A kite error: `{"type","message","code","id"}`, all four keys always present on the
/// wire (empty strings when unset), as Go emits them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct KiteError {
    /// The error class (`type` on the wire), e.g. `genericError`, `methodNotFound`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Human-readable text.
    pub message: String,
    /// Optional application code (`""` if unused).
    pub code: String,
    /// Request id (16 lowercase hex chars) assigned by the server, `""` if none.
    pub id: String,
}

impl KiteError {
    /// `methodNotFound`: no such method.
    pub const METHOD_NOT_FOUND: &'static str = "methodNotFound";
    /// `authenticationError`: missing or rejected credentials.
    pub const AUTHENTICATION_ERROR: &'static str = "authenticationError";
    /// `requestLimitError`: the method is throttled.
    pub const REQUEST_LIMIT_ERROR: &'static str = "requestLimitError";
    /// `argumentError`: the arguments do not fit the method.
    pub const ARGUMENT_ERROR: &'static str = "argumentError";
    /// `genericError`: any other handler error.
    pub const GENERIC_ERROR: &'static str = "genericError";
    /// `timeout` (local): no response in time.
    pub const TIMEOUT: &'static str = "timeout";
    /// `disconnect` (local): the connection was lost while waiting.
    pub const DISCONNECT: &'static str = "disconnect";
    /// `sendError` (local): the message could not be sent.
    pub const SEND_ERROR: &'static str = "sendError";
    /// `invalidResponse` (local): the response was malformed.
    pub const INVALID_RESPONSE: &'static str = "invalidResponse";

    /// An error of type `kind` with `message`, empty code and id.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> KiteError {
        KiteError {
            kind: kind.into(),
            message: message.into(),
            code: String::new(),
            id: String::new(),
        }
    }

    /// Sets the request id.
    pub fn with_id(mut self, id: impl Into<String>) -> KiteError {
        self.id = id.into();
        self
    }

    /// Sets the application code.
    pub fn with_code(mut self, code: impl Into<String>) -> KiteError {
        self.code = code.into();
        self
    }

    /// `methodNotFound` with `Method not found: <name>` (and no id, as Go sends it).
    pub fn method_not_found(name: &str) -> KiteError {
        KiteError::new(Self::METHOD_NOT_FOUND, format!("Method not found: {name}"))
    }

    /// `authenticationError` with a free-form message.
    pub fn authentication(message: impl Into<String>) -> KiteError {
        KiteError::new(Self::AUTHENTICATION_ERROR, message)
    }

    /// `authenticationError`: `No authentication information is provided`.
    pub fn no_authentication() -> KiteError {
        Self::authentication("No authentication information is provided")
    }

    /// `authenticationError`: `Unknown authentication type: <type>`.
    pub fn unknown_authentication_type(auth_type: &str) -> KiteError {
        Self::authentication(format!("Unknown authentication type: {auth_type}"))
    }

    /// `authenticationError`: `<type>: <reason>`, e.g. `token: token is expired by 3m2s`.
    pub fn authentication_rejected(auth_type: &str, reason: impl fmt::Display) -> KiteError {
        Self::authentication(format!("{auth_type}: {reason}"))
    }

    /// `requestLimitError`: `The maximum request rate is exceeded.`
    pub fn request_limit() -> KiteError {
        KiteError::new(
            Self::REQUEST_LIMIT_ERROR,
            "The maximum request rate is exceeded.",
        )
    }

    /// `argumentError` with a message such as `Invalid array length`.
    pub fn argument(message: impl Into<String>) -> KiteError {
        KiteError::new(Self::ARGUMENT_ERROR, message)
    }

    /// `genericError` with a message.
    pub fn generic(message: impl Into<String>) -> KiteError {
        KiteError::new(Self::GENERIC_ERROR, message)
    }

    /// `timeout`: `No response to "<method>" method in <duration>` (Go duration format).
    pub fn timeout(method: &str, after: Duration) -> KiteError {
        KiteError::new(
            Self::TIMEOUT,
            format!(
                "No response to \"{method}\" method in {}",
                format_go_duration(after)
            ),
        )
    }

    /// `timeout`: `Timed out registering to kontrol for <method> method after <duration>`.
    pub fn kontrol_timeout(method: &str, after: Duration) -> KiteError {
        KiteError::new(
            Self::TIMEOUT,
            format!(
                "Timed out registering to kontrol for {method} method after {}",
                format_go_duration(after)
            ),
        )
    }

    /// `disconnect`: `Remote kite has disconnected`.
    pub fn disconnect() -> KiteError {
        KiteError::new(Self::DISCONNECT, "Remote kite has disconnected")
    }

    /// `sendError` with a message such as `can't send, client is closed`.
    pub fn send(message: impl Into<String>) -> KiteError {
        KiteError::new(Self::SEND_ERROR, message)
    }

    /// `invalidResponse` with a message such as `Invalid array length`.
    pub fn invalid_response(message: impl Into<String>) -> KiteError {
        KiteError::new(Self::INVALID_RESPONSE, message)
    }

    /// Whether this is an `authenticationError` about an expired token (what Go clients
    /// check before renewing their token).
    pub fn is_token_expired(&self) -> bool {
        self.kind == Self::AUTHENTICATION_ERROR && self.message.contains("token is expired")
    }

    /// Builds an error from whatever a peer sent as `error` (liberal, PROTOCOL.md 11.4):
    /// for an object, `type` (a non-empty string, else `genericError`), `message` (a
    /// string, else the object's JSON text), `code` (a string or number) and `id` (a
    /// string); a string becomes a `genericError` with that message; anything else a
    /// `genericError` whose message is its JSON text.
    pub fn from_value(value: &Value) -> KiteError {
        match value {
            Value::Object(map) => {
                let kind = match map.get("type") {
                    Some(Value::String(t)) if !t.is_empty() => t.clone(),
                    _ => Self::GENERIC_ERROR.to_string(),
                };
                let message = match map.get("message") {
                    Some(Value::String(m)) => m.clone(),
                    _ => value.to_string(),
                };
                let code = match map.get("code") {
                    Some(Value::String(c)) => c.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => String::new(),
                };
                let id = match map.get("id") {
                    Some(Value::String(i)) => i.clone(),
                    _ => String::new(),
                };
                KiteError {
                    kind,
                    message,
                    code,
                    id,
                }
            }
            Value::String(s) => KiteError::generic(s.clone()),
            other => KiteError::generic(other.to_string()),
        }
    }

    /// The error as a JSON object with all four keys.
    pub fn to_value(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("type".into(), Value::String(self.kind.clone()));
        map.insert("message".into(), Value::String(self.message.clone()));
        map.insert("code".into(), Value::String(self.code.clone()));
        map.insert("id".into(), Value::String(self.id.clone()));
        Value::Object(map)
    }
}

impl fmt::Display for KiteError {
    /// Go's rendering: `message`, prefixed by `type: ` unless the type is empty or
    /// `genericError`, suffixed by ` (id)` when the id is non-empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.kind.is_empty() && self.kind != Self::GENERIC_ERROR {
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

/// Formats a duration the way Go's `time.Duration.String` does: `0s`, `1.5s`, `100ms`,
/// `1m40s`, `48h10m0s`, `2.5µs`, `3ns`.
pub fn format_go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    let mut out = String::new();
    if ns == 0 {
        return "0s".to_string();
    }
    if ns < 1_000 {
        let _ = write!(out, "{ns}ns");
    } else if ns < 1_000_000 {
        write_fraction(&mut out, ns, 1_000);
        out.push_str("µs");
    } else if ns < 1_000_000_000 {
        write_fraction(&mut out, ns, 1_000_000);
        out.push_str("ms");
    } else {
        let secs = ns / 1_000_000_000;
        let (h, m) = (secs / 3600, (secs / 60) % 60);
        if h > 0 {
            let _ = write!(out, "{h}h{m}m");
        } else if m > 0 {
            let _ = write!(out, "{m}m");
        }
        write_fraction(&mut out, ns % 60_000_000_000, 1_000_000_000);
        out.push('s');
    }
    out
}

/// Writes `value / unit` with the fractional digits of the remainder, trailing zeros
/// trimmed (`1500, 1000` → `1.5`).
fn write_fraction(out: &mut String, value: u128, unit: u128) {
    let _ = write!(out, "{}", value / unit);
    let rem = value % unit;
    if rem != 0 {
        let width = unit.ilog10() as usize;
        let digits = format!("{rem:0width$}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
}

/// Formats 64 random bits as a request id: 16 lowercase hex characters.
pub fn request_id_from(random: u64) -> String {
    RequestId::from_bits(random).as_str().to_owned()
}

thread_local! {
    static ID_STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0x6b69_7465_u64));
}

/// A fresh request id: 16 lowercase hex characters from a per-thread SplitMix64
/// generator seeded from the standard library's per-process random hash keys. Unique and
/// unpredictable enough for correlating logs; not a cryptographic secret.
pub fn new_request_id() -> String {
    RequestId::new().as_str().to_owned()
}

/// A request id kept inline (no allocation): what [`new_request_id`] returns as a
/// `String`.
///
/// ```
/// use kite_protocol::RequestId;
/// let id = RequestId::from_bits(0xab);
/// assert_eq!(id.as_str(), "00000000000000ab");
/// assert_eq!(RequestId::new().as_str().len(), 16);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId([u8; 16]);

impl RequestId {
    /// A fresh id (see [`new_request_id`]).
    #[allow(clippy::new_without_default)] // A fresh random value, not a default.
    pub fn new() -> RequestId {
        let x = ID_STATE.with(|s| {
            let next = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            s.set(next);
            next
        });
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        RequestId::from_bits(z ^ (z >> 31))
    }

    /// The id of 64 random bits.
    pub fn from_bits(random: u64) -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 16];
        for (i, slot) in hex.iter_mut().enumerate() {
            *slot = HEX[((random >> (60 - 4 * i)) & 0xf) as usize];
        }
        RequestId(hex)
    }

    /// The 16 hex characters.
    pub fn as_str(&self) -> &str {
        // Always ASCII hex digits.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_form_has_all_four_keys() {
        let e = KiteError::no_authentication().with_id("0c41f9a27be35d18");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"type":"authenticationError","message":"No authentication information is provided","code":"","id":"0c41f9a27be35d18"})
        );
        assert_eq!(e.to_value(), serde_json::to_value(&e).unwrap());
        let back: KiteError = serde_json::from_value(json!({"type":"x"})).unwrap();
        assert_eq!(back, KiteError::new("x", ""));
    }

    #[test]
    fn constructors_use_go_texts() {
        let cases = [
            (
                KiteError::method_not_found("nosuch"),
                "methodNotFound",
                "Method not found: nosuch",
            ),
            (
                KiteError::unknown_authentication_type("sessionID"),
                "authenticationError",
                "Unknown authentication type: sessionID",
            ),
            (
                KiteError::authentication_rejected("token", "token is expired by 3m2s"),
                "authenticationError",
                "token: token is expired by 3m2s",
            ),
            (
                KiteError::request_limit(),
                "requestLimitError",
                "The maximum request rate is exceeded.",
            ),
            (
                KiteError::argument("Invalid array length"),
                "argumentError",
                "Invalid array length",
            ),
            (
                KiteError::timeout("square", Duration::from_secs(4)),
                "timeout",
                "No response to \"square\" method in 4s",
            ),
            (
                KiteError::kontrol_timeout("getKites", Duration::from_secs(15)),
                "timeout",
                "Timed out registering to kontrol for getKites method after 15s",
            ),
            (
                KiteError::disconnect(),
                "disconnect",
                "Remote kite has disconnected",
            ),
            (
                KiteError::send("can't send, client is closed"),
                "sendError",
                "can't send, client is closed",
            ),
            (
                KiteError::invalid_response("Invalid array length"),
                "invalidResponse",
                "Invalid array length",
            ),
        ];
        for (e, kind, message) in cases {
            assert_eq!((e.kind.as_str(), e.message.as_str()), (kind, message));
            assert_eq!(e.id, "");
            assert_eq!(e.code, "");
        }
        assert!(KiteError::authentication_rejected("token", "token is expired").is_token_expired());
        assert!(!KiteError::generic("token is expired").is_token_expired());
    }

    #[test]
    fn text_rendering() {
        assert_eq!(KiteError::generic("boom").to_string(), "boom");
        assert_eq!(KiteError::new("", "boom").to_string(), "boom");
        assert_eq!(
            KiteError::argument("bad").with_id("ab").to_string(),
            "argumentError: bad (ab)"
        );
        assert_eq!(
            KiteError::generic("x").with_code("42").to_string(),
            "x",
            "code is not rendered"
        );
    }

    #[test]
    fn liberal_decoding() {
        let e = KiteError::from_value(&json!({"type":"t","message":"m","code":7,"id":"i"}));
        assert_eq!(e, KiteError::new("t", "m").with_code("7").with_id("i"));
        let e = KiteError::from_value(&json!({}));
        assert_eq!(e, KiteError::generic("{}"));
        let e = KiteError::from_value(&json!({"message": "x", "type": ""}));
        assert_eq!(e, KiteError::generic("x"));
        assert_eq!(
            KiteError::from_value(&json!("oops")),
            KiteError::generic("oops")
        );
        assert_eq!(KiteError::from_value(&json!(5)), KiteError::generic("5"));
    }

    #[test]
    fn go_durations() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(3), "3ns"),
            (Duration::from_nanos(2_500), "2.5µs"),
            (Duration::from_millis(100), "100ms"),
            (Duration::from_micros(1_500), "1.5ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_secs(100), "1m40s"),
            (Duration::from_secs(182), "3m2s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(173_400), "48h10m0s"),
            (Duration::from_nanos(61_000_000_001), "1m1.000000001s"),
        ];
        for (d, s) in cases {
            assert_eq!(format_go_duration(d), s, "{d:?}");
        }
    }

    #[test]
    fn request_ids() {
        assert_eq!(request_id_from(0xab), "00000000000000ab");
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 16);
            assert!(id
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        }
    }
}
