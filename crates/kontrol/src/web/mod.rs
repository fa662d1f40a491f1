//! Kontrol's web page: the registered kites, live, at `/`.
//!
//! A small self-contained page (HTML, CSS and JS embedded in the binary, no external
//! assets) lists every live kite grouped by username → environment → name → version, with
//! one row per kite (region, hostname, id, URL, age since registration). It stays current
//! through Kontrol's watch feature:
//!
//! | Request | Answer |
//! |---|---|
//! | `GET /` | the page (`/web/app.js`, `/web/style.css` are its script and style sheet) |
//! | `GET /api/kites` | a [`Snapshot`] as JSON: `{"now", "kites": [{"kite", "url", "registeredAt"}], "total", "truncated"}` |
//! | `GET /api/watch` | Server-Sent Events: `snapshot` (a [`Snapshot`]) first, then `register` / `deregister` ([`Change`]: `{"now", "kite", "url", "registeredAt"}`) as kites come and go, a new `snapshot` whenever events were lost |
//!
//! Times are milliseconds since the Unix epoch; `now` is the server's clock, so that the page
//! computes ages independently of the browser's clock. Only a kite's identity (the seven
//! fields), URL and registration time are shown: no tokens, key ids or keys.
//!
//! The page and API are **open** to anyone who can reach Kontrol's listen address (like
//! the kite inventory a `getKites` caller sees, minus tokens). Set
//! [`WebConfig::enabled`] to false (`KontrolConfig::web.enabled`) to remove them, e.g. when
//! Kontrol listens on a public address. Live connections are bounded
//! ([`WebConfig::max_streams`]); one more is answered 503.
//!
//! The routes are part of [`crate::http::routes`], which the `kontrol` kite
//! ([`crate::kite_service`]) serves, so every Kontrol serving HTTP has the page.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use kite_protocol::Kite;

use crate::error::KontrolError;
use crate::service::Kontrol;
use crate::storage::{KiteRecord, WatchAction, WatchError, Watcher};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// Content Security Policy of the page: its own script and style sheet only, no inline
/// code, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Default bound on simultaneous live connections (`/api/watch`).
pub const DEFAULT_MAX_STREAMS: usize = 256;
/// Default bound on kites in one snapshot.
pub const DEFAULT_MAX_KITES: usize = 10_000;
/// Default period of SSE keep-alive comments.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Default reconnection delay suggested to browsers (the SSE `retry` field).
pub const DEFAULT_RETRY: Duration = Duration::from_secs(2);

/// Settings of the web page and its API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// Serve the page and its API (default true). When false, [`routes`] is empty.
    pub enabled: bool,
    /// Simultaneous `/api/watch` connections (default [`DEFAULT_MAX_STREAMS`]); one more
    /// gets 503. Each holds a subscription to the storage's change feed.
    pub max_streams: usize,
    /// Kites in one snapshot (default [`DEFAULT_MAX_KITES`]); beyond, the snapshot lists the
    /// first ones in identity order and says `"truncated": true`.
    pub max_kites: usize,
    /// Period of keep-alive comments on idle live connections (default
    /// [`DEFAULT_KEEP_ALIVE`]).
    pub keep_alive: Duration,
    /// Reconnection delay suggested to browsers (default [`DEFAULT_RETRY`]).
    pub retry: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            max_streams: DEFAULT_MAX_STREAMS,
            max_kites: DEFAULT_MAX_KITES,
            keep_alive: DEFAULT_KEEP_ALIVE,
            retry: DEFAULT_RETRY,
        }
    }
}

/// One live kite as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KiteEntry {
    /// The kite's identity (the seven fields).
    pub kite: Kite,
    /// Its URL.
    pub url: String,
    /// When its registration started, in milliseconds since the Unix epoch.
    #[serde(rename = "registeredAt")]
    pub registered_at: u64,
}

impl From<KiteRecord> for KiteEntry {
    fn from(r: KiteRecord) -> Self {
        KiteEntry {
            kite: r.kite,
            url: r.url,
            registered_at: millis(r.created_at),
        }
    }
}

