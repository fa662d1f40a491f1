//! Call deadlines of one connection: one timer per connection instead of one per call.
//!
//! A call with a timeout records `(deadline, response id)` in its connection's
//! [`Deadlines`] (kept inside the callback table, under the table's lock) when it
//! registers its response callback. One sweeper task per connection ([`run`], spawned by
//! the first call with a timeout, ended with the connection) sleeps until the earliest
//! deadline, then frees the response callbacks whose deadline passed; the call, seeing its
//! response channel closed after its deadline, fails with `timeout`.
//!
//! Answered calls are not searched for in the heap: their entries stay until they are
//! popped at their deadline or dropped by a compaction, which runs when the heap holds more
//! than `2 × pending + 64` entries and keeps only the calls still pending. A connection
//! making 200 000 calls/s with a 60 s timeout thus holds a heap the size of its pending
//! calls, not of the calls of the last minute.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Heap entries allowed beyond twice the pending calls before a compaction.
const SLACK: usize = 64;

/// The deadlines of a connection's pending calls, earliest first.
#[derive(Default)]
pub(crate) struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The deadline the sweeper sleeps until; `None` while it waits for a push.
    armed: Option<Instant>,
}

impl Deadlines {
    /// Records that the call whose response callback is `id` expires at `at`. `pending` is
    /// the number of calls waiting for a response (this one included) and `is_pending`
    /// tells whether an id still is one; both bound the heap. Returns whether the sweeper
    /// must be woken (`at` is earlier than the deadline it sleeps until).
    pub(crate) fn push(
        &mut self,
        at: Instant,
        id: u64,
        pending: usize,
        is_pending: impl Fn(u64) -> bool,
    ) -> bool {
        if self.heap.len() >= pending.saturating_mul(2).saturating_add(SLACK) {
            self.heap.retain(|Reverse((_, id))| is_pending(*id));
        }
        self.heap.push(Reverse((at, id)));
        if self.armed.is_none_or(|armed| at < armed) {
            self.armed = Some(at);
            true
        } else {
            false
        }
    }

    /// Removes and returns the id of an entry whose deadline is at or before `now`
    /// (earliest first), if any. The call may have been answered since.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<u64> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, id))| id),
            _ => None,
        }
    }

    /// The earliest deadline left, which the sweeper sleeps until next.
    pub(crate) fn rearm(&mut self) -> Option<Instant> {
        self.armed = self.heap.peek().map(|Reverse((at, _))| *at);
        self.armed
    }

    /// Entries held (answered calls not yet dropped included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

/// What a connection and its sweeper share.
#[derive(Default)]
struct Signals {
    /// A sweeper task exists.
    started: AtomicBool,
    wake: Notify,
}

/// The connection's side of its sweeper: whether it runs, and how to wake it (allocated
/// by the first call with a timeout: connections that never make one pay nothing).
#[derive(Default)]
pub(crate) struct Sweeper(OnceLock<Arc<Signals>>);

impl Sweeper {
    /// Wakes the sweeper to look at an earlier deadline (a wake-up before it waits is kept).
    /// Calls start the sweeper before they record a deadline, so there is one to wake.
    pub(crate) fn wake(&self) {
        if let Some(s) = self.0.get() {
            s.wake.notify_one();
        }
    }

    /// Whether a sweeper runs (checked by every call with a timeout).
    #[inline]
    pub(crate) fn is_started(&self) -> bool {
        self.0
            .get()
            .is_some_and(|s| s.started.load(Ordering::Acquire))
    }

    /// Unless a sweeper runs: the handle of the one to spawn now.
    pub(crate) fn start(&self) -> Option<Running> {
        let signals = self.0.get_or_init(Arc::default);
        if signals.started.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Running(signals.clone()))
    }
}

/// Held by a running sweeper. Dropped when it ends, or when the runtime it was spawned on
/// shuts down and drops it (the first call with a timeout may come from a runtime that
/// goes away before the connection does): the next call with a timeout starts another.
pub(crate) struct Running(Arc<Signals>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.started.store(false, Ordering::Release);
    }
}

