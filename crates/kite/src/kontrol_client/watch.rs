//! Watching Kontrol for kites that register or go away (PROTOCOL.md 11.5, Q22): `getKites`
//! with a `watchCallback` function; Kontrol calls it with one event per change, either as
//! one object `{"error"|"err": ..., "result": {...}}` or as two arguments `(err, result)`.
//!
//! A watch survives the loss of its Kontrol connection: it waits for the Kontrol client to
//! reconnect (to the next configured Kontrol, or the same one when it returns), watches
//! again there and reconciles (see [`Watcher`]).

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::{GetKitesResult, KiteWithToken, KontrolClient};
use crate::args::Args;
use crate::callback::Function;
use crate::connection::Connection;
use crate::error::KiteError;
use crate::protocol::{Kite as KiteIdentity, KontrolQuery};

/// What happened to a watched kite.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WatchAction {
    /// The kite registered (or came back).
    Register,
    /// The kite went away (deregistered or expired).
    Deregister,
    /// Any other action string Kontrol sent.
    Other(String),
}

impl WatchAction {
    fn parse(s: &str) -> WatchAction {
        match s {
            "REGISTER" => WatchAction::Register,
            "DEREGISTER" => WatchAction::Deregister,
            other => WatchAction::Other(other.to_string()),
        }
    }

    /// The wire spelling (`REGISTER`, `DEREGISTER`, ...).
    pub fn as_str(&self) -> &str {
        match self {
            WatchAction::Register => "REGISTER",
            WatchAction::Deregister => "DEREGISTER",
            WatchAction::Other(s) => s,
        }
    }
}

impl fmt::Display for WatchAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One watch event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// REGISTER or DEREGISTER.
    pub action: WatchAction,
    /// The kite concerned.
    pub kite: KiteIdentity,
    /// Its URL.
    pub url: String,
    /// A token to call it (REGISTER events).
    pub token: Option<String>,
}

