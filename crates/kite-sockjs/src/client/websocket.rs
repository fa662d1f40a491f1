//! SockJS over WebSocket, dialed like Go's kite client.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{SinkExt, StreamExt};
use kite_protocol::sockjs::{decode_server_frame, split_messages, ServerFrame};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::net::{connect_stream, MaybeTlsStream, Target};
use super::{session_ids, ClientConfig, ConnectError};
use crate::adaptive_read::{AdaptiveRead, ReleaseRequest};
use crate::frames::encode_frames;
use crate::session::{Deliverer, Received, Role, Session, SessionInfo, Transport, TransportSide};
use crate::ws_failure::WsFailure;

type Ws = WebSocketStream<AdaptiveRead<MaybeTlsStream>>;

/// tungstenite's read buffer: the most one socket read takes in while responses are small
/// (tungstenite zero-fills this much before every read, so it is kept small); bursts are
/// read through [`AdaptiveRead`]'s buffer instead, up to [`READ_BUFFER_MAX`] at a time,
/// which is given back at the next server heartbeat (`h` frame) after the burst.
const READ_BUFFER: usize = 512;
/// The most [`AdaptiveRead`] reads at once.
const READ_BUFFER_MAX: usize = 64 * 1024;

/// How long the closing handshake may take before the connection is dropped.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) async fn connect(
    target: &Target,
    config: &ClientConfig,
) -> Result<Session, ConnectError> {
    let (server_id, session_id) = session_ids();
    let path = format!(
        "{}/{}/{}/websocket",
        target.base_path, server_id, session_id
    );
    let url = format!(
        "{}://{}{}",
        if target.secure { "wss" } else { "ws" },
        target.authority,
        path
    );
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::WebSocket(Box::new(e)))?;
    let headers = request.headers_mut();
    let header = |v: &str| {
        http::HeaderValue::from_str(v).map_err(|_| ConnectError::InvalidUrl {
            url: url.clone(),
            reason: "the URL can't be used in an HTTP header",
        })
    };
    headers.insert(http::header::ORIGIN, header(&target.origin())?);
    if let Ok(ua) = http::HeaderValue::from_str(&config.user_agent) {
        headers.insert(http::header::USER_AGENT, ua);
    }
    if let Some(cookie) = config
        .cookies
        .header_value(&target.host, &path, target.secure)
    {
        if let Ok(v) = http::HeaderValue::from_str(&cookie) {
            headers.insert(http::header::COOKIE, v);
        }
    }
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes));

    let handshake = async {
        let stream = connect_stream(target, config.tls.as_ref()).await?;
        let peer = stream.peer_addr();
        let mut stream = AdaptiveRead::new(stream, READ_BUFFER_MAX);
        let release = stream.release_request();
        match tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config)).await {
            Ok((ws, response)) => {
                config
                    .cookies
                    .store_response_headers(&target.host, &path, response.headers());
                Ok((ws, peer, release))
            }
            Err(tungstenite::Error::Http(response)) => {
                config
                    .cookies
                    .store_response_headers(&target.host, &path, response.headers());
                Err(ConnectError::HandshakeStatus {
                    status: response.status(),
                })
            }
            Err(e) => Err(ConnectError::WebSocket(Box::new(e))),
        }
    };
    let (ws, peer, release) = tokio::time::timeout(config.handshake_timeout, handshake)
        .await
        .map_err(|_| ConnectError::Timeout {
            stage: "WebSocket handshake",
            after: config.handshake_timeout,
        })??;

    let info = SessionInfo::new(session_id, Transport::WebSocket, Role::Dialed, peer);
    let (session, side) = Session::pair(info, config.outgoing_queue, config.incoming_queue);
    let inbound = side.deliverer();
    let limits = WriteLimits {
        items: config.websocket_batch.max(1),
        bytes: config.max_batch_bytes,
    };
    tokio::spawn(run(ws, side, inbound, limits, release));
    Ok(session)
}

/// How much one write carries at most.
#[derive(Debug, Clone, Copy)]
struct WriteLimits {
    /// Messages ([`ClientConfig::websocket_batch`]).
    items: usize,
    /// Bytes, softly ([`ClientConfig::max_batch_bytes`]).
    bytes: usize,
}

/// Why the session's I/O stopped.
enum Ended {
    /// The session ends: the connection is closed with a closing handshake.
    Close(String),
    /// The connection is gone (the server vanished without a closing handshake, a reset,
    /// an I/O error, or the handshake is already complete): nothing more is sent on it.
    Lost(String),
}

impl Ended {
    /// After a WebSocket error: lost if the connection is, else closed.
    fn on_error(what: &str, e: &tungstenite::Error) -> Ended {
        match WsFailure::of(e) {
            WsFailure::PeerGone => Ended::Lost(format!("connection lost ({what}): {e}")),
            WsFailure::Violation(..) => Ended::Close(format!("{what}: {e}")),
        }
    }
}

