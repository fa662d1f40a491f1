//! Several Kontrols (scale-out over one PostgreSQL or etcd): the Kontrol connection dials
//! the URLs of [`Config::kontrol_url_list`](crate::Config::kontrol_url_list) in turn.
//!
//! [`Rotation`] remembers the URL to try next. Each connection attempt takes it and at
//! once moves the pointer to the following URL (so an attempt that fails, or that is
//! abandoned by the dial timeout, hands the next attempt to the next Kontrol); a
//! successful attempt moves the pointer back to the URL that worked, so the next reconnect
//! first tries the Kontrol the kite was on. With the client's reconnect back-off between
//! attempts, a kite whose Kontrol died is on the next one after one failed attempt.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};

use tracing::debug;

use crate::client::Connector;
use crate::error::KiteError;
use crate::kite::Core;
use kite_sockjs::session::Session;

/// The position in a URL list: which URL to try next and which one is connected.
#[derive(Debug, Default)]
pub(crate) struct Rotation {
    /// The URL the next attempt uses (`None`: the first of the list).
    next: Option<String>,
    /// The URL of the last successful attempt.
    connected: Option<String>,
}

impl Rotation {
    /// The URL for an attempt over `list`; moves the pointer past it. `None` for an empty
    /// list.
    pub(crate) fn take(&mut self, list: &[String]) -> Option<String> {
        let index = self
            .next
            .as_ref()
            .and_then(|n| list.iter().position(|u| u == n))
            .unwrap_or(0);
        let url = list.get(index)?.clone();
        self.next = list.get((index + 1) % list.len()).cloned();
        Some(url)
    }

    /// The attempt on `url` worked: the next attempt (after a drop) tries it first.
    pub(crate) fn succeeded(&mut self, url: &str) {
        self.next = Some(url.to_owned());
        self.connected = Some(url.to_owned());
    }

    /// The URL of the last successful attempt.
    pub(crate) fn connected(&self) -> Option<&str> {
        self.connected.as_deref()
    }

    /// The URL the next attempt would use, over `list`.
    pub(crate) fn peek(&self, list: &[String]) -> Option<String> {
        self.next
            .as_ref()
            .filter(|n| list.contains(n))
            .cloned()
            .or_else(|| list.first().cloned())
    }
}

pub(crate) fn lock(m: &Mutex<Rotation>) -> std::sync::MutexGuard<'_, Rotation> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The connector of the Kontrol client: ignores the client's own URL and dials the next
/// Kontrol of the kite's current list (read at every attempt, so configuration changes
/// apply at the next reconnect).
pub(crate) struct FailoverConnector {
    pub(crate) inner: Arc<dyn Connector>,
    pub(crate) core: Weak<Core>,
    pub(crate) rotation: Arc<Mutex<Rotation>>,
}

impl Connector for FailoverConnector {
    fn connect<'a>(
        &'a self,
        url: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Session, KiteError>> + Send + 'a>> {
        Box::pin(async move {
            let list = match self.core.upgrade() {
                Some(core) => core.config().kontrol_url_list(),
                None => Vec::new(),
            };
            let target = if list.is_empty() {
                url.to_owned()
            } else {
                lock(&self.rotation)
                    .take(&list)
                    .unwrap_or_else(|| url.to_owned())
            };
            debug!(kontrol = %target, "dialing Kontrol");
            match self.inner.connect(&target).await {
                Ok(session) => {
                    lock(&self.rotation).succeeded(&target);
                    Ok(session)
                }
                Err(e) => {
                    debug!(kontrol = %target, "cannot reach Kontrol: {e}");
                    Err(KiteError::new(
                        e.kind.clone(),
                        format!("Kontrol at {target}: {}", e.message),
                    ))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rotation_order() {
        let list = urls(&["a", "b", "c"]);
        let mut r = Rotation::default();
        assert_eq!(r.peek(&list).as_deref(), Some("a"));
        // Failures walk the list and wrap around.
        assert_eq!(r.take(&list).as_deref(), Some("a"));
        assert_eq!(r.take(&list).as_deref(), Some("b"));
        assert_eq!(r.take(&list).as_deref(), Some("c"));
        assert_eq!(r.take(&list).as_deref(), Some("a"));
        // "a" works: after a drop, "a" is tried first again, then "b".
        r.succeeded("a");
        assert_eq!(r.connected(), Some("a"));
        assert_eq!(r.take(&list).as_deref(), Some("a"));
        assert_eq!(r.take(&list).as_deref(), Some("b"));
        r.succeeded("b");
        assert_eq!(r.take(&list).as_deref(), Some("b"));
        assert_eq!(r.take(&list).as_deref(), Some("c"));
        // A URL no longer listed restarts at the head.
        r.succeeded("gone");
        assert_eq!(r.take(&list).as_deref(), Some("a"));
        assert_eq!(r.take(&[]), None);
        let one = urls(&["x"]);
        assert_eq!(r.take(&one).as_deref(), Some("x"));
        assert_eq!(r.take(&one).as_deref(), Some("x"));
    }
}
