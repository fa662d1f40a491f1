//! WebSocket transports: SockJS-framed (`/{server}/{session}/websocket`) and raw
//! (`<prefix>/websocket`), over RFC 6455 (tungstenite) or the legacy hixie-76 protocol.
//!
//! Each connection is served by exactly one task that owns the socket and the session's
//! [`TransportSide`]: it writes every batch of queued messages as one frame, delivers
//! incoming messages (not reading the socket while the user's queue is full), sends
//! heartbeats, and closes the session properly.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use bytes::{Buf, BytesMut};
use futures_util::future::{Fuse, FusedFuture, FutureExt};
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use kite_protocol::sockjs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role as WsRole, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::http_util;
use super::{SessionSlot, Shared};
use crate::adaptive_read::AdaptiveRead;
use crate::frames::encode_frames;
use crate::session::{
    Escaped, Outbound, Received, ReceiverGone, Role, Session, SessionInfo, Transport, TransportSide,
};
use crate::ws_failure::WsFailure;

/// How long a closing handshake may take before the connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the request asks for a WebSocket upgrade.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, header::UPGRADE, "websocket")
}

/// `GET /{server}/{session}/websocket`.
pub(crate) async fn sockjs(shared: Arc<Shared>, req: Request) -> Response {
    let id = req
        .uri()
        .path()
        .rsplit('/')
        .nth(1)
        .map(Arc::<str>::from)
        .unwrap_or_else(|| Arc::from(""));
    upgrade(shared, req, id, true)
}

/// `GET <prefix>/websocket` (or an upgrade of the prefix itself).
pub(crate) async fn raw(shared: Arc<Shared>, req: Request) -> Response {
    let id: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..20)
            .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
            .collect()
    };
    upgrade(shared, req, Arc::from(id), false)
}

/// What the connection task needs to know; kept small (it lives as long as the connection).
#[derive(Debug, Clone, Copy)]
struct Params {
    heartbeat: Duration,
    write_timeout: Duration,
    /// The most messages one write carries while the session runs.
    max_batch: usize,
    /// The most messages taken at once when the session ends (all that is queued).
    drain_batch: usize,
    read_buffer_max: usize,
    sockjs: bool,
}

fn upgrade(shared: Arc<Shared>, mut req: Request, id: Arc<str>, sockjs: bool) -> Response {
    let headers = req.headers();
    if !is_upgrade(headers) {
        return http_util::text(
            StatusCode::BAD_REQUEST,
            "Can \"Upgrade\" only to \"WebSocket\".",
        );
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return http_util::text(
            StatusCode::BAD_REQUEST,
            "\"Connection\" must be \"Upgrade\".",
        );
    }
    let hixie = match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(_) => None,
        None => match (
            headers.get("sec-websocket-key1"),
            headers.get("sec-websocket-key2"),
        ) {
            (Some(k1), Some(k2)) => match (hixie_key(k1), hixie_key(k2)) {
                (Some(k1), Some(k2)) => Some((k1, k2)),
                _ => return http_util::text(StatusCode::BAD_REQUEST, "Invalid WebSocket key."),
            },
            _ => return http_util::text(StatusCode::BAD_REQUEST, "Missing Sec-WebSocket-Key."),
        },
    };
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    match hixie {
        None => {
            let version_ok = headers
                .get(header::SEC_WEBSOCKET_VERSION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| matches!(v.trim(), "13" | "8" | "7"));
            if !version_ok {
                let mut r =
                    http_util::text(StatusCode::BAD_REQUEST, "Unsupported WebSocket version.");
                r.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
                return r;
            }
            let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
                return http_util::text(StatusCode::BAD_REQUEST, "Missing Sec-WebSocket-Key.");
            };
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let h = resp.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if let Ok(v) = HeaderValue::from_str(&accept) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
        }
        Some(_) => {
            let origin = headers.get(header::ORIGIN).cloned();
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            let location = format!(
                "ws://{host}{}",
                req.uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
            );
            let h = resp.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            if let Some(origin) = origin {
                h.insert("sec-websocket-origin", origin);
            }
            if let Ok(v) = HeaderValue::from_str(&location) {
                h.insert("sec-websocket-location", v);
            }
        }
    }
    let Some(slot) = shared.reserve_slot() else {
        tracing::warn!(
            max_sessions = shared.config.max_sessions,
            "sockjs: session limit reached, refusing a WebSocket"
        );
        return http_util::text(StatusCode::SERVICE_UNAVAILABLE, "Too many sessions.");
    };
    let remote = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let on_upgrade = hyper::upgrade::on(&mut req);
    drop(req);
    let cfg = &shared.config;
    let params = Params {
        heartbeat: cfg.heartbeat_interval,
        write_timeout: cfg.write_timeout,
        max_batch: cfg.websocket_batch.max(1),
        drain_batch: cfg.outgoing_queue.max(1),
        read_buffer_max: cfg.websocket_read_buffer_max,
        sockjs,
    };
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(cfg.websocket_read_buffer.max(64))
        .max_message_size(Some(cfg.max_message_bytes))
        .max_frame_size(Some(cfg.max_message_bytes));
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "sockjs: WebSocket upgrade failed");
                return;
            }
        };
        let io = TokioIo::new(upgraded);
        let transport = if sockjs {
            Transport::WebSocket
        } else {
            Transport::RawWebSocket
        };
        let info = SessionInfo::new(id, transport, Role::Accepted, remote);
        let (session, side) = Session::pair(
            info,
            shared.config.outgoing_queue,
            shared.config.incoming_queue,
        );
        match hixie {
            None => {
                let io = AdaptiveRead::new(io, params.read_buffer_max);
                let ws =
                    WebSocketStream::from_raw_socket(io, WsRole::Server, Some(ws_config)).await;
                shared.open_session(session);
                drop(shared);
                run(Hybi { ws }, side, params, slot).await
            }
            Some((k1, k2)) => {
                let max = shared.config.max_message_bytes;
                let Some(io) = hixie_handshake(io, k1, k2).await else {
                    return;
                };
                shared.open_session(session);
                drop(shared);
                let hixie = Hixie {
                    io,
                    buf: BytesMut::new(),
                    max,
                };
                run(hixie, side, params, slot).await
            }
        }
    });
    resp
}