impl WatchEvent {
    /// The event as a `getKites` result entry (to build a client with
    /// [`KontrolClient::client_for`](super::KontrolClient::client_for)).
    pub fn to_kite_with_token(&self) -> KiteWithToken {
        KiteWithToken {
            kite: self.kite.clone(),
            url: self.url.clone(),
            key_id: String::new(),
            token: self.token.clone().unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    action: String,
    #[serde(default)]
    kite: KiteIdentity,
    #[serde(default)]
    url: String,
    #[serde(default)]
    token: Option<String>,
}

/// Decodes the arguments of one watch callback invocation. `None`: nothing usable.
pub(super) fn parse_event(args: &[Value]) -> Option<Result<WatchEvent, KiteError>> {
    let (err, result) = match args {
        [Value::Object(o)] if o.contains_key("action") => (Value::Null, Value::Object(o.clone())),
        [Value::Object(o)] => {
            let err = o
                .get("error")
                .filter(|v| !v.is_null())
                .or_else(|| o.get("err"))
                .cloned()
                .unwrap_or(Value::Null);
            (err, o.get("result").cloned().unwrap_or(Value::Null))
        }
        [err, result, ..] => (err.clone(), result.clone()),
        _ => return None,
    };
    if !err.is_null() {
        return Some(Err(KiteError::from_value(&err)));
    }
    let raw: RawEvent = serde_json::from_value(result).ok()?;
    Some(Ok(WatchEvent {
        action: WatchAction::parse(&raw.action),
        kite: raw.kite,
        url: raw.url,
        token: raw.token.filter(|t| !t.is_empty()),
    }))
}

/// The argument object of a watching `getKites`.
#[derive(Serialize)]
pub(super) struct WatchArgs {
    pub query: Value,
    #[serde(rename = "watchCallback")]
    pub watch_callback: Function,
    pub who: Value,
}

/// An event as queued by a watch callback: the watch generation it belongs to (0 for the
/// first watch, +1 for each re-watch) and the event.
pub(super) type Queued = (u64, Result<WatchEvent, KiteError>);

/// The watch callback: forwards each event into the watcher's queue without ever blocking
/// the Kontrol connection (a full queue drops the event with a warning).
pub(super) fn callback(tx: mpsc::Sender<Queued>, generation: u64) -> Function {
    Function::new(move |args: Args| {
        let Some(event) = parse_event(args.raw()) else {
            debug!("ignoring an undecodable watch event: {:?}", args.raw());
            return;
        };
        match tx.try_send((generation, event)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!("watch event queue full: event dropped")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    })
}

/// What the watcher handle and its follower task share: the Kontrol-side watch in force
/// (for `cancelWatcher`) and how often the watch was re-established.
#[derive(Default)]
pub(super) struct WatchShared {
    current: Mutex<Option<(String, Connection)>>,
    rewatches: AtomicU64,
}

impl WatchShared {
    fn set_current(&self, id: Option<String>, conn: &Connection) {
        *lock(&self.current) = id.map(|id| (id, conn.clone()));
    }

    fn take_current(&self) -> Option<(String, Connection)> {
        lock(&self.current).take()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A running watch: the kites that matched when it started ([`Watcher::kites`]) and a
/// stream (`futures::Stream`, or [`Watcher::next_event`]) of later events. Dropping the
/// watcher cancels it on Kontrol (`cancelWatcher`) when Kontrol gave it an id.
///
/// **Connection loss.** When the Kontrol connection drops, the watch does not end: the
/// Kontrol client reconnects (watching switches reconnecting on; with several Kontrols
/// configured it goes to the next one, see
/// [`KontrolClient::register_forever`](super::KontrolClient::register_forever)), and the
/// watch is started again there. Events Kontrol sent meanwhile are lost, so on every
/// re-watch the stream reconciles the consumer's view with the kites matching now:
///
/// 1. a `REGISTER` event for **every** kite matching now (with a fresh token), including
///    kites the consumer already has (treat a REGISTER for a known id as "still there,
///    possibly with a new URL or token");
/// 2. a `DEREGISTER` event for every kite the stream had reported (in [`Watcher::kites`]
///    or by REGISTER events) that no longer matches.
///
/// A consumer applying REGISTER as insert-or-replace and DEREGISTER as remove therefore
/// holds exactly the matching set after each re-watch. [`Watcher::rewatches`] counts the
/// re-watches. The stream ends only when the Kontrol client is closed
/// ([`KontrolClient::close`](super::KontrolClient::close)).
pub struct Watcher {
    rx: mpsc::Receiver<Result<WatchEvent, KiteError>>,
    kites: Vec<KiteWithToken>,
    shared: Arc<WatchShared>,
    task: Option<AbortHandle>,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("id", &self.id())
            .field("kites", &self.kites.len())
            .field("rewatches", &self.rewatches())
            .finish()
    }
}

impl Watcher {
    /// Starts following a watch that `result` (the answer to the first watching
    /// `getKites` on `conn`, generation 0) began; `raw` is the callbacks' queue.
    pub(super) fn start(
        kontrol: KontrolClient,
        query: KontrolQuery,
        conn: Connection,
        result: GetKitesResult,
        raw: (mpsc::Sender<Queued>, mpsc::Receiver<Queued>),
    ) -> Watcher {
        let queue = kontrol.settings().watch_queue.max(1);
        let (tx, rx) = mpsc::channel(queue);
        let shared = Arc::new(WatchShared::default());
        shared.set_current(result.watcher_id.clone(), &conn);
        let follower = Follower {
            kontrol,
            query,
            known: result
                .kites
                .iter()
                .map(|k| (k.kite.id.clone(), (k.kite.clone(), k.url.clone())))
                .collect(),
            raw_tx: raw.0,
            raw_rx: raw.1,
            tx,
            shared: shared.clone(),
            generation: 0,
        };
        let task = tokio::spawn(follower.run(conn));
        Watcher {
            rx,
            kites: result.kites,
            shared,
            task: Some(task.abort_handle()),
        }
    }

    /// The kites that matched when the watch started.
    pub fn kites(&self) -> &[KiteWithToken] {
        &self.kites
    }

    /// The id Kontrol gave the watch in force (`watcherID`), if any.
    pub fn id(&self) -> Option<String> {
        lock(&self.shared.current)
            .as_ref()
            .map(|(id, _)| id.clone())
    }

    /// How many times the watch was started again after a lost Kontrol connection.
    pub fn rewatches(&self) -> u64 {
        self.shared.rewatches.load(Ordering::SeqCst)
    }

    /// The next event; `None` once the Kontrol client is closed.
    pub async fn next_event(&mut self) -> Option<Result<WatchEvent, KiteError>> {
        self.rx.recv().await
    }

    /// Stops the watch on Kontrol (`cancelWatcher [id]`) and waits for its answer.
    pub async fn cancel(mut self) -> Result<(), KiteError> {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let Some((id, conn)) = self.shared.take_current() else {
            return Ok(());
        };
        if conn.is_closed() {
            return Ok(());
        }
        conn.tell("cancelWatcher", &(id,)).await.map(|_| ())
    }
}

impl futures_util::Stream for Watcher {
    type Item = Result<WatchEvent, KiteError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let Some((id, conn)) = self.shared.take_current() else {
            return;
        };
        if conn.is_closed() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = conn.tell("cancelWatcher", &(id,)).await {
                    debug!("cancelWatcher failed: {e}");
                }
            });
        }
    }
}