/// The sweeper: until `closed`, calls `expire(now)`, which frees the calls whose deadline
/// passed and returns the next deadline (`None` when the connection is gone), and sleeps
/// until that deadline or a wake-up.
pub(crate) async fn run(
    running: Running,
    closed: CancellationToken,
    mut expire: impl FnMut(Instant) -> Option<Option<Instant>> + Send + 'static,
) {
    let cancelled = closed.cancelled();
    tokio::pin!(cancelled);
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    loop {
        let Some(next) = expire(Instant::now()) else {
            return;
        };
        if let Some(at) = next {
            sleep.as_mut().reset(at);
        }
        tokio::select! {
            biased;
            _ = &mut cancelled => return,
            _ = running.0.wake.notified() => {}
            _ = &mut sleep, if next.is_some() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::time::Duration;

    #[test]
    fn heap_stays_bounded_by_the_pending_calls() {
        // 200 000 calls with a 60 s timeout, at most 64 in flight, answered in order.
        let start = Instant::now();
        let mut d = Deadlines::default();
        let mut pending = std::collections::VecDeque::new();
        let mut max_len = 0;
        for id in 0..200_000u64 {
            if pending.len() == 64 {
                pending.pop_front();
            }
            pending.push_back(id);
            let at = start + Duration::from_secs(60) + Duration::from_micros(id * 5);
            let n = pending.len();
            d.push(at, id, n, |i| pending.contains(&i));
            assert!(
                d.len() <= 2 * n + SLACK,
                "{} entries for {n} pending",
                d.len()
            );
            max_len = max_len.max(d.len());
        }
        assert!(max_len <= 2 * 64 + SLACK);
        // Compaction kept every pending call.
        let mut ids = HashSet::new();
        while let Some(id) = d.pop_due(start + Duration::from_secs(3600)) {
            ids.insert(id);
        }
        assert!(pending.iter().all(|id| ids.contains(id)));
    }

    #[test]
    fn earliest_first_and_rearm_only_for_earlier() {
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let mut d = Deadlines::default();
        assert!(d.push(t + 10 * s, 1, 1, |_| true), "first deadline wakes");
        assert!(!d.push(t + 20 * s, 2, 2, |_| true), "later: no wake-up");
        assert!(d.push(t + 5 * s, 3, 3, |_| true), "earlier: wake-up");
        assert_eq!(d.pop_due(t), None);
        assert_eq!(d.pop_due(t + 5 * s), Some(3));
        assert_eq!(d.pop_due(t + 5 * s), None);
        assert_eq!(d.rearm(), Some(t + 10 * s));
        assert!(!d.push(t + 15 * s, 4, 3, |_| true));
        assert_eq!(d.pop_due(t + 60 * s), Some(1));
        assert_eq!(d.pop_due(t + 60 * s), Some(4));
        assert_eq!(d.pop_due(t + 60 * s), Some(2));
        assert_eq!(d.rearm(), None);
        assert!(d.push(t + 60 * s, 5, 1, |_| true), "empty: wakes again");
    }

    #[test]
    fn compaction_drops_only_answered_calls() {
        let t = Instant::now();
        let mut d = Deadlines::default();
        // One call pending: room for 2 + SLACK entries.
        let full = 2 + SLACK as u64;
        for id in 0..full {
            d.push(t, id, 1, |_| panic!("no compaction below the bound"));
        }
        assert_eq!(d.len(), 2 + SLACK);
        // The next push compacts: only the even ids are still pending.
        d.push(t, 1000, 1, |id| id % 2 == 0);
        assert_eq!(d.len(), full as usize / 2 + 1);
        let mut left = Vec::new();
        while let Some(id) = d.pop_due(t) {
            left.push(id);
        }
        left.sort_unstable();
        let mut expected: Vec<u64> = (0..full).filter(|id| id % 2 == 0).collect();
        expected.push(1000);
        assert_eq!(left, expected);
    }

    #[test]
    fn sweeper_starts_once_while_it_runs() {
        let s = Sweeper::default();
        assert!(!s.is_started());
        let running = s.start();
        assert!(running.is_some());
        assert!(s.is_started());
        assert!(s.start().is_none());
        drop(running);
        assert!(!s.is_started(), "ended: the next call starts another");
        assert!(s.start().is_some());
    }

    #[tokio::test]
    async fn run_sleeps_until_the_earliest_deadline_and_ends_when_closed() {
        let fired: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let table = Arc::new(Mutex::new(Deadlines::default()));
        let sweeper = Sweeper::default();
        let closed = CancellationToken::new();
        let task = {
            let table = table.clone();
            let fired = fired.clone();
            tokio::spawn(run(
                sweeper.start().expect("first start"),
                closed.clone(),
                move |now| {
                    let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
                    while let Some(id) = t.pop_due(now) {
                        fired
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((id, now));
                    }
                    Some(t.rearm())
                },
            ))
        };
        let start = Instant::now();
        let push = |id: u64, ms: u64| {
            let wake = table.lock().unwrap_or_else(|p| p.into_inner()).push(
                start + Duration::from_millis(ms),
                id,
                2,
                |_| true,
            );
            if wake {
                sweeper.wake();
            }
        };
        push(1, 400);
        tokio::time::sleep(Duration::from_millis(20)).await;
        push(2, 100);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let fired = fired.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(fired.iter().map(|f| f.0).collect::<Vec<_>>(), [2, 1]);
        let after = |i: usize| fired[i].1.duration_since(start);
        assert!(after(0) >= Duration::from_millis(100), "{:?}", after(0));
        assert!(after(0) < Duration::from_millis(350), "{:?}", after(0));
        assert!(after(1) >= Duration::from_millis(400), "{:?}", after(1));
        closed.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the sweeper ends when the connection closes")
            .expect("no panic");
    }
}