/// What the socket yielded.
enum Recv<T> {
    Text(T),
    /// The peer closed the connection (its close frame, or the end of a closing handshake):
    /// what is pending (the reply to its close) is still flushed.
    Closed,
    /// The connection is gone: dropped without a closing handshake, reset, or failed.
    /// Nothing more is written to it.
    Gone,
    /// The peer broke the protocol: close with this WebSocket code and reason.
    Fail(u16, &'static str),
}

/// A message-oriented WebSocket connection (RFC 6455 or hixie-76).
trait FrameIo: Send {
    type Text: std::ops::Deref<Target = str> + Send;
    /// The next text message. Cancel-safe.
    async fn recv(&mut self) -> Recv<Self::Text>;
    /// Writes every frame of `texts` (draining it) and flushes.
    async fn send_texts(&mut self, texts: &mut Vec<Utf8Bytes>) -> Result<(), ()>;
    /// A keep-alive for raw connections.
    async fn ping(&mut self) -> Result<(), ()>;
    /// Flushes what is pending (e.g. the reply to the peer's close).
    async fn flush(&mut self);
    /// Closing handshake with `code`.
    async fn close(&mut self, code: u16, reason: &str);
    /// Gives back buffers that hold nothing (the connection is idle).
    fn release_idle(&mut self) {}
}

struct Hybi {
    ws: WebSocketStream<AdaptiveRead<TokioIo<Upgraded>>>,
}

impl FrameIo for Hybi {
    type Text = Utf8Bytes;

    fn release_idle(&mut self) {
        self.ws.get_mut().release_idle();
    }

    async fn recv(&mut self) -> Recv<Utf8Bytes> {
        loop {
            match self.ws.next().await {
                None => return Recv::Closed,
                Some(Ok(Message::Text(t))) => return Recv::Text(t),
                Some(Ok(Message::Binary(b))) => {
                    return match Utf8Bytes::try_from(b) {
                        Ok(t) => Recv::Text(t),
                        Err(_) => Recv::Fail(1003, "Binary data is not supported."),
                    }
                }
                Some(Ok(Message::Close(_))) => return Recv::Closed,
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return match WsFailure::of(&e) {
                        WsFailure::PeerGone => {
                            tracing::debug!(error = %e, "sockjs: WebSocket peer went away");
                            Recv::Gone
                        }
                        WsFailure::Violation(code, reason) => Recv::Fail(code, reason),
                    }
                }
            }
        }
    }

    async fn send_texts(&mut self, texts: &mut Vec<Utf8Bytes>) -> Result<(), ()> {
        for t in texts.drain(..) {
            self.ws.feed(Message::Text(t)).await.map_err(|_| ())?;
        }
        self.ws.flush().await.map_err(|_| ())
    }

    async fn ping(&mut self) -> Result<(), ()> {
        self.ws
            .send(Message::Ping(Default::default()))
            .await
            .map_err(|_| ())
    }