/// The task behind a [`Watcher`]: forwards the events of the watch in force and
/// re-watches after a lost connection.
struct Follower {
    kontrol: KontrolClient,
    query: KontrolQuery,
    /// id -> (identity, URL) of the kites the consumer was told about.
    known: HashMap<String, (KiteIdentity, String)>,
    raw_tx: mpsc::Sender<Queued>,
    raw_rx: mpsc::Receiver<Queued>,
    tx: mpsc::Sender<Result<WatchEvent, KiteError>>,
    shared: Arc<WatchShared>,
    generation: u64,
}

impl Follower {
    async fn run(mut self, mut conn: Connection) {
        loop {
            if !self.forward(&conn).await {
                return;
            }
            warn!(query = %self.query, "the Kontrol connection of a watch was lost; watching again after the reconnect");
            let Some((new_conn, result)) = self.rewatch().await else {
                return;
            };
            conn = new_conn;
            self.shared.set_current(result.watcher_id.clone(), &conn);
            self.shared.rewatches.fetch_add(1, Ordering::SeqCst);
            info!(query = %self.query, kontrol = %self.kontrol.url(), kites = result.kites.len(), "watching again");
            if !self.reconcile(result.kites).await {
                return;
            }
        }
    }

    /// Forwards the events of the current generation until `conn` closes (`true`) or the
    /// consumer is gone (`false`).
    async fn forward(&mut self, conn: &Connection) -> bool {
        loop {
            tokio::select! {
                biased;
                queued = self.raw_rx.recv() => {
                    // Never `None`: `self.raw_tx` keeps the queue open.
                    let Some((generation, event)) = queued else { return false };
                    if generation != self.generation {
                        continue;
                    }
                    if let Ok(e) = &event {
                        self.note(e);
                    }
                    if self.tx.send(event).await.is_err() {
                        return false;
                    }
                }
                _ = conn.closed() => return true,
                _ = self.tx.closed() => return false,
            }
        }
    }

    fn note(&mut self, event: &WatchEvent) {
        match event.action {
            WatchAction::Register => {
                self.known.insert(
                    event.kite.id.clone(),
                    (event.kite.clone(), event.url.clone()),
                );
            }
            WatchAction::Deregister => {
                self.known.remove(&event.kite.id);
            }
            WatchAction::Other(_) => {}
        }
    }

