//! The request a handler receives (PROTOCOL.md 4.1, 9 "per-request context").

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::args::Args;
use crate::connection::Connection;
use crate::protocol::Kite as KiteIdentity;

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
    pub id: String,
    pub method: String,
    pub username: String,
    pub caller: KiteIdentity,
    pub auth: Option<Auth>,
    pub args: Args,
    pub connection: Connection,
}

impl Request {
    /// The request id the server assigned (16 lowercase hex characters).
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The method name.
    pub fn method(&self) -> &str {
        &self.0.method
    }

    /// The caller's username: the authenticated one when the method required
    /// authentication, else the one the caller claimed.
    pub fn username(&self) -> &str {
        &self.0.username
    }

    /// The caller's identity as sent in the request (`username` replaced by the
    /// authenticated one when authentication ran).
    pub fn caller(&self) -> &KiteIdentity {
        &self.0.caller
    }

    /// The credentials the request carried.
    pub fn auth(&self) -> Option<&Auth> {
        self.0.auth.as_ref()
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

    /// Completes when the caller's connection goes away (e.g. to stop long work).
    pub async fn cancelled(&self) {
        self.0.connection.closed().await
    }
}
