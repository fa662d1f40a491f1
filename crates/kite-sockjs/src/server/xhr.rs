//! The HTTP transports: XHR polling and streaming, EventSource, htmlfile, JSONP.
//!
//! These sessions outlive the HTTP requests that carry them, so they live in a registry
//! keyed by session id. A session costs no task of its own: a receiving request *attaches*
//! (takes the session's [`TransportSide`] for as long as it runs) and puts it back when it
//! ends normally. A receiving request the client aborts destroys the session (the next
//! request with that id opens a new one, like the Go server). One sweeper task per router
//! destroys sessions left without a receiving request for `disconnect_delay`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use kite_protocol::sockjs;
use tokio::time::Instant;

use super::http_util::{self, JAVASCRIPT, TEXT_PLAIN};
use super::{SessionSlot, Shared};
use crate::frames::encode_frames;
use crate::session::{Deliverer, Outbound, Role, Session, SessionInfo, Transport, TransportSide};

/// Which receiving transport a request uses.
#[derive(Debug, Clone)]
pub(crate) enum RecvKind {
    Xhr,
    XhrStreaming,
    EventSource,
    HtmlFile(String),
    Jsonp(String),
}

impl RecvKind {
    fn transport(&self) -> Transport {
        match self {
            RecvKind::Xhr => Transport::XhrPolling,
            RecvKind::XhrStreaming => Transport::XhrStreaming,
            RecvKind::EventSource => Transport::EventSource,
            RecvKind::HtmlFile(_) => Transport::HtmlFile,
            RecvKind::Jsonp(_) => Transport::Jsonp,
        }
    }

    fn streaming(&self) -> bool {
        !matches!(self, RecvKind::Xhr | RecvKind::Jsonp(_))
    }