    /// Waits for a Kontrol connection and watches there: `None` when the Kontrol client
    /// was closed or the consumer is gone.
    async fn rewatch(&mut self) -> Option<(Connection, GetKitesResult)> {
        let state = self.kontrol.state.clone();
        let mut backoff = crate::client::Backoff::new(self.kontrol.settings().register_retry);
        loop {
            let mut connected = state.connected_gen.subscribe();
            connected.borrow_and_update();
            if state.closed.load(Ordering::SeqCst) || self.tx.is_closed() {
                return None;
            }
            let client = self.kontrol.client().ok()?;
            if !state.reconnecting.load(Ordering::SeqCst) {
                // Not awaited: the client reconnects in the background.
                drop(self.kontrol.enable_reconnect(&client));
            }
            let mut pause = None;
            if let Some(conn) = client.connection().filter(|c| !c.is_closed()) {
                self.generation = self.generation.wrapping_add(1);
                match self
                    .kontrol
                    .start_watch(&conn, &self.query, self.raw_tx.clone(), self.generation)
                    .await
                {
                    Ok(result) => return Some((conn, result)),
                    Err(e) => {
                        debug!(query = %self.query, "watching again failed: {e}");
                        if !conn.is_closed() {
                            // Kontrol answered with an error: try again after a pause.
                            pause = Some(backoff.next_delay());
                        }
                    }
                }
            }
            let wait = async {
                match pause {
                    Some(p) => {
                        let _ = tokio::time::timeout(p, connected.changed()).await;
                    }
                    None => {
                        let _ = connected.changed().await;
                    }
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = self.tx.closed() => return None,
            }
        }
    }

    /// Re-emits REGISTER for every kite matching now, then DEREGISTER for the known kites
    /// that are gone. `false` when the consumer is gone.
    async fn reconcile(&mut self, kites: Vec<KiteWithToken>) -> bool {
        let mut now: HashMap<String, (KiteIdentity, String)> = HashMap::with_capacity(kites.len());
        for k in kites {
            now.insert(k.kite.id.clone(), (k.kite.clone(), k.url.clone()));
            let event = WatchEvent {
                action: WatchAction::Register,
                kite: k.kite,
                url: k.url,
                token: Some(k.token).filter(|t| !t.is_empty()),
            };
            if self.tx.send(Ok(event)).await.is_err() {
                return false;
            }
        }
        let previous = std::mem::replace(&mut self.known, now);
        for (id, (kite, url)) in previous {
            if self.known.contains_key(&id) {
                continue;
            }
            let event = WatchEvent {
                action: WatchAction::Deregister,
                kite,
                url,
                token: None,
            };
            if self.tx.send(Ok(event)).await.is_err() {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_shapes() {
        let kite = json!({"username":"a","environment":"e","name":"n","version":"1.0.0","region":"r","hostname":"h","id":"i"});
        let go = json!({"error": null, "result": {"action":"REGISTER","kite":kite,"url":"http://x/kite","token":"t"}});
        let e = parse_event(&[go]).unwrap().unwrap();
        assert_eq!(e.action, WatchAction::Register);
        assert_eq!(e.token.as_deref(), Some("t"));
        assert_eq!(e.kite.id, "i");
        let js = json!({"err": null, "result": {"action":"DEREGISTER","kite":kite,"url":"http://x/kite"}});
        let e = parse_event(&[js]).unwrap().unwrap();
        assert_eq!(e.action, WatchAction::Deregister);
        assert_eq!(e.token, None);
        let two = [
            Value::Null,
            json!({"action":"REGISTER","kite":kite,"url":"u"}),
        ];
        assert_eq!(parse_event(&two).unwrap().unwrap().url, "u");
        let err = json!({"err": {"type":"genericError","message":"lost"}});
        assert_eq!(parse_event(&[err]).unwrap().unwrap_err().message, "lost");
        assert!(parse_event(&[]).is_none());
    }
}
