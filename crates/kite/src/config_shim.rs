//! Temporary stand-in for `crate::config::Config` (owned by the auth helper) until that
//! branch lands: the Go `Config` fields the runtime reads, defaults only.

use std::time::Duration;

/// Which transport a client dials with (PROTOCOL.md 2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// WebSocket, falling back to XHR polling on a non-101 handshake.
    #[default]
    Auto,
    /// SockJS WebSocket only.
    WebSocket,
    /// SockJS XHR polling only.
    XhrPolling,
}

/// Kite configuration (PROTOCOL.md 7.1), defaults only.
#[derive(Debug, Clone)]
pub struct Config {
    /// Owner of the kite (default `unknown`).
    pub username: String,
    /// Deployment cluster (default `unknown`).
    pub environment: String,
    /// Location (default `unknown`).
    pub region: String,
    /// kite.key `jti`, informational.
    pub id: String,
    /// The raw kite.key JWT (sent as `kiteKey` credential by clients when set).
    pub kite_key: String,
    /// Skip authentication for every method.
    pub disable_authentication: bool,
    /// Client transport.
    pub transport: Transport,
    /// Listen address (default `0.0.0.0`).
    pub ip: String,
    /// Listen port (0 = ephemeral).
    pub port: u16,
    /// Kontrol calls, XHR poll timeout (default 15 s).
    pub timeout: Duration,
    /// Kontrol's SockJS base URL.
    pub kontrol_url: String,
    /// Kontrol's public key PEM.
    pub kontrol_key: String,
    /// Kontrol's username (issuer of tokens).
    pub kontrol_user: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            username: "unknown".into(),
            environment: "unknown".into(),
            region: "unknown".into(),
            id: String::new(),
            kite_key: String::new(),
            disable_authentication: false,
            transport: Transport::Auto,
            ip: "0.0.0.0".into(),
            port: 0,
            timeout: Duration::from_secs(15),
            kontrol_url: String::new(),
            kontrol_key: String::new(),
            kontrol_user: String::new(),
        }
    }
}
