//! Helpers shared by the server tests (included with `#[path]`): a server on a free port,
//! a raw HTTP/1.1 client over TCP, and a WebSocket client.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use kite_sockjs::server::{router, ServerConfig};
use kite_sockjs::Session;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Generous bound for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Starts a server with one SockJS router on 127.0.0.1 and returns its address.
pub async fn start<F>(config: ServerConfig, on_session: F) -> SocketAddr
where
    F: Fn(Session) + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(config, on_session);
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// The default config with the `/echo` prefix.
pub fn config() -> ServerConfig {
    ServerConfig {
        prefix: "/echo".into(),
        ..ServerConfig::default()
    }
}

/// An `on_session` that echoes every message.
pub fn echo(session: Session) {
    tokio::spawn(async move {
        let (tx, mut rx) = session.split();
        while let Some(m) = rx.recv().await {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });
}

/// An `on_session` that hands every session to the test.
pub fn capture() -> (
    impl Fn(Session) + Send + Sync + 'static,
    mpsc::UnboundedReceiver<Session>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        move |s: Session| {
            let _ = tx.send(s);
        },
        rx,
    )
}

pub async fn next_session(rx: &mut mpsc::UnboundedReceiver<Session>) -> Session {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("no session within the deadline")
        .expect("session channel closed")
}

/// A fresh random session id.
pub fn sid() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub use kite_testkit::http::RawResponse as Resp;

fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" || !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A streaming HTTP response being read chunk by chunk.
pub struct Streaming {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
}

impl Streaming {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next chunk of a chunked body; `None` at its end.
    pub async fn chunk(&mut self) -> Option<String> {
        tokio::time::timeout(DEADLINE, self.chunk_inner())
            .await
            .expect("no chunk within the deadline")
    }

    async fn chunk_inner(&mut self) -> Option<String> {
        assert!(self.chunked, "not a chunked response");
        let mut line = String::new();
        if self.reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let len = usize::from_str_radix(line.trim(), 16).unwrap();
        let mut data = vec![0u8; len + 2];
        self.reader.read_exact(&mut data).await.ok()?;
        data.truncate(len);
        if len == 0 {
            return None;
        }
        Some(String::from_utf8(data).unwrap())
    }

    /// Drops the connection (a client aborting the request).
    pub fn abort(self) {}
}

async fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    (status, headers)
}

/// Sends a request and returns the response head; the body is read with `chunk`.
pub async fn stream(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Streaming {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&request_bytes(addr, method, path, headers, b""))
        .await
        .unwrap();
    let mut reader = BufReader::new(tcp);
    let (status, headers) = tokio::time::timeout(DEADLINE, read_head(&mut reader))
        .await
        .expect("no response head");
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    Streaming {
        status,
        headers,
        reader,
        chunked,
    }
}

/// One request on its own connection; reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    kite_testkit::http::request(addr, method, path, headers, body).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"").await
}

pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Resp {
    request(addr, "POST", path, &[], body.as_bytes()).await
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
pub use tokio_tungstenite::tungstenite::Message;

pub async fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
    )
    .await
    .expect("WebSocket connect timed out")
    .expect("WebSocket connect failed");
    ws
}

/// The next message (any kind), or `None` once the connection has ended.
pub async fn ws_next(ws: &mut Ws) -> Option<Message> {
    use futures_util::StreamExt;
    match tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("no WebSocket message within the deadline")
    {
        Some(Ok(m)) => Some(m),
        _ => None,
    }
}

/// The next text message; panics on anything else.
pub async fn ws_text(ws: &mut Ws) -> String {
    match ws_next(ws).await {
        Some(Message::Text(t)) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

pub async fn ws_send(ws: &mut Ws, text: &str) {
    use futures_util::SinkExt;
    ws.send(Message::text(text)).await.unwrap();
}

/// Waits for the close frame (returning its code and reason) and the end of the stream.
pub async fn ws_closed(ws: &mut Ws) -> Option<(u16, String)> {
    let mut close = None;
    while let Some(m) = ws_next(ws).await {
        match m {
            Message::Close(Some(f)) => close = Some((u16::from(f.code), f.reason.to_string())),
            Message::Close(None) => close = Some((1005, String::new())),
            Message::Text(t) => panic!("unexpected text {t:?} while waiting for close"),
            _ => {}
        }
    }
    close
}
