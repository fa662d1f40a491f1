//! Change feed: REGISTER / DEREGISTER events for the kites matching a query.

use std::fmt;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::query::Matcher;
use super::KiteRecord;

/// What happened to a kite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WatchAction {
    /// The kite became available, or its URL or key id changed (`"REGISTER"`).
    Register,
    /// The kite went away: deleted, or its registration expired (`"DEREGISTER"`).
    Deregister,
}

impl WatchAction {
    /// The wire name: `"REGISTER"` or `"DEREGISTER"`.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchAction::Register => "REGISTER",
            WatchAction::Deregister => "DEREGISTER",
        }
    }
}

impl fmt::Display for WatchAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of one kite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// What happened.
    pub action: WatchAction,
    /// The record: the new one for [`WatchAction::Register`], the removed one for
    /// [`WatchAction::Deregister`].
    pub record: KiteRecord,
}

/// Why [`Watcher::recv`] returned no event. After [`WatchError::Lagged`] and
/// [`WatchError::Interrupted`] the watcher keeps working, but events may have been missed:
/// re-read the current state with `Storage::get` to resynchronise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The watcher did not keep up; this many events (of all kites) were dropped.
    #[error("watcher fell behind: {0} events dropped")]
    Lagged(u64),
    /// The backend's change feed was interrupted (connection lost, history compacted) and
    /// resumed; events in between may be missing.
    #[error("change feed interrupted; events may have been missed")]
    Interrupted,
    /// The storage was dropped or closed.
    #[error("storage closed")]
    Closed,
}

/// What a backend's change feed carries to every watcher.
#[derive(Debug, Clone)]
pub(crate) enum HubMsg {
    Event(Arc<WatchEvent>),
    Interrupted,
}

/// Fan-out of a backend's change feed (bounded: slow watchers lag, producers never wait).
pub(crate) type Hub = broadcast::Sender<HubMsg>;

/// A subscription to the changes of the kites matching a query, from `Storage::watch`.
///
/// Events are delivered in the order the backend recorded them; every event that happens
/// after `watch` returned is delivered unless [`Watcher::recv`] reports that some were lost.
pub struct Watcher {
    rx: broadcast::Receiver<HubMsg>,
    matcher: Matcher,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("matcher", &self.matcher)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    pub(crate) fn new(rx: broadcast::Receiver<HubMsg>, matcher: Matcher) -> Watcher {
        Watcher { rx, matcher }
    }

    /// Waits for the next event of a matching kite.
    ///
    /// Cancel-safe: dropping the future loses no event.
    pub async fn recv(&mut self) -> Result<WatchEvent, WatchError> {
        loop {
            match self.rx.recv().await {
                Ok(HubMsg::Event(ev)) => {
                    if self.matcher.matches(&ev.record.kite) {
                        return Ok(WatchEvent::clone(&ev));
                    }
                }
                Ok(HubMsg::Interrupted) => return Err(WatchError::Interrupted),
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(WatchError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(WatchError::Closed),
            }
        }
    }
}

/// Sends to every current watcher; having none is fine.
pub(crate) fn publish(hub: &Hub, msg: HubMsg) {
    let _ = hub.send(msg);
}