    async fn flush(&mut self) {
        let _ = timeout(CLOSE_GRACE, self.ws.flush()).await;
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from(reason),
        };
        let _ = timeout(CLOSE_GRACE, async {
            if self.ws.close(Some(frame)).await.is_ok() {
                // Wait for the peer's close reply, then the connection ends.
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
    }
}

/// The hixie-76 (draft-76) protocol of very old browsers: `0x00 text 0xFF` frames.
struct Hixie {
    io: TokioIo<Upgraded>,
    buf: BytesMut,
    max: usize,
}

fn hixie_key(v: &HeaderValue) -> Option<u32> {
    let s = v.to_str().ok()?;
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    let number: u64 = digits.parse().ok()?;
    let spaces = s.chars().filter(|c| *c == ' ').count() as u64;
    if spaces == 0 || number % spaces != 0 {
        return None;
    }
    u32::try_from(number / spaces).ok()
}

async fn hixie_handshake(mut io: TokioIo<Upgraded>, k1: u32, k2: u32) -> Option<TokioIo<Upgraded>> {
    use md5::{Digest, Md5};
    let mut key3 = [0u8; 8];
    timeout(Duration::from_secs(10), io.read_exact(&mut key3))
        .await
        .ok()?
        .ok()?;
    let mut md5 = Md5::new();
    md5.update(k1.to_be_bytes());
    md5.update(k2.to_be_bytes());
    md5.update(key3);
    let answer = md5.finalize();
    io.write_all(&answer).await.ok()?;
    io.flush().await.ok()?;
    Some(io)
}

impl FrameIo for Hixie {
    type Text = String;

    async fn recv(&mut self) -> Recv<String> {
        loop {
            match self.buf.first() {
                Some(0x00) => {
                    if let Some(end) = self.buf[1..].iter().position(|b| *b == 0xff) {
                        let frame = self.buf.split_to(end + 2);
                        return match std::str::from_utf8(&frame[1..end + 1]) {
                            Ok(s) => Recv::Text(s.to_owned()),
                            Err(_) => Recv::Fail(1007, "Invalid UTF-8."),
                        };
                    }
                    if self.buf.len() > self.max.saturating_add(2) {
                        return Recv::Fail(1009, "Message too big.");
                    }
                }
                Some(0xff) if self.buf.len() >= 2 => {
                    return if self.buf[1] == 0 {
                        self.buf.advance(2);
                        Recv::Closed
                    } else {
                        Recv::Fail(1002, "Protocol error.")
                    };
                }
                Some(0xff) => {}
                Some(_) => return Recv::Fail(1002, "Protocol error."),
                None => {}
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(2048);
            }
            match self.io.read_buf(&mut self.buf).await {
                // The end of the stream without the closing frame: the peer went away.
                Ok(0) => {
                    tracing::debug!("sockjs: hixie-76 WebSocket peer went away");
                    return Recv::Gone;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "sockjs: hixie-76 WebSocket peer went away");
                    return Recv::Gone;
                }
                Ok(_) => {}
            }
        }
    }

    async fn send_texts(&mut self, texts: &mut Vec<Utf8Bytes>) -> Result<(), ()> {
        let mut out = Vec::with_capacity(texts.iter().map(|t| t.len() + 2).sum());
        for t in texts.drain(..) {
            out.push(0x00);
            out.extend_from_slice(t.as_bytes());
            out.push(0xff);
        }
        self.io.write_all(&out).await.map_err(|_| ())?;
        self.io.flush().await.map_err(|_| ())
    }

    async fn ping(&mut self) -> Result<(), ()> {
        Ok(())
    }

    async fn flush(&mut self) {
        let _ = timeout(CLOSE_GRACE, self.io.flush()).await;
    }

    async fn close(&mut self, _code: u16, _reason: &str) {
        let _ = timeout(CLOSE_GRACE, async {
            self.io.write_all(&[0xff, 0x00]).await?;
            self.io.shutdown().await
        })
        .await;
    }
}

/// Why the connection loop ended.
enum End {
    /// The session closes: `c[code,reason]` (SockJS) and a close handshake.
    Close(u32, String),
    /// The peer closed, or stopped reading: flush what is pending (the reply to its close).
    Gone,
    /// The connection is dead: nothing more is written.
    Lost,
    /// The peer broke the protocol.
    Fail(u16, &'static str),
    /// The user dropped the receiving half: flush what is queued, then close with 3000.
    ReceiverGone,
}

fn go_away() -> End {
    End::Close(
        sockjs::CLOSE_GO_AWAY.0.into(),
        sockjs::CLOSE_GO_AWAY.1.to_string(),
    )
}

/// WebSocket close code for a SockJS close code (only 1000 and 3000–4999 are free to use).
fn ws_close_code(code: u32) -> u16 {
    u16::try_from(code)
        .ok()
        .filter(|c| (3000..=4999).contains(c))
        .unwrap_or(1000)
}

async fn write<I: FrameIo>(io: &mut I, frames: &mut Vec<Utf8Bytes>, p: &Params) -> Result<(), ()> {
    match timeout(p.write_timeout, io.send_texts(frames)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                timeout = ?p.write_timeout,
                "sockjs: WebSocket peer stopped reading, closing the session"
            );
            Err(())
        }
    }
}

