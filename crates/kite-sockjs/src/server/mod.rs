//! A SockJS 0.3 server that lives inside an axum [`Router`].
//!
//! [`router`] returns a `Router` with absolute routes under [`ServerConfig::prefix`] (default
//! `/kite`) that the caller merges into its own application. Every new session — whatever
//! its transport — is handed to the `on_session` callback as a [`Session`]
//! (`Role::Accepted`); the callee spawns whatever it needs to serve it.
//!
//! Routes (PROTOCOL.md 2.1), relative to the prefix:
//!
//! | Path | Purpose |
//! |---|---|
//! | `` and `/` | greeting `Welcome to SockJS!` (a WebSocket upgrade here is a raw WebSocket) |
//! | `/info` | SockJS info JSON, OPTIONS |
//! | `/iframe.html`, `/iframe-<anything>.html` | iframe bootstrap page (ETag, 304) |
//! | `/websocket` | raw WebSocket: one message per text frame, no SockJS framing |
//! | `/{server}/{session}/websocket` | SockJS over WebSocket (RFC 6455, and hixie-76) |
//! | `/{server}/{session}/xhr`, `xhr_send`, `xhr_streaming` | XHR polling / streaming |
//! | `/{server}/{session}/eventsource`, `htmlfile` | EventSource, htmlfile streaming |
//! | `/{server}/{session}/jsonp`, `jsonp_send` | JSONP polling |
//!
//! ```no_run
//! use kite_sockjs::server::{router, ServerConfig};
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = axum::Router::new().merge(router(ServerConfig::default(), |session| {
//!     tokio::spawn(async move {
//!         let (tx, mut rx) = session.split();
//!         while let Some(message) = rx.recv().await {
//!             if tx.send(message).await.is_err() {
//!                 break;
//!             }
//!         }
//!     });
//! }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3636").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

mod http_util;
mod websocket;
mod xhr;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use http::Method;

use crate::session::Session;

/// Settings of a SockJS server. Every limit is per router.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// URL path prefix of the SockJS endpoint, without a trailing slash. Default `/kite`.
    pub prefix: String,
    /// Heartbeat cadence: an `h` frame (a WebSocket ping on raw WebSocket) while a
    /// receiving connection is attached; an idle XHR poll returns `h` after this long.
    /// Default 10 s (must stay below the 15 s poll timeout of Go clients).
    pub heartbeat_interval: Duration,
    /// An XHR-family session with no receiving request attached for this long is destroyed.
    /// Default 10 s.
    pub disconnect_delay: Duration,
    /// Streaming responses (`xhr_streaming`, `eventsource`, `htmlfile`) end after this many
    /// bytes of frames; the client then reconnects. Default 131072.
    pub response_limit: usize,
    /// Serve SockJS over WebSocket (`/{server}/{session}/websocket`; `/info` reports it).
    /// Default true.
    pub websocket: bool,
    /// Serve raw WebSocket at `<prefix>/websocket` and as an upgrade of `<prefix>` itself
    /// (what kite.js connects to by default). Default true.
    pub raw_websocket: bool,
    /// Set a `JSESSIONID` cookie on session requests (for sticky load balancers); `/info`
    /// reports it. Default false.
    pub cookie_needed: bool,
    /// Largest incoming frame or HTTP send body in bytes (a WebSocket message, an
    /// `xhr_send`/`jsonp_send` body). A WebSocket session that exceeds it is closed (1009);
    /// an oversized send body gets 413. Default 16 MiB.
    pub max_message_bytes: usize,
    /// Most sessions open at once (all transports together); beyond it new sessions get
    /// 503. Default 100 000.
    pub max_sessions: usize,
    /// Outgoing messages a session queues before [`crate::SessionSender::send`] waits
    /// (backpressure); also the most messages an XHR poll or streaming write carries.
    /// Default 256.
    pub outgoing_queue: usize,
    /// The most messages one WebSocket write carries (one `a[...]` frame; raw WebSocket:
    /// one flush). A burst larger than this goes out as several frames, so the client
    /// starts on the first while the rest are written: with many calls in flight on one
    /// connection this keeps both ends busy instead of letting the calls bunch up into
    /// one batch that each side handles while the other waits. At least 1. Default 16
    /// (see `kite-bench`'s README for the measurement behind it).
    pub websocket_batch: usize,
    /// Incoming messages a session queues before the transport stops reading the socket
    /// (WebSocket) or delays the `xhr_send` reply. Default 64.
    pub incoming_queue: usize,
    /// A WebSocket write (frame or heartbeat) that cannot complete for this long — the
    /// peer stopped reading — closes the session with a log line. Default 30 s.
    pub write_timeout: Duration,
    /// Read buffer of each WebSocket connection in bytes: allocated per connection for its
    /// whole life, and the most one socket read takes in while messages are small (larger
    /// messages are assembled from several reads). The main lever on the memory of idle
    /// connections. Default 512.
    pub websocket_read_buffer: usize,
    /// When a read fills the read buffer (a client sends in bulk), reads go through an extra
    /// buffer of 16 KiB that doubles while reads fill it, up to this many bytes; it halves
    /// when reads fill less than a quarter of it, and is freed when it falls below 16 KiB
    /// or on the heartbeat of an idle connection. Below 16 KiB: no extra buffer, every read
    /// takes at most `websocket_read_buffer`. Default 64 KiB.
    pub websocket_read_buffer_max: usize,
    /// Script URL of the SockJS client loaded by the iframe page.
    pub sockjs_url: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            prefix: "/kite".to_string(),
            heartbeat_interval: Duration::from_secs(10),
            disconnect_delay: Duration::from_secs(10),
            response_limit: 128 * 1024,
            websocket: true,
            raw_websocket: true,
            cookie_needed: false,
            max_message_bytes: 16 * 1024 * 1024,
            max_sessions: 100_000,
            outgoing_queue: 256,
            websocket_batch: 16,
            incoming_queue: 64,
            write_timeout: Duration::from_secs(30),
            websocket_read_buffer: 512,
            websocket_read_buffer_max: 64 * 1024,
            sockjs_url: "https://cdn.jsdelivr.net/npm/sockjs-client@1/dist/sockjs.min.js"
                .to_string(),
        }
    }
}

