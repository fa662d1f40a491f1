//! The request a handler receives (PROTOCOL.md 4.1, 9 "per-request context").

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::args::Args;
use crate::connection::{Connection, EnvelopeFields};
use crate::protocol::Kite as KiteIdentity;
use kite_protocol::RequestId;

/// Credentials carried by a request: `{"type": ..., "key": ...}` (PROTOCOL.md 6.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// Credential type: `kiteKey`, `token`, `sessionID` or any registered type.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The credential itself.
    #[serde(default)]
    pub key: String,
}

impl Auth {
    /// A credential of any type.
    pub fn new(kind: impl Into<String>, key: impl Into<String>) -> Self {
        Auth {
            kind: kind.into(),
            key: key.into(),
        }
    }
    /// A `kiteKey` credential (the caller's kite.key JWT).
    pub fn kite_key(key: impl Into<String>) -> Self {
        Auth::new("kiteKey", key)
    }
    /// A `token` credential (a JWT issued by Kontrol).
    pub fn token(key: impl Into<String>) -> Self {
        Auth::new("token", key)
    }
}

/// One incoming call of a named method. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Request(pub(crate) Arc<RequestInner>);

#[derive(Debug)]
pub(crate) struct RequestInner {
    pub id: RequestId,
    pub method: Arc<str>,
    /// `username` is the authenticated one when authentication ran.
    pub caller: Arc<KiteIdentity>,
    pub auth: Option<Arc<Auth>>,
    pub args: Args,
    pub connection: Connection,
    /// Keys of the options object besides the four standard ones.
    pub fields: EnvelopeFields,
    /// Fired by [`Request::cancel`]; created on first use.
    pub cancel: OnceLock<CancellationToken>,
}

impl Request {
    /// The request id the server assigned (16 lowercase hex characters).
    pub fn id(&self) -> &str {
        self.0.id.as_str()
    }

    /// The method name.
    pub fn method(&self) -> &str {
        &self.0.method
    }

    /// The caller's username: the authenticated one when the method required
    /// authentication, else the one the caller claimed.
    pub fn username(&self) -> &str {
        &self.0.caller.username
    }

    /// The caller's identity as sent in the request (`username` replaced by the
    /// authenticated one when authentication ran).
    pub fn caller(&self) -> &KiteIdentity {
        &self.0.caller
    }

    /// The credentials the request carried.
    pub fn auth(&self) -> Option<&Auth> {
        self.0.auth.as_deref()
    }

    /// The method's arguments (`withArgs`, normalized to a list).
    pub fn args(&self) -> &Args {
        &self.0.args
    }

    /// The connection the request came on: call the peer's methods back with it
    /// ([`Connection::tell`]).
    pub fn connection(&self) -> &Connection {
        &self.0.connection
    }

    /// Completes when the request is cancelled: the caller's connection goes away, or
    /// [`Request::cancel`] was called (e.g. by a deadline layer when the caller's time
    /// budget ran out). Watch it to stop long work.
    pub async fn cancelled(&self) {
        tokio::select! {
            _ = self.0.connection.closed() => {}
            _ = self.cancel_token().cancelled() => {}
        }
    }

    /// Whether the request was cancelled (see [`Request::cancelled`]).
    pub fn is_cancelled(&self) -> bool {
        self.0
            .cancel
            .get()
            .is_some_and(CancellationToken::is_cancelled)
            || self.0.connection.is_closed()
    }

    /// Cancels the request: [`Request::cancelled`] completes for everyone watching it.
    /// The handler is not stopped otherwise; the response is still sent if it finishes.
    pub fn cancel(&self) {
        self.cancel_token().cancel()
    }

    fn cancel_token(&self) -> &CancellationToken {
        self.0.cancel.get_or_init(CancellationToken::new)
    }

    /// An extra key of the request's options object (anything besides `kite`,
    /// `authentication`, `withArgs` and `responseCallback`), e.g. the `deadline` or
    /// `traceparent` a governed client sends. Peers that do not know a key ignore it.
    pub fn envelope_field(&self, key: &str) -> Option<&Value> {
        self.0.fields.get(key)
    }

    /// All extra keys of the request's options object (see [`Request::envelope_field`]).
    pub fn envelope_fields(&self) -> &EnvelopeFields {
        &self.0.fields
    }
}
