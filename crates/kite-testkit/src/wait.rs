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
pub fn poll_until<T>(what: &str, within: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