    fn content_type(&self) -> &'static str {
        match self {
            RecvKind::Xhr | RecvKind::XhrStreaming | RecvKind::Jsonp(_) => JAVASCRIPT,
            RecvKind::EventSource => "text/event-stream",
            RecvKind::HtmlFile(_) => "text/html; charset=UTF-8",
        }
    }

    /// What a streaming response starts with.
    fn prelude(&self) -> Bytes {
        match self {
            RecvKind::XhrStreaming => {
                let mut p = vec![b'h'; 2049];
                p[2048] = b'\n';
                Bytes::from(p)
            }
            RecvKind::EventSource => Bytes::from_static(b"\r\n"),
            RecvKind::HtmlFile(callback) => {
                let mut head = format!(
                    "<!doctype html>\n<html><head>\n  \
                     <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />\n  \
                     <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />\n\
                     </head><body><h2>Don't panic!</h2>\n  <script>\n    \
                     document.domain = document.domain;\n    var c = parent.{callback};\n    \
                     c.start();\n    function p(d) {{c.message(d);}};\n    \
                     window.onload = function() {{c.stop();}};\n  </script>"
                );
                // Old browsers start rendering (and running scripts) only after 1 KiB.
                while head.len() < 1024 {
                    head.push(' ');
                }
                head.push_str("\r\n\r\n");
                Bytes::from(head)
            }
            RecvKind::Xhr | RecvKind::Jsonp(_) => Bytes::new(),
        }
    }

    /// One frame as this transport carries it.
    fn wrap(&self, frame: &str) -> Bytes {
        let mut out = String::with_capacity(frame.len() + 24);
        match self {
            RecvKind::Xhr | RecvKind::XhrStreaming => {
                out.push_str(frame);
                out.push('\n');
            }
            RecvKind::EventSource => {
                out.push_str("data: ");
                out.push_str(frame);
                out.push_str("\r\n\r\n");
            }
            RecvKind::HtmlFile(_) => {
                out.push_str("<script>\np(");
                sockjs::quote_into(frame, &mut out);
                out.push_str(");\n</script>\r\n");
            }
            RecvKind::Jsonp(callback) => {
                out.push_str("/**/");
                out.push_str(callback);
                out.push('(');
                sockjs::quote_into(frame, &mut out);
                out.push_str(");\r\n");
            }
        }
        Bytes::from(out)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The XHR-family sessions of one router.
#[derive(Default)]
pub(crate) struct Registry {
    map: Mutex<HashMap<Arc<str>, Arc<XhrSession>>>,
    sweeper: AtomicBool,
}

impl Registry {
    fn get(&self, id: &str) -> Option<Arc<XhrSession>> {
        lock(&self.map).get(id).cloned()
    }

    /// Removes `session` if it is still the one registered under `id`.
    fn remove(&self, id: &str, session: &Arc<XhrSession>) {
        let mut map = lock(&self.map);
        if map.get(id).is_some_and(|s| Arc::ptr_eq(s, session)) {
            map.remove(id);
        }
    }

    /// Destroys the sessions that had no receiving request for `delay`.
    fn sweep(&self, delay: Duration) {
        let now = Instant::now();
        let mut dead = Vec::new();
        lock(&self.map).retain(|_, s| {
            let st = lock(&s.state);
            let keep = st.attached || now.saturating_duration_since(st.detached_at) < delay;
            if !keep {
                dead.push(s.clone());
            }
            keep
        });
        for s in dead {
            tracing::debug!(session = %s.id, "sockjs: session timed out");
            s.destroy();
        }
    }
}

pub(crate) struct XhrSession {
    id: Arc<str>,
    state: Mutex<State>,
    _slot: SessionSlot,
}

struct State {
    /// Present while no receiving request holds it and the session is open.
    side: Option<TransportSide>,
    /// Present while the session is open.
    deliverer: Option<Deliverer>,
    attached: bool,
    /// Once closed: the close frame every later receiving request gets.
    closed: Option<(u32, String)>,
    detached_at: Instant,
}

enum Attach {
    Attached(TransportSide),
    Busy,
    Closed(u32, String),
}

impl XhrSession {
    fn try_attach(&self) -> Attach {
        let mut st = lock(&self.state);
        if let Some((code, reason)) = &st.closed {
            return Attach::Closed(*code, reason.clone());
        }
        if st.attached {
            return Attach::Busy;
        }
        match st.side.take() {
            Some(side) => {
                st.attached = true;
                Attach::Attached(side)
            }
            None => Attach::Closed(
                sockjs::CLOSE_GO_AWAY.0.into(),
                sockjs::CLOSE_GO_AWAY.1.into(),
            ),
        }
    }

    fn deliverer(&self) -> Option<Deliverer> {
        lock(&self.state).deliverer.clone()
    }

    /// Ends the session: the user's receiver ends, senders see it closed.
    fn destroy(&self) {
        let mut st = lock(&self.state);
        let side = st.side.take();
        let deliverer = st.deliverer.take();
        drop(st);
        drop((side, deliverer));
    }
}

/// A receiving request's hold on its session.
struct Attachment {
    shared: Arc<Shared>,
    session: Arc<XhrSession>,
    side: Option<TransportSide>,
    done: bool,
}

impl Attachment {
    /// The request ended normally: the session waits for the next one.
    fn detach(&mut self) {
        self.done = true;
        let mut st = lock(&self.session.state);
        st.side = self.side.take();
        st.attached = false;
        st.detached_at = Instant::now();
    }

    /// The session closed with `code`: later requests get the close frame until it expires.
    fn close(&mut self, code: u32, reason: String) {
        self.done = true;
        tracing::debug!(session = %self.session.id, code, "sockjs: session closed");
        let side = self.side.take();
        let mut st = lock(&self.session.state);
        let deliverer = st.deliverer.take();
        st.closed = Some((code, reason));
        st.attached = false;
        st.detached_at = Instant::now();
        drop(st);
        drop((side, deliverer));
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The client went away in the middle of a receiving request.
        tracing::debug!(session = %self.session.id, "sockjs: receiving request aborted, session destroyed");
        let side = self.side.take();
        {
            let mut st = lock(&self.session.state);
            st.attached = false;
            st.detached_at = Instant::now();
        }
        self.session.destroy();
        self.shared.registry.remove(&self.session.id, &self.session);
        drop(side);
    }
}

/// The next frame for a receiving request.
enum Next {
    /// `a[...]` or `h`; when `then_close` is set, the session closes right after.
    Frame {
        frame: String,
        then_close: Option<(u32, String)>,
    },
    Close(u32, String),
}

/// Waits for outgoing messages (one `a[...]` frame with all of them) or the heartbeat.
async fn next_frame(
    side: &mut TransportSide,
    batch: &mut Vec<Outbound>,
    max: usize,
    heartbeat: Duration,
) -> Next {
    if side.receiver_gone() {
        return receiver_gone(side, batch, max);
    }
    tokio::select! {
        more = side.next_batch(batch, max) => {
            if !more {
                return go_away();
            }
            let (frame, close) = encode_batch(batch);
            match (frame, close) {
                (Some(frame), then_close) => Next::Frame { frame, then_close },
                (None, Some((code, reason))) => Next::Close(code, reason),
                (None, None) => Next::Frame { frame: sockjs::HEARTBEAT_FRAME.to_string(), then_close: None },
            }
        }
        _ = tokio::time::sleep(heartbeat) => {
            if side.receiver_gone() {
                return receiver_gone(side, batch, max);
            }
            Next::Frame {
                frame: sockjs::HEARTBEAT_FRAME.to_string(),
                then_close: None,
            }
        }
    }
}

/// The user dropped or closed the receiving half: what is queued still goes out, then the
/// session closes (with the user's own close request if one is queued, else 3000).
fn receiver_gone(side: &mut TransportSide, batch: &mut Vec<Outbound>, max: usize) -> Next {
    side.try_batch(batch, max);
    let (frame, close) = encode_batch(batch);
    let (code, reason) = close.unwrap_or_else(|| {
        (
            sockjs::CLOSE_GO_AWAY.0.into(),
            sockjs::CLOSE_GO_AWAY.1.to_string(),
        )
    });
    match frame {
        Some(frame) => Next::Frame {
            frame,
            then_close: Some((code, reason)),
        },
        None => Next::Close(code, reason),
    }
}

fn go_away() -> Next {
    Next::Close(
        sockjs::CLOSE_GO_AWAY.0.into(),
        sockjs::CLOSE_GO_AWAY.1.to_string(),
    )
}

/// Encodes the messages of `batch` up to the first close request as one `a[...]` frame
/// ([`encode_frames`], the WebSocket's encoder). Returns the frame (if there were
/// messages) and the close request (if any); clears `batch`. Messages queued after a
/// close request are dropped.
pub(crate) fn encode_batch(batch: &mut Vec<Outbound>) -> (Option<String>, Option<(u32, String)>) {
    let mut buf = bytes::BytesMut::new();
    let mut frames = Vec::with_capacity(1);
    let close = encode_frames(batch, b"a", &mut buf, &mut frames, usize::MAX);
    batch.clear();
    (frames.pop().map(|f| f.as_str().to_owned()), close)
}

fn close_frame(code: u32, reason: &str) -> String {
    let mut s = String::new();
    sockjs::encode_close(code, reason, &mut s);
    s
}

fn remote_addr(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

fn session_headers(shared: &Shared, req: &HeaderMap, out: &mut HeaderMap) {
    http_util::no_cache(out);
    http_util::cors(req, out);
    http_util::cookie(&shared.config, req, out);
}

fn ensure_sweeper(shared: &Arc<Shared>) {
    if shared.registry.sweeper.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak = Arc::downgrade(shared);
    let delay = shared.config.disconnect_delay;
    let period = (delay / 2).max(Duration::from_millis(5));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = weak.upgrade() else { break };
            shared.registry.sweep(delay);
        }
    });
}

