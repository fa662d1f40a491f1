//! SockJS XHR polling, dialed like Go's kite client: `POST .../xhr` receives (one frame
//! per response), `POST .../xhr_send` sends.
//!
//! Receiving and sending each use their own keep-alive HTTP/1.1 connection ("lane"), so a
//! pending poll never delays a send. A lane reconnects when the server closes its
//! connection, and retries a request once when it could not even be written on a reused
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use kite_protocol::sockjs::{decode_server_frame, ServerFrame};
use tokio::task::AbortHandle;

use super::net::{connect_stream, Target};
use super::{session_ids, ClientConfig, ConnectError, MAX_BATCH_ITEMS};
use crate::frames::encode_frames;
use crate::session::{Deliverer, Role, Session, SessionInfo, Transport, TransportSide};

/// Settings shared by both lanes of one session.
struct Shared {
    target: Target,
    config: ClientConfig,
}

/// One keep-alive HTTP/1.1 connection, reopened on demand.
struct Lane {
    shared: Arc<Shared>,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
    conn_task: Option<AbortHandle>,
    peer: Option<SocketAddr>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.reset();
    }
}

impl Lane {
    fn new(shared: Arc<Shared>) -> Self {
        Lane {
            shared,
            sender: None,
            conn_task: None,
            peer: None,
        }
    }

    /// Drops the connection (aborting any request in flight on it).
    fn reset(&mut self) {
        self.sender = None;
        if let Some(task) = self.conn_task.take() {
            task.abort();
        }
    }

    async fn open(&mut self) -> Result<(), ConnectError> {
        self.reset();
        let stream = connect_stream(&self.shared.target, self.shared.config.tls.as_ref()).await?;
        self.peer = stream.peer_addr();
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(64 * 1024)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Http(Box::new(e)))?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!("SockJS XHR connection ended: {e}");
            }
        });
        self.conn_task = Some(task.abort_handle());
        self.sender = Some(sender);
        Ok(())
    }

    fn request(&self, path: &str, body: Bytes) -> Result<Request<Full<Bytes>>, ConnectError> {
        let shared = &self.shared;
        let mut builder = Request::post(path)
            .header(header::HOST, &shared.target.authority)
            .header(header::CONTENT_TYPE, "text/plain")
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::USER_AGENT, &shared.config.user_agent);
        if let Some(cookie) =
            shared
                .config
                .cookies
                .header_value(&shared.target.host, path, shared.target.secure)
        {
            builder = builder.header(header::COOKIE, cookie);
        }
        builder
            .body(Full::new(body))
            .map_err(|e| ConnectError::Http(Box::new(e)))
    }

    /// POSTs `body` to `path`, returning the response head (cookies already stored).
    async fn post(&mut self, path: &str, body: Bytes) -> Result<Response<Incoming>, ConnectError> {
        let mut request = self.request(path, body)?;
        loop {
            let reused = match &self.sender {
                Some(s) if !s.is_closed() => true,
                _ => {
                    self.open().await?;
                    false
                }
            };
            let Some(sender) = self.sender.as_mut() else {
                continue;
            };
            if let Err(e) = sender.ready().await {
                self.reset();
                if reused {
                    continue;
                }
                return Err(ConnectError::Http(Box::new(e)));
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let shared = &self.shared;
                    shared.config.cookies.store_response_headers(
                        &shared.target.host,
                        path,
                        response.headers(),
                    );
                    return Ok(response);
                }
                Err(mut e) => {
                    self.reset();
                    match e.take_message() {
                        // Never written: safe to retry once on a fresh connection.
                        Some(unsent) if reused => request = unsent,
                        _ => return Err(ConnectError::Http(Box::new(e.into_error()))),
                    }
                }
            }
        }
    }

    /// Reads a whole response body, bounded by `max_message_bytes`.
    async fn body(&self, response: Response<Incoming>) -> Result<Bytes, ConnectError> {
        let limit = self.shared.config.max_message_bytes;
        match Limited::new(response.into_body(), limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(ConnectError::TooLarge { limit })
            }
            Err(e) => Err(ConnectError::Http(e)),
        }
    }
}

pub(super) async fn connect(
    target: &Target,
    config: &ClientConfig,
) -> Result<Session, ConnectError> {
    let (server_id, session_id) = session_ids();
    let base = format!("{}/{}/{}", target.base_path, server_id, session_id);
    let shared = Arc::new(Shared {
        target: target.clone(),
        config: config.clone(),
    });
    let paths = Arc::new(Paths {
        xhr: format!("{base}/xhr"),
        xhr_send: format!("{base}/xhr_send"),
    });
    let mut poll_lane = Lane::new(shared.clone());
    let open = async {
        let response = poll_lane.post(&paths.xhr, Bytes::new()).await?;
        if response.status() != StatusCode::OK {
            return Err(ConnectError::XhrStatus {
                status: response.status(),
            });
        }
        poll_lane.body(response).await
    };
    let body = tokio::time::timeout(config.handshake_timeout, open)
        .await
        .map_err(|_| ConnectError::Timeout {
            stage: "XHR polling open",
            after: config.handshake_timeout,
        })??;
    if body.first() != Some(&b'o') {
        let shown = String::from_utf8_lossy(&body[..body.len().min(64)]).into_owned();
        return Err(ConnectError::XhrOpen(shown));
    }
    // Anything after "o\n" in the same body (not sent by known servers) is delivered first.
    let rest = body.slice(1..);

    let info = SessionInfo::new(
        session_id,
        Transport::XhrPolling,
        Role::Dialed,
        poll_lane.peer,
    );
    let (session, side) = Session::pair(info, config.outgoing_queue, config.incoming_queue);
    let inbound = side.deliverer();
    let send_lane = Lane::new(shared);
    tokio::spawn(run(paths, poll_lane, send_lane, side, inbound, rest));
    Ok(session)
}

