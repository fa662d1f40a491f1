//! A bounded multi-producer, single-consumer queue that allocates lazily.
//!
//! The session queues used to be tokio `mpsc` channels, each of which allocates a 32-slot
//! block and a cache-padded channel header up front: about 1.3 KiB per queue, 2.6 KiB per
//! session, held by every idle connection. This queue keeps its items in a `VecDeque`
//! that starts empty, grows with the backlog up to the bound and is released when a burst
//! ends (and by [`Rx::release_idle`] when the transport sees the session idle), so an idle
//! session holds one small header per queue.
//!
//! Semantics (those of a bounded tokio `mpsc` channel, which the session API exposes):
//! senders wait while `bound` items are queued (backpressure); the receiver sees `None`
//! once every sender is gone and the queue is drained; closing or dropping the receiver
//! makes every send fail, and waiting senders and [`Tx::closed`] wake up.
//!
//! Waiting senders register with a `Notify` while the queue is full; the receiver wakes all
//! of them when it takes items out of a full queue, and they race for the room (bounded,
//! not FIFO-fair; the transports have one or a few senders per queue).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

/// A queue that drained and holds more than this many slots gives them back.
const KEEP_SLOTS: usize = 8;

struct State<T> {
    items: VecDeque<T>,
    bound: usize,
    senders: usize,
    rx_closed: bool,
    rx_waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Senders waiting for room, and waiters of [`Tx::closed`].
    notify: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock leaves the state consistent (no user code runs
        // under it), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why an item could not be queued; the item is given back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError<T> {
    Full(T),
    Closed(T),
}

/// Creates a queue holding at most `bound` items (at least 1).
pub(crate) fn bounded<T>(bound: usize) -> (Tx<T>, Rx<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            bound: bound.max(1),
            senders: 1,
            rx_closed: false,
            rx_waker: None,
        }),
        notify: Notify::new(),
    });
    (
        Tx {
            shared: shared.clone(),
        },
        Rx { shared },
    )
}

/// The sending half; cloning adds a sender.
pub(crate) struct Tx<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Tx<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Tx {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Tx<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.rx_waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> std::fmt::Debug for Tx<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl<T> Tx<T> {
    /// Queues `item` if there is room.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut state = self.shared.lock();
            if state.rx_closed {
                return Err(TrySendError::Closed(item));
            }
            if state.items.len() >= state.bound {
                return Err(TrySendError::Full(item));
            }
            state.items.push_back(item);
            state.rx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues `item`, waiting while the queue is full. Gives it back if the receiver is
    /// gone.
    pub(crate) async fn send(&self, item: T) -> Result<(), T> {
        let mut item = match self.try_send(item) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(back)) => return Err(back),
            Err(TrySendError::Full(back)) => back,
        };
        loop {
            let notified = self.shared.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so a wake-up between the look and the wait is not
            // lost.
            notified.as_mut().enable();
            match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(back),
                Err(TrySendError::Full(back)) => item = back,
            }
            notified.await;
        }
    }

    /// Whether the receiver is gone (dropped or closed).
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().rx_closed
    }

    /// Completes once the receiver is gone.
    pub(crate) async fn closed(&self) {
        if self.is_closed() {
            return;
        }
        loop {
            let notified = self.shared.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

/// The receiving half.
pub(crate) struct Rx<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Rx<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rx").finish_non_exhaustive()
    }
}

impl<T> Drop for Rx<T> {
    fn drop(&mut self) {
        let items = {
            let mut state = self.shared.lock();
            state.rx_closed = true;
            std::mem::take(&mut state.items)
        };
        drop(items);
        self.shared.notify.notify_waiters();
    }
}