/// Every live kite at one instant (`GET /api/kites`, the SSE `snapshot` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The server's clock, in milliseconds since the Unix epoch.
    pub now: u64,
    /// The kites, in identity order (username, environment, name, version, region,
    /// hostname, id), at most [`WebConfig::max_kites`].
    pub kites: Vec<KiteEntry>,
    /// How many kites are live (may exceed `kites.len()`).
    pub total: usize,
    /// Whether `kites` was cut to [`WebConfig::max_kites`].
    pub truncated: bool,
}

/// One kite registered or gone (the SSE `register` and `deregister` events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The server's clock, in milliseconds since the Unix epoch.
    pub now: u64,
    /// The kite (for `deregister`, as it was registered).
    #[serde(flatten)]
    pub entry: KiteEntry,
}

/// What the live feed delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebEvent {
    /// Every live kite: replaces whatever the client knew (first event, and again after
    /// events were lost).
    Snapshot(Snapshot),
    /// A kite became available, or its URL changed.
    Register(Change),
    /// A kite went away (deleted, or its registration expired).
    Deregister(Change),
}

impl WebEvent {
    /// The SSE event name: `snapshot`, `register` or `deregister`.
    pub fn name(&self) -> &'static str {
        match self {
            WebEvent::Snapshot(_) => "snapshot",
            WebEvent::Register(_) => "register",
            WebEvent::Deregister(_) => "deregister",
        }
    }

    /// The event's JSON data.
    pub fn to_json(&self) -> String {
        let json = match self {
            WebEvent::Snapshot(s) => serde_json::to_string(s),
            WebEvent::Register(c) | WebEvent::Deregister(c) => serde_json::to_string(c),
        };
        // Plain structs of strings and integers always serialize.
        json.unwrap_or_else(|_| "null".to_owned())
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn now_millis() -> u64 {
    millis(SystemTime::now())
}

/// Every live kite, in identity order, cut to `config.web.max_kites`.
pub async fn snapshot(kontrol: &Kontrol) -> Result<Snapshot, KontrolError> {
    if kontrol.is_closed() {
        return Err(KontrolError::Closed);
    }
    let mut records = kontrol
        .storage()
        .get_all()
        .await
        .map_err(|e| KontrolError::storage("web snapshot", e))?;
    let now = now_millis();
    let total = records.len();
    records.sort_unstable_by(|a, b| a.kite.values().cmp(&b.kite.values()));
    let max = kontrol.config().web.max_kites;
    records.truncate(max);
    Ok(Snapshot {
        now,
        kites: records.into_iter().map(KiteEntry::from).collect(),
        total,
        truncated: total > max,
    })
}

/// The live feed of every kite: a [`WebEvent::Snapshot`] first, then a
/// [`WebEvent::Register`] / [`WebEvent::Deregister`] for each change (including changes
/// through other replicas sharing the storage). When events were lost (a slow consumer,
/// an interrupted backend feed) a new snapshot follows, so that applying the events in order
/// always converges on the registry. Ends when Kontrol shuts down, the storage closes, or a
/// snapshot cannot be read (the client should reconnect).
pub async fn feed(
    kontrol: &Kontrol,
) -> Result<impl Stream<Item = WebEvent> + Send + 'static, KontrolError> {
    // Subscribe before reading, so that nothing happening in between is missed.
    let watcher = kontrol
        .storage()
        .watch_all()
        .await
        .map_err(|e| KontrolError::storage("web watch", e))?;
    let first = snapshot(kontrol).await?;
    let feed = Feed {
        kontrol: kontrol.clone(),
        watcher,
        pending: Some(first),
    };
    Ok(stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((event, feed))
    }))
}

struct Feed {
    kontrol: Kontrol,
    watcher: Watcher,
    pending: Option<Snapshot>,
}