fn lookup_or_create(
    shared: &Arc<Shared>,
    id: &Arc<str>,
    transport: Transport,
    remote: Option<SocketAddr>,
) -> Option<(Arc<XhrSession>, bool)> {
    let mut map = lock(&shared.registry.map);
    if let Some(s) = map.get(id) {
        return Some((s.clone(), false));
    }
    let Some(slot) = shared.reserve_slot() else {
        tracing::warn!(
            max_sessions = shared.config.max_sessions,
            "sockjs: session limit reached, refusing a new session"
        );
        return None;
    };
    let info = SessionInfo::new(id.clone(), transport, Role::Accepted, remote);
    let (session, side) = Session::pair(
        info,
        shared.config.outgoing_queue,
        shared.config.incoming_queue,
    );
    let deliverer = side.deliverer();
    let xs = Arc::new(XhrSession {
        id: id.clone(),
        state: Mutex::new(State {
            side: Some(side),
            deliverer: Some(deliverer),
            attached: false,
            closed: None,
            detached_at: Instant::now(),
        }),
        _slot: slot,
    });
    map.insert(id.clone(), xs.clone());
    drop(map);
    ensure_sweeper(shared);
    tracing::debug!(session = %id, %transport, "sockjs: session opened");
    shared.open_session(session);
    Some((xs, true))
}