struct Paths {
    xhr: String,
    xhr_send: String,
}

async fn run(
    paths: Arc<Paths>,
    poll_lane: Lane,
    send_lane: Lane,
    outbound: TransportSide,
    inbound: Deliverer,
    first: Bytes,
) {
    let id = outbound.info().id().to_string();
    let why = tokio::select! {
        why = poll_loop(&paths.xhr, poll_lane, &inbound, first) => why,
        why = send_loop(&paths.xhr_send, send_lane, outbound) => why,
    };
    tracing::debug!(session = %id, transport = "xhr-polling", "SockJS client session ended: {why}");
}

/// What a poll body said.
enum Polled {
    /// Keep polling.
    Continue,
    /// The session is over, for this reason.
    Ended(String),
}

/// Delivers the frames of one poll body (normally exactly one frame and `\n`).
async fn handle_body(body: &[u8], inbound: &Deliverer) -> Polled {
    let Ok(text) = std::str::from_utf8(body) else {
        return Polled::Ended("protocol error: poll response is not UTF-8".into());
    };
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        match decode_server_frame(line) {
            Ok(ServerFrame::Open) | Ok(ServerFrame::Heartbeat) | Ok(ServerFrame::Empty) => {}
            Ok(ServerFrame::Messages(messages)) => {
                for message in messages {
                    if inbound.deliver(message).await.is_err() {
                        return Polled::Ended("the receiver was dropped".into());
                    }
                }
            }
            Ok(ServerFrame::Close { code, reason }) => {
                return Polled::Ended(format!("the server closed the session: {code} {reason:?}"))
            }
            Err(e) => return Polled::Ended(format!("protocol error: {e}")),
        }
    }
    Polled::Continue
}

async fn poll_loop(path: &str, mut lane: Lane, inbound: &Deliverer, first: Bytes) -> String {
    if let Polled::Ended(why) = handle_body(&first, inbound).await {
        return why;
    }
    let poll_timeout = lane.shared.config.poll_timeout;
    loop {
        let poll = async {
            let response = lane.post(path, Bytes::new()).await?;
            let status = response.status();
            let body = lane.body(response).await?;
            Ok::<_, ConnectError>((status, body))
        };
        let answer = tokio::select! {
            answer = tokio::time::timeout(poll_timeout, poll) => answer,
            _ = inbound.receiver_closed() => return "the receiver was dropped".into(),
        };
        let (status, body) = match answer {
            Err(_) => {
                // No answer in time: drop that request and poll again (what Go does).
                lane.reset();
                continue;
            }
            Ok(Err(e)) => return format!("poll failed: {e}"),
            Ok(Ok(answer)) => answer,
        };
        match status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return "the session is gone (poll answered 404)".into(),
            other => return format!("poll answered HTTP status {other}"),
        }
        if body.is_empty() {
            return "the server ended the poll with an empty body".into();
        }
        if let Polled::Ended(why) = handle_body(&body, inbound).await {
            return why;
        }
    }
}

async fn send_loop(path: &str, mut lane: Lane, mut outbound: TransportSide) -> String {
    let max_batch_bytes = lane.shared.config.max_batch_bytes;
    let send_timeout = lane.shared.config.poll_timeout;
    let mut batch = Vec::with_capacity(16);
    let mut frames = Vec::with_capacity(1);
    let mut buf = bytes::BytesMut::new();
    loop {
        if !outbound.next_batch(&mut batch, MAX_BATCH_ITEMS).await {
            return "every sender was dropped".into();
        }
        let close =
            encode_frames(&mut batch, b"", &mut buf, &mut frames, max_batch_bytes).is_some();
        for frame in frames.drain(..) {
            let send = async {
                let response = lane.post(path, Bytes::from(frame)).await?;
                let status = response.status();
                // Drain the (empty) body so the connection can be reused.
                lane.body(response).await?;
                Ok::<_, ConnectError>(status)
            };
            match tokio::time::timeout(send_timeout, send).await {
                Err(_) => return format!("xhr_send got no answer within {send_timeout:?}"),
                Ok(Err(e)) => return format!("xhr_send failed: {e}"),
                Ok(Ok(StatusCode::OK | StatusCode::NO_CONTENT)) => {}
                Ok(Ok(StatusCode::NOT_FOUND)) => {
                    return "the session is gone (xhr_send answered 404)".into()
                }
                Ok(Ok(other)) => return format!("xhr_send answered HTTP status {other}"),
            }
        }
        if close {
            return "closed by the user".into();
        }
    }
}
