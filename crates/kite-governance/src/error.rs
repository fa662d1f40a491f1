//! Error types produced by the governance layers, as [`KiteError`] `type` strings (the
//! wire error object of PROTOCOL.md 4.2, so Go and kite.js callers see them too).
//!
//! | `type` | Where | When |
//! |---|---|---|
//! | `circuitOpenError` | client | the circuit breaker of the five-tuple (or of every instance) is open |
//! | `noInstanceError` | client | no instance of the target is connected and healthy within the wait |
//! | `timeout` | client and server | the call's deadline passed |
//! | `requestLimitError` | server | a rate limit (per method or per caller) is exhausted, or the method is at its concurrency bound (load shedding) |
//! | `degradedError` | server | the method is switched off by a degradation switch |

use std::time::Duration;

pub use kite::KiteError;

/// The circuit breaker is open (local to the caller).
pub const CIRCUIT_OPEN: &str = "circuitOpenError";
/// No instance available (local to the caller).
pub const NO_INSTANCE: &str = "noInstanceError";
/// The method is switched off by degradation (server).
pub const DEGRADED: &str = "degradedError";
/// Rate limited or shed (server; the kite protocol's type).
pub const REQUEST_LIMIT: &str = KiteError::REQUEST_LIMIT_ERROR;
/// The deadline passed.
pub const TIMEOUT: &str = KiteError::TIMEOUT;
/// The request could not be sent (nothing reached the peer).
pub const SEND: &str = KiteError::SEND_ERROR;
/// The connection dropped while the call was pending.
pub const DISCONNECT: &str = KiteError::DISCONNECT;

/// `circuitOpenError` for a breaker key.
pub fn circuit_open(what: &str) -> KiteError {
    KiteError::new(CIRCUIT_OPEN, format!("circuit breaker open for {what}"))
}

/// `noInstanceError` for a target.
pub fn no_instance(target: &str) -> KiteError {
    KiteError::new(NO_INSTANCE, format!("no instance of {target} is available"))
}

/// `timeout` for a call whose deadline passed after `budget`.
pub fn deadline_exceeded(method: &str, budget: Duration) -> KiteError {
    KiteError::timeout(method, budget)
}

/// `requestLimitError` with a code telling which limit (`rate`, `callerRate`,
/// `concurrency`).
pub fn request_limit(code: &str) -> KiteError {
    KiteError::request_limit().with_code(code)
}

/// `degradedError` for a switched-off method.
pub fn degraded(method: &str) -> KiteError {
    KiteError::new(
        DEGRADED,
        format!("method {method} is switched off (degraded service)"),
    )
}
