//! A peer that vanishes without the WebSocket closing handshake (its TCP connection closed
//! or reset) ends the session quietly — logged at debug level, no close frame written to the
//! dead socket — on the server and on the client; input that breaks the protocol still
//! fails the connection with its close code and a warning.
#![allow(clippy::unwrap_used)]

#[path = "server_support.rs"]
mod support;
mod trace_support;

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use kite_sockjs::client::{connect, ClientConfig, ClientTransport};
use kite_sockjs::server::ServerConfig;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trace_support::Capture;

/// A client frame (masked, as clients must) with `opcode` and `payload`.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = unmasked(opcode, payload);
    // Set the mask bit and insert the key before the payload.
    let header = frame.len() - payload.len();
    frame[1] |= 0x80;
    let key = [0x37, 0xfa, 0x21, 0x3d];
    frame.truncate(header);
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// A frame without a mask (what only servers may send).
fn unmasked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= 0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// The next frame from the server (opcode, payload); `None` at the end of the stream.
async fn read_frame(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    tokio::time::timeout(DEADLINE, tcp.read_exact(&mut head))
        .await
        .expect("no frame within the deadline")
        .ok()?;
    assert_eq!(head[1] & 0x80, 0, "the server masked a frame");
    let len = match head[1] & 0x7f {
        126 => {
            let mut n = [0u8; 2];
            tcp.read_exact(&mut n).await.ok()?;
            usize::from(u16::from_be_bytes(n))
        }
        127 => {
            let mut n = [0u8; 8];
            tcp.read_exact(&mut n).await.ok()?;
            usize::try_from(u64::from_be_bytes(n)).unwrap()
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((head[0] & 0x0f, payload))
}

/// A raw TCP client through the WebSocket handshake of a SockJS session, after its `o`.
async fn raw_websocket(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /echo/000/{}/websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        sid()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    assert_eq!(read_frame(&mut tcp).await, Some((1, b"o".to_vec())));
    tcp
}

/// How the peer goes away.
#[derive(Debug, Clone, Copy)]
enum Vanish {
    /// TCP FIN after complete frames.
    Close,
    /// TCP FIN in the middle of a frame.
    CloseMidFrame,
    /// TCP RST.
    Reset,
}

async fn server_session_ends_quietly(vanish: Vanish) {
    let (logged, _guard) = Capture::start();
    let (on_session, mut sessions) = capture();
    let addr = start(config(), on_session).await;
    let mut tcp = raw_websocket(addr).await;
    let (tx, mut rx) = next_session(&mut sessions).await.split();
    tcp.write_all(&masked(1, b"[\"hi\"]")).await.unwrap();
    assert_eq!(rx.recv().await.as_deref(), Some("hi"));
    match vanish {
        Vanish::Close => {}
        Vanish::CloseMidFrame => {
            let frame = masked(1, b"[\"never finished\"]");
            tcp.write_all(&frame[..frame.len() / 2]).await.unwrap();
        }
        Vanish::Reset => tcp.set_zero_linger().unwrap(),
    }
    drop(tcp);
    // The session ends for the user: the receiver ends, the senders see it closed.
    assert_eq!(
        tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap(),
        None
    );
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();
    assert_eq!(logged.warnings().len(), 0, "{:#?}", logged.warnings());
    let gone = logged.with_message("WebSocket peer went away");
    assert_eq!(gone.len(), 1, "{vanish:?}: {:#?}", logged.events());
    assert_eq!(gone[0].level, tracing::Level::DEBUG);
}

#[tokio::test]
async fn server_peer_closing_tcp_without_close_frame_is_not_a_warning() {
    server_session_ends_quietly(Vanish::Close).await;
}

#[tokio::test]
async fn server_peer_closing_tcp_mid_frame_is_not_a_warning() {
    server_session_ends_quietly(Vanish::CloseMidFrame).await;
}

#[tokio::test]
async fn server_peer_resetting_tcp_is_not_a_warning() {
    server_session_ends_quietly(Vanish::Reset).await;
}

/// The close frame (code, reason) the server fails the connection with after `bad`.
async fn server_answer_to(config: ServerConfig, bad: &[u8]) -> (u16, String) {
    let (logged, _guard) = Capture::start();
    let (on_session, mut sessions) = capture();
    let addr = start(config, on_session).await;
    let mut tcp = raw_websocket(addr).await;
    let (_tx, mut rx) = next_session(&mut sessions).await.split();
    tcp.write_all(bad).await.unwrap();
    let close = match read_frame(&mut tcp).await {
        Some((8, payload)) => payload,
        Some((opcode, payload)) => panic!("frame {opcode} {payload:?} instead of the close"),
        None => panic!("the connection ended without a close frame"),
    };
    assert!(close.len() >= 2, "{close:?}");
    assert_eq!(
        tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap(),
        None
    );
    let code = u16::from_be_bytes([close[0], close[1]]);
    let warnings = logged.with_message("bad WebSocket input");
    assert_eq!(warnings.len(), 1, "{:#?}", logged.events());
    assert_eq!(warnings[0].level, tracing::Level::WARN);
    assert_eq!(warnings[0].field("code"), Some(code.to_string().as_str()));
    (code, String::from_utf8(close[2..].to_vec()).unwrap())
}

#[tokio::test]
async fn server_protocol_violations_still_fail_with_their_close_codes() {
    // An unmasked frame from a client.
    assert_eq!(
        server_answer_to(config(), &unmasked(1, b"[\"x\"]")).await,
        (1002, "Protocol error.".into())
    );
    // Reserved bits set.
    let mut frame = masked(1, b"[\"x\"]");
    frame[0] |= 0x40;
    assert_eq!(
        server_answer_to(config(), &frame).await,
        (1002, "Protocol error.".into())
    );
    // A text frame that is not UTF-8.
    assert_eq!(
        server_answer_to(config(), &masked(1, b"[\"\xff\xfe\"]")).await,
        (1007, "Invalid UTF-8.".into())
    );
    // Larger than `max_message_bytes`.
    let small = ServerConfig {
        max_message_bytes: 1024,
        ..config()
    };
    let big = format!("[\"{}\"]", "x".repeat(2000));
    assert_eq!(
        server_answer_to(small, &masked(1, big.as_bytes())).await,
        (1009, "Message too big.".into())
    );
}

/// A WebSocket server that opens a SockJS session, sends `a["hi"]`, waits for one message
/// and then vanishes; returns what the client sent after that (nothing, if the client
/// writes no close frame to a connection whose peer is gone).
async fn vanishing_server(listener: TcpListener, reset: bool) -> Vec<u8> {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    ws.send(Message::text("o")).await.unwrap();
    ws.send(Message::text("a[\"hi\"]")).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "[\"ping\"]"),
        other => panic!("expected the client's message, got {other:?}"),
    }
    let mut tcp = ws.into_inner();
    if reset {
        tcp.set_zero_linger().unwrap();
        return Vec::new();
    }
    // Half-close: the client sees the end of the stream, and we see what it still sends.
    tcp.shutdown().await.unwrap();
    let mut after = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut after))
        .await
        .expect("the client kept the connection open")
        .unwrap();
    after
}