/// A receiving request: `xhr`, `xhr_streaming`, `eventsource`, `htmlfile`, `jsonp`.
pub(crate) async fn receive(
    shared: Arc<Shared>,
    req: Request,
    id: Arc<str>,
    kind: RecvKind,
) -> Response {
    let remote = remote_addr(&req);
    let mut headers = HeaderMap::new();
    session_headers(&shared, req.headers(), &mut headers);
    drop(req);
    let Some((session, created)) = lookup_or_create(&shared, &id, kind.transport(), remote) else {
        let mut resp = http_util::text(StatusCode::SERVICE_UNAVAILABLE, "Too many sessions.");
        resp.headers_mut().extend(headers);
        return resp;
    };
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(kind.content_type()),
    );
    let first: Option<String> = match session.try_attach() {
        Attach::Busy => Some(close_frame(
            sockjs::CLOSE_ANOTHER_CONNECTION.0.into(),
            sockjs::CLOSE_ANOTHER_CONNECTION.1,
        )),
        Attach::Closed(code, reason) => Some(close_frame(code, &reason)),
        Attach::Attached(side) => {
            let att = Attachment {
                shared: shared.clone(),
                session,
                side: Some(side),
                done: false,
            };
            let body = if kind.streaming() {
                streaming_body(att, kind, created, &shared)
            } else {
                Body::from(poll_once(att, &kind, created, &shared).await)
            };
            return with_headers(body, headers);
        }
    };
    // Busy or closed: one frame, then the response ends.
    let frame = kind.wrap(first.as_deref().unwrap_or_default());
    let body = if kind.streaming() {
        let items: [Result<Bytes, std::convert::Infallible>; 2] = [Ok(kind.prelude()), Ok(frame)];
        Body::from_stream(futures_util::stream::iter(items))
    } else {
        Body::from(frame)
    };
    with_headers(body, headers)
}

fn with_headers(body: Body, headers: HeaderMap) -> Response {
    let mut resp = Response::new(body);
    *resp.headers_mut() = headers;
    resp
}

/// A polling request: exactly one frame.
async fn poll_once(mut att: Attachment, kind: &RecvKind, created: bool, shared: &Shared) -> Bytes {
    if created {
        att.detach();
        return kind.wrap(sockjs::OPEN_FRAME);
    }
    let Some(side) = att.side.as_mut() else {
        att.detach();
        return kind.wrap(sockjs::HEARTBEAT_FRAME);
    };
    let mut batch = Vec::new();
    let max = shared.config.outgoing_queue.max(1);
    match next_frame(side, &mut batch, max, shared.config.heartbeat_interval).await {
        Next::Frame { frame, then_close } => {
            match then_close {
                Some((code, reason)) => att.close(code, reason),
                None => att.detach(),
            }
            kind.wrap(&frame)
        }
        Next::Close(code, reason) => {
            let frame = close_frame(code, &reason);
            att.close(code, reason);
            kind.wrap(&frame)
        }
    }
}

enum Phase {
    Prelude,
    Open,
    Frames,
    Close(u32, String),
    Done,
}

struct Streaming {
    att: Attachment,
    kind: RecvKind,
    phase: Phase,
    created: bool,
    batch: Vec<Outbound>,
    written: usize,
    limit: usize,
    max: usize,
    heartbeat: Duration,
}

/// A streaming response: prelude, then frames until the response limit or the close.
fn streaming_body(att: Attachment, kind: RecvKind, created: bool, shared: &Shared) -> Body {
    let state = Streaming {
        att,
        kind,
        phase: Phase::Prelude,
        created,
        batch: Vec::new(),
        written: 0,
        limit: shared.config.response_limit,
        max: shared.config.outgoing_queue.max(1),
        heartbeat: shared.config.heartbeat_interval,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let chunk = match std::mem::replace(&mut st.phase, Phase::Done) {
            Phase::Done => return None,
            Phase::Prelude => {
                st.phase = if st.created {
                    Phase::Open
                } else {
                    Phase::Frames
                };
                st.kind.prelude()
            }
            Phase::Open => st.frame(sockjs::OPEN_FRAME),
            Phase::Close(code, reason) => {
                let frame = close_frame(code, &reason);
                st.att.close(code, reason);
                st.kind.wrap(&frame)
            }
            Phase::Frames => {
                let side = st.att.side.as_mut()?;
                match next_frame(side, &mut st.batch, st.max, st.heartbeat).await {
                    Next::Frame { frame, then_close } => {
                        let chunk = st.frame(&frame);
                        if let Some((code, reason)) = then_close {
                            st.phase = Phase::Close(code, reason);
                        }
                        chunk
                    }
                    Next::Close(code, reason) => {
                        let frame = close_frame(code, &reason);
                        st.att.close(code, reason);
                        st.kind.wrap(&frame)
                    }
                }
            }
        };
        Some((Ok::<_, std::convert::Infallible>(chunk), st))
    });
    Body::from_stream(stream)
}