/// Appends the messages of a client frame to `out`: in the escaped form when the frame is
/// in the usual shape (`split` is scratch space), else unescaped (or the frame's error).
fn client_frame_messages(
    frame: &str,
    split: &mut Vec<Escaped>,
    out: &mut Vec<Received>,
) -> Result<(), sockjs::FrameError> {
    if sockjs::split_messages(frame, split).is_some() {
        out.extend(split.drain(..).map(Received::Escaped));
        return Ok(());
    }
    let mut plain = Vec::new();
    sockjs::decode_client_frame_into(frame, &mut plain)?;
    out.extend(plain.into_iter().map(Received::Text));
    Ok(())
}

/// Moves the messages of `batch` (up to a close request) into `frames`: one `a[...]`
/// frame (SockJS, encoded in `buf`) or one text frame per message (raw). Returns the
/// close request.
fn take_batch(
    batch: &mut Vec<Outbound>,
    frames: &mut Vec<Utf8Bytes>,
    buf: &mut BytesMut,
    sockjs: bool,
) -> Option<(u32, String)> {
    if sockjs {
        return encode_frames(batch, b"a", buf, frames, usize::MAX);
    }
    let mut close = None;
    for item in batch.drain(..) {
        match item {
            Outbound::Message(m) if close.is_none() => frames.push(Utf8Bytes::from(m)),
            Outbound::Escaped(m) if close.is_none() => match m.to_plain() {
                Ok(m) => frames.push(Utf8Bytes::from(m)),
                Err(e) => tracing::error!(error = %e, "raw websocket: cannot unescape a message"),
            },
            Outbound::Message(_) | Outbound::Escaped(_) => {}
            Outbound::Close { code, reason } => {
                if close.is_none() {
                    close = Some((code, reason));
                }
            }
        }
    }
    close
}