type OnSession = dyn Fn(Session) + Send + Sync;

/// State shared by every route of one router.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    on_session: Box<OnSession>,
    pub(crate) live: Arc<AtomicUsize>,
    pub(crate) registry: xhr::Registry,
    iframe: http_util::IframePage,
}

impl Shared {
    /// Reserves a session slot, or `None` when `max_sessions` are open.
    pub(crate) fn reserve_slot(&self) -> Option<SessionSlot> {
        let max = self.config.max_sessions;
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| SessionSlot(self.live.clone()))
    }

    pub(crate) fn open_session(&self, session: Session) {
        (self.on_session)(session)
    }
}

/// One counted open session; frees its slot when dropped.
#[derive(Debug)]
pub(crate) struct SessionSlot(Arc<AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Builds the SockJS routes under `config.prefix`, to be merged into the caller's app.
///
/// `on_session` is called once per new session, inside the runtime serving the request;
/// it should spawn whatever serves the session and return quickly.
pub fn router<F>(config: ServerConfig, on_session: F) -> Router
where
    F: Fn(Session) + Send + Sync + 'static,
{
    let mut config = config;
    let mut prefix = config.prefix.trim_end_matches('/').to_string();
    if !prefix.is_empty() && !prefix.starts_with('/') {
        prefix.insert(0, '/');
    }
    config.prefix = prefix.clone();
    let iframe = http_util::IframePage::new(&config.sockjs_url);
    let shared = Arc::new(Shared {
        config,
        on_session: Box::new(on_session),
        live: Arc::new(AtomicUsize::new(0)),
        registry: xhr::Registry::default(),
        iframe,
    });
    let handler = move |req: Request| {
        let shared = shared.clone();
        async move { dispatch(shared, req).await }
    };
    let router = Router::new();
    if prefix.is_empty() {
        router
            .route("/", any(handler.clone()))
            .route("/{*rest}", any(handler))
    } else {
        router
            .route(&prefix, any(handler.clone()))
            .route(&format!("{prefix}/"), any(handler.clone()))
            .route(&format!("{prefix}/{{*rest}}"), any(handler))
    }
}

/// What a session URL asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionRoute {
    WebSocket,
    Xhr,
    XhrSend,
    XhrStreaming,
    EventSource,
    HtmlFile,
    Jsonp,
    JsonpSend,
}

fn parse_session_path(rest: &str) -> Option<(&str, SessionRoute)> {
    let rest = rest.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let server = parts.next()?;
    let session = parts.next()?;
    let transport = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let valid = |s: &str| !s.is_empty() && !s.contains('.');
    if !valid(server) || !valid(session) {
        return None;
    }
    let route = match transport {
        "websocket" => SessionRoute::WebSocket,
        "xhr" => SessionRoute::Xhr,
        "xhr_send" => SessionRoute::XhrSend,
        "xhr_streaming" => SessionRoute::XhrStreaming,
        "eventsource" => SessionRoute::EventSource,
        "htmlfile" => SessionRoute::HtmlFile,
        "jsonp" => SessionRoute::Jsonp,
        "jsonp_send" => SessionRoute::JsonpSend,
        _ => return None,
    };
    Some((session, route))
}