impl Streaming {
    /// Wraps a frame, counts it against the response limit and picks the next phase.
    fn frame(&mut self, frame: &str) -> Bytes {
        let chunk = self.kind.wrap(frame);
        self.written += chunk.len();
        if self.written >= self.limit {
            // The frame that crosses the limit is still sent; then the response ends.
            self.att.detach();
            self.phase = Phase::Done;
        } else if !matches!(self.phase, Phase::Close(..)) {
            self.phase = Phase::Frames;
        }
        chunk
    }
}

/// A sending request: `xhr_send` (204) or `jsonp_send` (200 `ok`).
pub(crate) async fn send(shared: Arc<Shared>, req: Request, id: Arc<str>, jsonp: bool) -> Response {
    let (parts, body) = req.into_parts();
    let mut headers = HeaderMap::new();
    session_headers(&shared, &parts.headers, &mut headers);
    let reply = |mut resp: Response, headers: HeaderMap| {
        resp.headers_mut().extend(headers);
        resp
    };
    let Some(session) = shared.registry.get(&id) else {
        return reply(http_util::not_found(), headers);
    };
    let limit = shared.config.max_message_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(session = %id, limit, error = %e, "sockjs: send body too large or unreadable");
            return reply(
                http_util::text(StatusCode::PAYLOAD_TOO_LARGE, "Message too big."),
                headers,
            );
        }
    };
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let payload: std::borrow::Cow<'_, [u8]> = if jsonp && is_form {
        match form_urlencoded::parse(&bytes).find(|(k, _)| k == "d") {
            Some((_, v)) => std::borrow::Cow::Owned(v.into_owned().into_bytes()),
            None => std::borrow::Cow::Borrowed(&[][..]),
        }
    } else {
        std::borrow::Cow::Borrowed(&bytes[..])
    };
    if payload.is_empty() {
        return reply(
            http_util::text(StatusCode::INTERNAL_SERVER_ERROR, "Payload expected."),
            headers,
        );
    }
    let messages = match std::str::from_utf8(&payload)
        .ok()
        .and_then(|s| sockjs::decode_client_frame(s).ok())
    {
        Some(m) => m,
        None => {
            tracing::debug!(session = %id, "sockjs: broken JSON in a send request");
            return reply(
                http_util::text(StatusCode::INTERNAL_SERVER_ERROR, "Broken JSON encoding."),
                headers,
            );
        }
    };
    let Some(deliverer) = session.deliverer() else {
        return reply(http_util::not_found(), headers);
    };
    drop(session);
    for message in messages {
        // Waits while the user's incoming queue is full: the reply is the backpressure.
        if deliverer.deliver(message).await.is_err() {
            return reply(http_util::not_found(), headers);
        }
    }
    let mut resp = if jsonp {
        http_util::text(StatusCode::OK, "ok")
    } else {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
        r
    };
    resp.headers_mut().extend(headers);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_encode_up_to_the_close() {
        let mut batch = vec![
            Outbound::Message("a".into()),
            Outbound::Message("b\"".into()),
            Outbound::Close {
                code: 3000,
                reason: "Go away!".into(),
            },
            Outbound::Message("dropped".into()),
        ];
        let (frame, close) = encode_batch(&mut batch);
        assert_eq!(frame.as_deref(), Some(r#"a["a","b\""]"#));
        assert_eq!(close, Some((3000, "Go away!".to_string())));
        assert!(batch.is_empty());
    }

    #[test]
    fn transports_wrap_frames() {
        assert_eq!(&RecvKind::Xhr.wrap("o")[..], b"o\n");
        assert_eq!(&RecvKind::EventSource.wrap("o")[..], b"data: o\r\n\r\n");
        assert_eq!(
            RecvKind::Jsonp("cb".into()).wrap(r#"a["x"]"#),
            "/**/cb(\"a[\\\"x\\\"]\");\r\n"
        );
        assert!(RecvKind::HtmlFile("cb".into()).prelude().len() > 1024);
    }
}
