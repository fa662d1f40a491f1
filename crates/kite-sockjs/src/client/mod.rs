//! SockJS client: dials a SockJS base URL (e.g. `http://10.0.0.5:3636/kite`) exactly as the
//! Go kite does (PROTOCOL.md 2.4) and hands back a [`Session`].
//!
//! * [`ClientTransport::WebSocket`]: `ws(s)://<host>/<base>/<3 digits>/<20 hex>/websocket`
//!   with an `Origin` header, no `/info` request, messages sent without waiting for `o`.
//! * [`ClientTransport::XhrPolling`]: `POST .../xhr` to open and receive, `POST
//!   .../xhr_send` to send.
//! * [`ClientTransport::Auto`] (default): WebSocket, and XHR polling only when the
//!   WebSocket handshake is answered with an HTTP status other than 101.
//!
//! Outgoing messages queued together travel together: one WebSocket frame or one
//! `xhr_send` body `["m1","m2",...]` (split when it grows past
//! [`ClientConfig::max_batch_bytes`]). The session ends when every
//! [`SessionSender`](crate::SessionSender) is dropped (the client then closes the
//! connection), or when the server ends it (`c` frame, end of stream, 404 on a poll): the
//! [`SessionReceiver`](crate::SessionReceiver) then yields `None`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use kite_sockjs::client::{connect, ClientConfig};
//! let session = connect("http://127.0.0.1:3636/kite", &ClientConfig::default()).await?;
//! let (tx, mut rx) = session.split();
//! tx.send(r#"{"method":"kite.ping","arguments":[],"callbacks":{}}"#.to_string()).await?;
//! while let Some(message) = rx.recv().await {
//!     println!("{message}");
//! }
//! # Ok(()) }
//! ```

mod cookies;
mod net;
mod websocket;
mod xhr;

use std::sync::Arc;
use std::time::Duration;

use crate::session::Session;

pub use cookies::CookieJar;

/// Which transport [`connect`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClientTransport {
    /// WebSocket first; XHR polling only when the WebSocket handshake gets an HTTP answer
    /// other than `101 Switching Protocols` (a proxy without WebSocket support). Network
    /// errors (refused, DNS, timeout, TLS) are returned without falling back.
    #[default]
    Auto,
    /// SockJS over WebSocket only.
    WebSocket,
    /// SockJS XHR polling only.
    XhrPolling,
}