impl<T> Rx<T> {
    /// Moves up to `max` queued items into `out`; `Ready(false)` once every sender is gone
    /// and nothing is queued, `Pending` (waker registered) while nothing is queued.
    pub(crate) fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut impl Extend<T>,
        max: usize,
    ) -> Poll<bool> {
        let mut state = self.shared.lock();
        if state.items.is_empty() {
            if state.senders == 0 {
                return Poll::Ready(false);
            }
            match &mut state.rx_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        self.take_locked(state, out, max);
        Poll::Ready(true)
    }

    /// Moves up to `max` queued items into `out` without waiting; returns how many.
    pub(crate) fn try_take(&mut self, out: &mut impl Extend<T>, max: usize) -> usize {
        let state = self.shared.lock();
        self.take_locked(state, out, max)
    }

    fn take_locked(
        &self,
        mut state: MutexGuard<'_, State<T>>,
        out: &mut impl Extend<T>,
        max: usize,
    ) -> usize {
        let was_full = state.items.len() >= state.bound;
        let n = state.items.len().min(max.max(1));
        out.extend(state.items.drain(..n));
        if state.items.is_empty() && state.items.capacity() > KEEP_SLOTS {
            // A burst ended: give its memory back.
            state.items = VecDeque::new();
        }
        drop(state);
        if was_full && n > 0 {
            self.shared.notify.notify_waiters();
        }
        n
    }

    /// The next item; `None` once every sender is gone and the queue is drained.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Poll form of [`Rx::recv`].
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        let was_full = state.items.len() >= state.bound;
        match state.items.pop_front() {
            Some(item) => {
                if state.items.is_empty() && state.items.capacity() > KEEP_SLOTS {
                    state.items = VecDeque::new();
                }
                drop(state);
                if was_full {
                    self.shared.notify.notify_waiters();
                }
                Poll::Ready(Some(item))
            }
            None if state.senders == 0 => Poll::Ready(None),
            None => {
                match &mut state.rx_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }

    /// Stops receiving: sends fail from now on; what is queued can still be received.
    pub(crate) fn close(&mut self) {
        self.shared.lock().rx_closed = true;
        self.shared.notify.notify_waiters();
    }

    /// Releases the queue's storage if it is empty (for sessions gone idle).
    pub(crate) fn release_idle(&self) {
        let mut state = self.shared.lock();
        if state.items.is_empty() && state.items.capacity() > 0 {
            state.items = VecDeque::new();
        }
    }
}

impl<T> Tx<T> {
    /// Releases the queue's storage if it is empty (for sessions gone idle).
    pub(crate) fn release_idle(&self) {
        let mut state = self.shared.lock();
        if state.items.is_empty() && state.items.capacity() > 0 {
            state.items = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn bounded_with_backpressure() {
        let (tx, mut rx) = bounded::<u32>(2);
        tx.try_send(1).unwrap();
        tx.send(2).await.unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        // A waiting sender completes once the receiver makes room.
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(3).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        assert_eq!(rx.recv().await, Some(1));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let mut all = Vec::new();
        assert_eq!(rx.try_take(&mut all, 10), 2);
        assert_eq!(all, [2, 3]);
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn receiver_gone_fails_senders() {
        let (tx, rx) = bounded::<u32>(1);
        tx.try_send(1).unwrap();
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(2).await });
        let closed = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.closed().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!tx.is_closed());
        drop(rx);
        assert_eq!(waiting.await.unwrap(), Err(2));
        closed.await.unwrap();
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(3), Err(TrySendError::Closed(3)));
    }

    #[tokio::test]
    async fn close_keeps_what_is_queued() {
        let (tx, mut rx) = bounded::<u32>(4);
        tx.try_send(1).unwrap();
        rx.close();
        assert_eq!(tx.try_send(2), Err(TrySendError::Closed(2)));
        assert_eq!(rx.recv().await, Some(1));
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn storage_is_released_after_a_burst() {
        let (tx, mut rx) = bounded::<u32>(64);
        for i in 0..64 {
            tx.try_send(i).unwrap();
        }
        assert!(rx.shared.lock().items.capacity() >= 64);
        let mut all = Vec::new();
        rx.try_take(&mut all, 64);
        assert_eq!(rx.shared.lock().items.capacity(), 0);
        tx.try_send(1).unwrap();
        rx.try_take(&mut all, 64);
        assert!(rx.shared.lock().items.capacity() > 0);
        rx.release_idle();
        assert_eq!(rx.shared.lock().items.capacity(), 0);
    }
}
