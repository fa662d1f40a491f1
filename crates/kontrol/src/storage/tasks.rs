//! Background-task bookkeeping shared by the networked backends.

use std::sync::Mutex;
use std::time::Duration;

use tokio::task::AbortHandle;

/// Aborts the registered background tasks when dropped (with the storage).
#[derive(Default)]
pub(crate) struct Tasks(Mutex<Vec<AbortHandle>>);

impl Tasks {
    pub(crate) fn add(&self, h: AbortHandle) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(h);
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for h in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            h.abort();
        }
    }
}

/// Delay before reconnection attempt `attempt` (0-based): 250 ms doubling up to 30 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(7))).min(Duration::from_secs(30))
}
