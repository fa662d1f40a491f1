//! Watching Kontrol for kites that register or go away (PROTOCOL.md 11.5, Q22): `getKites`
//! with a `watchCallback` function; Kontrol calls it with one event per change, either as
//! one object `{"error"|"err": ..., "result": {...}}` or as two arguments `(err, result)`.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::KiteWithToken;
use crate::args::Args;
use crate::callback::Function;
use crate::connection::Connection;
use crate::error::KiteError;
use crate::protocol::Kite as KiteIdentity;

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

/// The watch callback: forwards each event into the watcher's queue without ever blocking
/// the Kontrol connection (a full queue drops the event with a warning).
pub(super) fn callback(tx: mpsc::Sender<Result<WatchEvent, KiteError>>) -> Function {
    Function::new(move |args: Args| {
        let Some(event) = parse_event(args.raw()) else {
            debug!("ignoring an undecodable watch event: {:?}", args.raw());
            return;
        };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!("watch event queue full: event dropped")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    })
}

/// A running watch: the kites that matched when it started ([`Watcher::kites`]) and a
/// stream (`futures::Stream`, or [`Watcher::next_event`]) of later events. The stream ends
/// when the Kontrol connection is lost. Dropping the watcher cancels it on Kontrol
/// (`cancelWatcher`) when Kontrol gave it an id.
pub struct Watcher {
    rx: mpsc::Receiver<Result<WatchEvent, KiteError>>,
    kites: Vec<KiteWithToken>,
    id: Option<String>,
    conn: Option<Connection>,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("id", &self.id)
            .field("kites", &self.kites.len())
            .finish()
    }
}

impl Watcher {
    pub(super) fn new(
        rx: mpsc::Receiver<Result<WatchEvent, KiteError>>,
        kites: Vec<KiteWithToken>,
        id: Option<String>,
        conn: Connection,
    ) -> Watcher {
        Watcher {
            rx,
            kites,
            id,
            conn: Some(conn),
        }
    }

    /// The kites that matched when the watch started.
    pub fn kites(&self) -> &[KiteWithToken] {
        &self.kites
    }

    /// The watcher id Kontrol returned (`watcherID`), if any.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The next event; `None` once the Kontrol connection is lost.
    pub async fn next_event(&mut self) -> Option<Result<WatchEvent, KiteError>> {
        self.rx.recv().await
    }

    /// Stops the watch on Kontrol (`cancelWatcher [id]`) and waits for its answer.
    pub async fn cancel(mut self) -> Result<(), KiteError> {
        let (Some(id), Some(conn)) = (self.id.take(), self.conn.take()) else {
            return Ok(());
        };
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
        let (Some(id), Some(conn)) = (self.id.take(), self.conn.take()) else {
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