async fn run<I: FrameIo>(mut io: I, mut side: TransportSide, p: Params, slot: SessionSlot) {
    let mut frames: Vec<Utf8Bytes> = Vec::new();
    let mut batch: Vec<Outbound> = Vec::new();
    // Where `a[...]` frames are encoded; kept while requests are in flight.
    let mut buf = BytesMut::new();
    if p.sockjs {
        frames.push(Utf8Bytes::from_static(sockjs::OPEN_FRAME));
        if write(&mut io, &mut frames, &p).await.is_err() {
            return;
        }
    }
    let end = {
        let deliverer = side.deliverer();
        // The messages of the last frame not yet delivered, last first (`delivering`
        // delivers them one at a time; the socket is not read meanwhile).
        let mut incoming: Vec<Received> = Vec::new();
        // A frame's messages in the escaped form (reused).
        let mut split: Vec<Escaped> = Vec::new();
        let delivering = Fuse::terminated();
        tokio::pin!(delivering);
        let mut heartbeat = tokio::time::interval_at(Instant::now() + p.heartbeat, p.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Messages delivered to the user and not yet matched by as many outgoing ones:
        // while more are pending than a batch holds, answers are still being produced.
        let mut pending = 0usize;
        loop {
            tokio::select! {
                more = side.next_batch(&mut batch, p.max_batch) => {
                    if !more {
                        break go_away();
                    }
                    // Answers to requests delivered together are queued a moment apart by
                    // the tasks handling them: let them run once so they share this write.
                    if pending > batch.len() {
                        tokio::task::yield_now().await;
                        side.try_batch(&mut batch, p.max_batch);
                    }
                    pending = pending.saturating_sub(batch.len());
                    let close = take_batch(&mut batch, &mut frames, &mut buf, p.sockjs);
                    if !frames.is_empty() && write(&mut io, &mut frames, &p).await.is_err() {
                        break End::Gone;
                    }
                    if let Some((code, reason)) = close {
                        break End::Close(code, reason);
                    }
                    if pending == 0 {
                        // Nothing in flight: don't hold the frame buffer while idle.
                        buf = BytesMut::new();
                    }
                }
                delivered = &mut delivering, if !delivering.is_terminated() => {
                    let delivered: Result<(), ReceiverGone> = delivered;
                    if delivered.is_err() {
                        break End::ReceiverGone;
                    }
                    pending = pending.saturating_add(1);
                    match incoming.pop() {
                        Some(m) => delivering.set(deliverer.deliver_received(m).fuse()),
                        // Don't keep the decoded frame's storage while idle.
                        None => {
                            incoming = Vec::new();
                            split = Vec::new();
                        }
                    }
                }
                received = io.recv(), if delivering.is_terminated() => match received {
                    Recv::Text(text) => {
                        if p.sockjs {
                            if let Err(e) = client_frame_messages(&text, &mut split, &mut incoming) {
                                tracing::warn!(error = %e, "sockjs: malformed frame from a WebSocket client, closing the session");
                                break End::Fail(1007, "Broken framing.");
                            }
                        } else {
                            incoming.push(Received::Text(text.to_string()));
                        }
                        drop(text);
                        // Delivered one at a time (from the end), so that answers to the
                        // first can be written while the rest are delivered.
                        incoming.reverse();
                        if let Some(m) = incoming.pop() {
                            delivering.set(deliverer.deliver_received(m).fuse());
                        }
                    }
                    Recv::Closed => break End::Gone,
                    Recv::Gone => break End::Lost,
                    Recv::Fail(code, reason) => {
                        tracing::warn!(code, reason, "sockjs: bad WebSocket input, closing the session");
                        break End::Fail(code, reason);
                    }
                },
                _ = heartbeat.tick() => {
                    // Idle or not, queues that are empty now give their storage back.
                    side.release_idle();
                    io.release_idle();
                    let r = if p.sockjs {
                        frames.push(Utf8Bytes::from_static(sockjs::HEARTBEAT_FRAME));
                        write(&mut io, &mut frames, &p).await
                    } else {
                        match timeout(p.write_timeout, io.ping()).await {
                            Ok(r) => r,
                            Err(_) => Err(()),
                        }
                    };
                    if r.is_err() {
                        break End::Gone;
                    }
                    // Both are empty between batches: give their storage back.
                    frames = Vec::new();
                    batch = Vec::new();
                    buf = BytesMut::new();
                    if incoming.is_empty() {
                        incoming = Vec::new();
                    }
                    split = Vec::new();
                }
                _ = deliverer.receiver_closed(), if delivering.is_terminated() => break End::ReceiverGone,
            }
        }
    };
    tracing::debug!(session = side.info().id(), transport = %side.info().transport(), "sockjs: WebSocket session ending");
    let end = match end {
        End::ReceiverGone => {
            side.try_batch(&mut batch, p.drain_batch);
            let close = take_batch(&mut batch, &mut frames, &mut buf, p.sockjs);
            if !frames.is_empty() && write(&mut io, &mut frames, &p).await.is_err() {
                End::Gone
            } else {
                match close {
                    Some((code, reason)) => End::Close(code, reason),
                    None => go_away(),
                }
            }
        }
        other => other,
    };
    match end {
        End::Gone | End::ReceiverGone => {
            drop(side);
            io.flush().await;
        }
        End::Lost => drop(side),
        End::Close(code, reason) => {
            drop(side);
            if p.sockjs {
                let mut frame = String::new();
                sockjs::encode_close(code, &reason, &mut frame);
                frames.push(Utf8Bytes::from(frame));
                let _ = write(&mut io, &mut frames, &p).await;
            }
            io.close(ws_close_code(code), &reason).await;
        }
        End::Fail(code, reason) => {
            // What the user had already queued still goes out.
            side.try_batch(&mut batch, p.drain_batch);
            drop(side);
            let _ = take_batch(&mut batch, &mut frames, &mut buf, p.sockjs);
            if !frames.is_empty() {
                let _ = write(&mut io, &mut frames, &p).await;
            }
            io.close(code, reason).await;
        }
    }
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hixie_keys() {
        // The example of draft-ietf-hybi-thewebsocketprotocol-00.
        let k1 = HeaderValue::from_static("4 @1  46546xW%0l 1 5");
        let k2 = HeaderValue::from_static("12998 5 Y3 1  .P00");
        assert_eq!(hixie_key(&k1), Some(829_309_203));
        assert_eq!(hixie_key(&k2), Some(259_970_620));
        assert_eq!(hixie_key(&HeaderValue::from_static("123")), None);
    }

    #[test]
    fn close_codes() {
        assert_eq!(ws_close_code(3000), 3000);
        assert_eq!(ws_close_code(2010), 1000);
        assert_eq!(ws_close_code(70000), 1000);
    }
}