/// Settings of [`connect`]. Build with `ClientConfig { field: value, ..Default::default() }`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Which transport to use. Default: [`ClientTransport::Auto`].
    pub transport: ClientTransport,
    /// Limit for opening the session: TCP connect, TLS and the WebSocket handshake, or the
    /// first `xhr` request up to its `o` frame. Default: 15 s (Go's value).
    pub handshake_timeout: Duration,
    /// XHR polling: how long to wait for a poll's answer before polling again, and for an
    /// `xhr_send` answer before giving up on the session. Must exceed the server's
    /// heartbeat delay (10 s for kites). Default: 15 s (Go's value).
    pub poll_timeout: Duration,
    /// Capacity of the outgoing message queue (senders wait when it is full). Default: 128.
    pub outgoing_queue: usize,
    /// Capacity of the incoming message queue (the connection stops reading when it is
    /// full). Default: 128.
    pub incoming_queue: usize,
    /// Largest incoming SockJS frame accepted (one WebSocket message, or one XHR poll
    /// body), in bytes; a larger one ends the session. This bounds every single message.
    /// Default: 32 MiB.
    pub max_message_bytes: usize,
    /// Soft limit of one outgoing frame / `xhr_send` body: queued messages are split
    /// into several frames past this size (one larger message still goes alone).
    /// Default: 1 MiB.
    pub max_batch_bytes: usize,
    /// The most messages one WebSocket write carries (one `["m1","m2"]` frame). A burst
    /// of calls larger than this goes out as several frames, so the server starts on the
    /// first while the rest are written, instead of the calls bunching up into one batch
    /// that each side handles while the other waits. At least 1. Default: 16 (see
    /// `kite-bench`'s README for the measurement behind it). XHR sends are not split by
    /// count (each is an HTTP request).
    pub websocket_batch: usize,
    /// Cookies of every HTTP request (WebSocket handshake, `xhr`, `xhr_send`); share one
    /// jar between clients for sticky load balancers. Default: a new empty jar.
    pub cookies: Arc<CookieJar>,
    /// TLS settings for `https://` URLs. `None`: the webpki root certificates with rustls'
    /// ring provider. ALPN is restricted to `http/1.1` if a custom configuration offers
    /// other protocols (SockJS needs HTTP/1.1).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `User-Agent` header of every HTTP request. Default: `kite-rs/<version>`.
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            transport: ClientTransport::Auto,
            handshake_timeout: Duration::from_secs(15),
            poll_timeout: Duration::from_secs(15),
            outgoing_queue: 128,
            incoming_queue: 128,
            max_message_bytes: 32 << 20,
            max_batch_bytes: 1 << 20,
            websocket_batch: 16,
            cookies: Arc::new(CookieJar::new()),
            tls: None,
            user_agent: concat!("kite-rs/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The base URL can't be used.
    #[error("invalid SockJS URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL (or host) given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host name could not be resolved.
    #[error("can't resolve host {host:?}: {source}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// No TCP connection could be made (e.g. connection refused).
    #[error("can't connect to {addr}: {source}")]
    Connect {
        /// `host:port` dialed.
        addr: String,
        /// The last connect error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (e.g. an untrusted certificate).
    #[error("TLS handshake with {host:?} failed: {source}")]
    Tls {
        /// The server name.
        host: String,
        /// The TLS error.
        #[source]
        source: std::io::Error,
    },
    /// The default TLS configuration could not be built.
    #[error("TLS configuration error: {0}")]
    TlsConfig(String),
    /// Opening the session took longer than [`ClientConfig::handshake_timeout`].
    #[error("{stage} timed out after {after:?}")]
    Timeout {
        /// What was being done: `WebSocket handshake` or `XHR polling open`.
        stage: &'static str,
        /// The limit that passed.
        after: Duration,
    },
    /// The server answered the WebSocket handshake with an HTTP status other than 101
    /// (this is what makes [`ClientTransport::Auto`] fall back to XHR polling).
    #[error("WebSocket handshake refused with HTTP status {status}")]
    HandshakeStatus {
        /// The status received.
        status: http::StatusCode,
    },
    /// The WebSocket handshake failed for another reason (bad answer, I/O error).
    #[error("WebSocket handshake failed: {0}")]
    WebSocket(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An HTTP request of the XHR transport failed.
    #[error("HTTP request failed: {0}")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The opening `xhr` request was answered with a status other than 200.
    #[error("XHR polling open answered HTTP status {status}")]
    XhrStatus {
        /// The status received.
        status: http::StatusCode,
    },
    /// The opening `xhr` request did not start with the `o` frame.
    #[error("XHR polling open: expected an \"o\" frame, got {0:?}")]
    XhrOpen(String),
    /// A response body was larger than [`ClientConfig::max_message_bytes`].
    #[error("response larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

/// Opens a SockJS session to `base_url` (e.g. `http://host:3636/kite` or
/// `https://host/kite`) with the configured transport. Must be called inside a Tokio
/// runtime: the connection's I/O runs in a spawned task for the session's lifetime.
pub async fn connect(base_url: &str, config: &ClientConfig) -> Result<Session, ConnectError> {
    let target = net::Target::parse(base_url)?;
    match config.transport {
        ClientTransport::WebSocket => websocket::connect(&target, config).await,
        ClientTransport::XhrPolling => xhr::connect(&target, config).await,
        ClientTransport::Auto => match websocket::connect(&target, config).await {
            Err(ConnectError::HandshakeStatus { status }) => {
                tracing::debug!(
                    url = base_url,
                    %status,
                    "WebSocket handshake refused, falling back to XHR polling"
                );
                xhr::connect(&target, config).await
            }
            other => other,
        },
    }
}

/// A random SockJS server id (100–999) and session id (20 lowercase hex digits).
fn session_ids() -> (u16, String) {
    use rand::Rng;
    let mut rng = rand::rng();
    let server: u16 = rng.random_range(100..=999);
    let mut bytes = [0u8; 10];
    rng.fill(&mut bytes);
    let mut session = String::with_capacity(20);
    for b in bytes {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        session.push(HEX[usize::from(b >> 4)] as char);
        session.push(HEX[usize::from(b & 15)] as char);
    }
    (server, session)
}

/// How many queued items one XHR send takes at most.
const MAX_BATCH_ITEMS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_go() {
        for _ in 0..100 {
            let (s, t) = session_ids();
            assert!((100..=999).contains(&s));
            assert_eq!(t.len(), 20);
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }
}