fn is_iframe_path(rest: &str) -> bool {
    let Some(name) = rest.strip_prefix("/iframe") else {
        return false;
    };
    let Some(version) = name.strip_suffix(".html") else {
        return false;
    };
    version.is_empty() || (version.starts_with('-') && !version.contains('/'))
}

async fn dispatch(shared: Arc<Shared>, req: Request) -> Response {
    use http_util::*;
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix(shared.config.prefix.as_str()) else {
        return not_found();
    };
    let method = req.method().clone();
    match rest {
        "" | "/" => {
            if shared.config.raw_websocket && websocket::is_upgrade(req.headers()) {
                return websocket::raw(shared, req).await;
            }
            match method {
                Method::GET | Method::HEAD => greeting(),
                _ => method_not_allowed("GET"),
            }
        }
        "/info" => match method {
            Method::GET => info(&shared.config, req.headers()),
            Method::OPTIONS => options(req.headers(), "OPTIONS, GET"),
            _ => method_not_allowed("OPTIONS, GET"),
        },
        "/websocket" if shared.config.raw_websocket => match method {
            Method::GET => websocket::raw(shared, req).await,
            _ => method_not_allowed("GET"),
        },
        _ if is_iframe_path(rest) => match method {
            Method::GET | Method::HEAD => shared.iframe.respond(req.headers()),
            _ => method_not_allowed("GET"),
        },
        _ => {
            let Some((session, route)) = parse_session_path(rest) else {
                return not_found();
            };
            let session: Arc<str> = Arc::from(session);
            session_route(shared, req, session, route, method).await
        }
    }
}

async fn session_route(
    shared: Arc<Shared>,
    req: Request,
    session: Arc<str>,
    route: SessionRoute,
    method: Method,
) -> Response {
    use http_util::*;
    use xhr::RecvKind;
    match route {
        SessionRoute::WebSocket => {
            if !shared.config.websocket {
                return not_found();
            }
            match method {
                Method::GET => websocket::sockjs(shared, req).await,
                _ => method_not_allowed("GET"),
            }
        }
        SessionRoute::Xhr | SessionRoute::XhrStreaming => match method {
            Method::POST => {
                let kind = if route == SessionRoute::Xhr {
                    RecvKind::Xhr
                } else {
                    RecvKind::XhrStreaming
                };
                xhr::receive(shared, req, session, kind).await
            }
            Method::OPTIONS => options(req.headers(), "OPTIONS, POST"),
            _ => method_not_allowed("OPTIONS, POST"),
        },
        SessionRoute::XhrSend => match method {
            Method::POST => xhr::send(shared, req, session, false).await,
            Method::OPTIONS => options(req.headers(), "OPTIONS, POST"),
            _ => method_not_allowed("OPTIONS, POST"),
        },
        SessionRoute::EventSource => match method {
            Method::GET => xhr::receive(shared, req, session, RecvKind::EventSource).await,
            _ => method_not_allowed("GET"),
        },
        SessionRoute::HtmlFile | SessionRoute::Jsonp => match method {
            Method::GET => {
                let callback = match callback_param(req.uri().query()) {
                    Ok(c) => c,
                    Err(e) => return text(http::StatusCode::INTERNAL_SERVER_ERROR, e),
                };
                let kind = if route == SessionRoute::HtmlFile {
                    RecvKind::HtmlFile(callback)
                } else {
                    RecvKind::Jsonp(callback)
                };
                xhr::receive(shared, req, session, kind).await
            }
            Method::OPTIONS if route == SessionRoute::Jsonp => {
                options(req.headers(), "OPTIONS, GET")
            }
            _ if route == SessionRoute::Jsonp => method_not_allowed("OPTIONS, GET"),
            _ => method_not_allowed("GET"),
        },
        SessionRoute::JsonpSend => match method {
            Method::POST => xhr::send(shared, req, session, true).await,
            Method::OPTIONS => options(req.headers(), "OPTIONS, POST"),
            _ => method_not_allowed("OPTIONS, POST"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_paths() {
        assert_eq!(
            parse_session_path("/000/abc/xhr"),
            Some(("abc", SessionRoute::Xhr))
        );
        for bad in [
            "//xhr",
            "/a./a/xhr",
            "/a/a./xhr",
            "/./. /xhr",
            "///xhr",
            "/a/a/xhr/",
            "/a/a/nope",
            "/a/a",
        ] {
            assert_eq!(parse_session_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn iframe_paths() {
        for ok in [
            "/iframe.html",
            "/iframe-a.html",
            "/iframe-.html",
            "/iframe-0.1.2.html",
        ] {
            assert!(is_iframe_path(ok), "{ok}");
        }
        for bad in [
            "/iframe.htm",
            "/iframe",
            "/IFRAME.HTML",
            "/iframe-/.html",
            "/iframea.html",
        ] {
            assert!(!is_iframe_path(bad), "{bad}");
        }
    }
}