/// The session's I/O: reading and writing run side by side; when either ends, both halves
/// of the session are closed and the connection ends with a WebSocket closing handshake
/// (close frame 1000 sent, the server's close awaited; bounded by [`CLOSE_TIMEOUT`]), so
/// the server sees a clean close whichever side ended first — unless the connection is
/// already gone ([`Ended::Lost`]).
async fn run(
    ws: Ws,
    outbound: TransportSide,
    inbound: Deliverer,
    limits: WriteLimits,
    release: ReleaseRequest,
) {
    let id = outbound.info().id().to_string();
    let (mut sink, mut stream) = ws.split();
    // Messages received and not yet matched by as many sent (see `write_loop`).
    let pending = AtomicUsize::new(0);
    let mut outbound = outbound;
    let ended = tokio::select! {
        ended = read_loop(&mut stream, &inbound, &pending, &release) => ended,
        ended = write_loop(&mut sink, &mut outbound, limits, &pending) => ended,
    };
    // The session ends for its user now, not after the goodbye.
    drop(outbound);
    drop(inbound);
    let (why, handshake) = match ended {
        Ended::Close(why) => (why, true),
        Ended::Lost(why) => (why, false),
    };
    tracing::debug!(session = %id, transport = "websocket", "SockJS client session ended: {why}");
    if handshake {
        if let Ok(ws) = stream.reunite(sink) {
            close_handshake(ws).await;
        }
    }
}

/// Sends a close frame (or completes the one the server started) and waits for the server
/// to finish the handshake, at most [`CLOSE_TIMEOUT`].
async fn close_handshake(mut ws: Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: Default::default(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        // After the server's close frame this flushes the automatic reply (and fails with
        // `ConnectionClosed` once done); otherwise it sends ours.
        if ws.close(Some(frame)).await.is_ok() {
            // Read until the server's close reply ends the stream.
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

async fn read_loop(
    stream: &mut futures_util::stream::SplitStream<Ws>,
    inbound: &Deliverer,
    pending: &AtomicUsize,
    release: &ReleaseRequest,
) -> Ended {
    let close = |why: &str| Ended::Close(why.to_string());
    // A frame's messages in the escaped form (reused).
    let mut split = Vec::new();
    loop {
        let message = tokio::select! {
            m = stream.next() => m,
            _ = inbound.receiver_closed() => return close("the receiver was dropped"),
        };
        let text = match message {
            // The closing handshake is complete and the connection closed.
            None => return Ended::Lost("the server closed the connection".into()),
            Some(Err(e)) => return Ended::on_error("read error", &e),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return Ended::Close(format!("the server sent a WebSocket close frame {frame:?}"))
            }
            Some(Ok(Message::Binary(_))) => {
                return close("protocol error: the server sent a binary frame")
            }
            Some(Ok(_)) => continue, // ping / pong: handled by tungstenite
        };
        // The usual `a[...]` frame: its messages are handed over escaped.
        if let Some(array) = text.as_str().strip_prefix('a') {
            if split_messages(array, &mut split).is_some() {
                for message in split.drain(..) {
                    if inbound
                        .deliver_received(Received::Escaped(message))
                        .await
                        .is_err()
                    {
                        return close("the receiver was dropped");
                    }
                    pending.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
        }
        match decode_server_frame(text.as_str()) {
            Ok(ServerFrame::Open) => {}
            Ok(ServerFrame::Heartbeat) => {
                // Like the server on its heartbeat: a burst's read buffer is given back
                // now rather than over the next small reads (one per heartbeat).
                release.request();
                split = Vec::new();
            }
            Ok(ServerFrame::Messages(messages)) => {
                // One at a time (not all at once): the user's task starts on the first
                // while the rest are delivered, and the count tells the writer at once.
                for message in messages {
                    if inbound.deliver(message).await.is_err() {
                        return close("the receiver was dropped");
                    }
                    pending.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(ServerFrame::Close { code, reason }) => {
                return Ended::Close(format!("the server closed the session: {code} {reason:?}"))
            }
            Ok(ServerFrame::Empty) => return close("the server sent an empty frame"),
            Err(e) => return Ended::Close(format!("protocol error: {e}")),
        }
    }
}

async fn write_loop(
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    outbound: &mut TransportSide,
    limits: WriteLimits,
    pending: &AtomicUsize,
) -> Ended {
    let mut batch = Vec::with_capacity(16);
    let mut frames = Vec::with_capacity(1);
    // Where frames are encoded; kept while batches hold several messages.
    let mut buf = bytes::BytesMut::new();
    loop {
        let more = outbound.next_batch(&mut batch, limits.items).await;
        // The callers answered by the responses received together send their next calls a
        // moment apart: while more responses arrived than calls are queued, let them run
        // once so their calls share this write.
        let received = pending.load(Ordering::Relaxed);
        if more && received > batch.len() {
            tokio::task::yield_now().await;
            outbound.try_batch(&mut batch, limits.items);
        }
        let sent = batch.len();
        let _ = pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
            Some(p.saturating_sub(sent))
        });
        let close =
            !more || encode_frames(&mut batch, b"", &mut buf, &mut frames, limits.bytes).is_some();
        for frame in frames.drain(..) {
            if let Err(e) = sink.feed(Message::Text(frame)).await {
                return Ended::on_error("write error", &e);
            }
        }
        if let Err(e) = sink.flush().await {
            return Ended::on_error("write error", &e);
        }
        if sent <= 1 {
            // Not busy: don't hold the frame buffer.
            buf = bytes::BytesMut::new();
        }
        if close {
            // `run` says goodbye with the closing handshake.
            return Ended::Close(if more {
                "closed by the user".into()
            } else {
                "every sender was dropped".into()
            });
        }
    }
}
