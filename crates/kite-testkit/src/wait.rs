//! Polling with a deadline: for conditions that have no readiness signal of their own.

use std::time::{Duration, Instant};

/// Polls `f` every 10 ms until it returns `true` (then `true`) or `within` passes (then
/// `false`, after one last try).
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// Polls `ready` every 50 ms on this thread until it returns `Some`; panics naming `what`
/// after `within`.
pub fn poll_until<T>(what: &str, within: Duration, ready: impl FnMut() -> Option<T>) -> T {
    poll_for(within, ready)
        .unwrap_or_else(|| panic!("timed out after {within:?} waiting for {what}"))
}

/// Polls `ready` every 50 ms on this thread until it returns `Some` (then that value), or
/// `None` once `within` has passed: [`poll_until`] for callers that report the timeout
/// themselves.
pub fn poll_for<T>(within: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = ready() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