async fn client_session_ends_quietly(reset: bool) {
    let (logged, _guard) = Capture::start();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(vanishing_server(listener, reset));
    let config = ClientConfig {
        transport: ClientTransport::WebSocket,
        ..ClientConfig::default()
    };
    let session = connect(&format!("http://{addr}/kite"), &config)
        .await
        .unwrap();
    let (tx, mut rx) = session.split();
    tx.send("ping".into()).await.unwrap();
    for expected in [Some("hi"), None] {
        let got = tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap();
        assert_eq!(got.as_deref(), expected);
    }
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();
    let after = server.await.unwrap();
    assert!(
        after.is_empty(),
        "the client wrote {after:?} to a vanished server"
    );
    assert_eq!(logged.warnings().len(), 0, "{:#?}", logged.warnings());
    let ended = logged.with_message("SockJS client session ended: connection lost");
    assert_eq!(ended.len(), 1, "{:#?}", logged.events());
    assert_eq!(ended[0].level, tracing::Level::DEBUG);
}

#[tokio::test]
async fn client_server_closing_tcp_without_close_frame_is_not_a_warning() {
    client_session_ends_quietly(false).await;
}

#[tokio::test]
async fn client_server_resetting_tcp_is_not_a_warning() {
    client_session_ends_quietly(true).await;
}