impl Feed {
    async fn next(&mut self) -> Option<WebEvent> {
        if let Some(snapshot) = self.pending.take() {
            return Some(WebEvent::Snapshot(snapshot));
        }
        let received = tokio::select! {
            biased;
            () = self.kontrol.closed() => return None,
            r = self.watcher.recv() => r,
        };
        match received {
            Ok(event) => {
                let change = Change {
                    now: now_millis(),
                    entry: KiteEntry::from(event.record),
                };
                Some(match event.action {
                    WatchAction::Register => WebEvent::Register(change),
                    WatchAction::Deregister => WebEvent::Deregister(change),
                })
            }
            Err(WatchError::Closed) => None,
            Err(lost) => {
                tracing::debug!(error = %lost, "kontrol web: live feed lost events, sending a new snapshot");
                match snapshot(&self.kontrol).await {
                    Ok(s) => Some(WebEvent::Snapshot(s)),
                    Err(e) => {
                        tracing::warn!(error = %e, "kontrol web: snapshot failed, ending the live feed");
                        None
                    }
                }
            }
        }
    }
}

#[derive(Clone)]
struct WebState {
    kontrol: Kontrol,
    streams: Arc<Semaphore>,
}

/// The page's routes — `GET /`, `/web/app.js`, `/web/style.css`, `/api/kites`,
/// `/api/watch` — or none when `kontrol.config().web.enabled` is false. Included in
/// [`crate::http::routes`]; merge it yourself only when serving Kontrol otherwise.
pub fn routes(kontrol: Kontrol) -> Router {
    let config = &kontrol.config().web;
    if !config.enabled {
        return Router::new();
    }
    let streams = Arc::new(Semaphore::new(config.max_streams));
    Router::new()
        .route("/", get(index))
        .route("/web/app.js", get(app_js))
        .route("/web/style.css", get(style_css))
        .route("/api/kites", get(api_kites))
        .route("/api/watch", get(api_watch))
        .with_state(WebState { kontrol, streams })
}

/// Headers every answer of the page carries.
fn common_headers(res: &mut Response, content_type: &'static str, cache: &'static str) {
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut res = body.into_response();
    common_headers(&mut res, content_type, "no-cache");
    res
}

async fn index() -> Response {
    let mut res = asset(INDEX_HTML, "text/html; charset=utf-8");
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn style_css() -> Response {
    asset(STYLE_CSS, "text/css; charset=utf-8")
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut res = (status, body).into_response();
    common_headers(&mut res, "application/json", "no-store");
    res
}

/// `{"err": "..."}` with a status; storage details stay in the log.
fn api_error(e: &KontrolError) -> Response {
    let message = match e {
        KontrolError::Closed => e.to_string(),
        _ => {
            tracing::warn!(error = %e, "kontrol web: reading the registry failed");
            "the registry is not available".to_owned()
        }
    };
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({ "err": message }).to_string(),
    )
}

async fn api_kites(State(state): State<WebState>) -> Response {
    match snapshot(&state.kontrol).await {
        Ok(s) => json_response(StatusCode::OK, WebEvent::Snapshot(s).to_json()),
        Err(e) => api_error(&e),
    }
}

async fn api_watch(State(state): State<WebState>) -> Response {
    let config = &state.kontrol.config().web;
    let Ok(permit) = Arc::clone(&state.streams).try_acquire_owned() else {
        let message = format!("too many live connections (limit {})", config.max_streams);
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "err": message }).to_string(),
        );
    };
    let events = match feed(&state.kontrol).await {
        Ok(events) => events,
        Err(e) => return api_error(&e),
    };
    let retry = config.retry;
    let events = events.map(move |event| {
        // The connection's slot is released when the stream is dropped.
        let _slot = &permit;
        let mut sse = Event::default().event(event.name()).data(event.to_json());
        if matches!(event, WebEvent::Snapshot(_)) {
            sse = sse.retry(retry);
        }
        Ok::<_, Infallible>(sse)
    });
    let mut res = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(config.keep_alive))
        .into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    res
}
