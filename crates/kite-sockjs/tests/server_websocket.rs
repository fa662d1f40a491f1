//! SockJS-framed and raw WebSocket sessions over real sockets.

#[path = "server_support.rs"]
mod support;

use std::time::Duration;

use futures_util::SinkExt;
use kite_sockjs::server::ServerConfig;
use kite_sockjs::{Role, Session, Transport};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ws_path(id: &str) -> String {
    format!("/echo/000/{id}/websocket")
}

#[tokio::test]
async fn sockjs_websocket_echo_and_lenient_frames() {
    let addr = start(config(), echo).await;
    let mut ws = ws_connect(addr, &ws_path(&sid())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    ws_send(&mut ws, "").await;
    ws_send(&mut ws, "[]").await;
    ws_send(&mut ws, "  [\"a\"]  ").await;
    assert_eq!(ws_text(&mut ws).await, "a[\"a\"]");
    // A single JSON string is accepted too (Q29).
    ws_send(&mut ws, "\"single\"").await;
    assert_eq!(ws_text(&mut ws).await, "a[\"single\"]");
    ws_send(&mut ws, "[\"x\",\"y\"]").await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let frame = ws_text(&mut ws).await;
        let msgs: Vec<String> = serde_json::from_str(frame.strip_prefix('a').unwrap()).unwrap();
        got.extend(msgs);
    }
    assert_eq!(got, ["x", "y"]);
}

#[tokio::test]
async fn session_facts_and_batching() {
    let (on_session, mut sessions) = capture();
    let addr = start(config(), on_session).await;
    let id = sid();
    let mut ws = ws_connect(addr, &ws_path(&id)).await;
    let session = next_session(&mut sessions).await;
    assert_eq!(session.info().id(), id);
    assert_eq!(session.info().transport(), Transport::WebSocket);
    assert_eq!(session.info().role(), Role::Accepted);
    assert!(session.info().remote_addr().is_some());
    let (tx, mut rx) = session.split();
    assert_eq!(ws_text(&mut ws).await, "o");
    tx.try_send("{\"m\":3}".into()).unwrap();
    assert_eq!(ws_text(&mut ws).await, "a[\"{\\\"m\\\":3}\"]");
    ws_send(&mut ws, "[\"in\"]").await;
    assert_eq!(rx.recv().await.as_deref(), Some("in"));
    // The peer goes away: the user's receiver ends and senders see the session closed.
    drop(ws);
    assert_eq!(
        tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap(),
        None
    );
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();
}

/// A server (with `config`) whose every session has `messages` queued before it opens,
/// and stays open; returns a connected WebSocket past the `o` frame.
async fn queued_before_open(config: ServerConfig, messages: &'static [&'static str]) -> Ws {
    let addr = start(config, move |session: Session| {
        let (tx, rx) = session.split();
        for m in messages {
            tx.try_send((*m).into()).expect("room in the queue");
        }
        tokio::spawn(async move {
            let _keep = (tx, rx);
            std::future::pending::<()>().await;
        });
    })
    .await;
    let mut ws = ws_connect(addr, &ws_path(&sid())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    ws
}

#[tokio::test]
async fn batching_is_deterministic_when_queued_before_open() {
    let mut ws = queued_before_open(config(), &["1", "2", "3"]).await;
    assert_eq!(ws_text(&mut ws).await, "a[\"1\",\"2\",\"3\"]");
}

/// A burst larger than `websocket_batch` goes out as several frames, in order.
#[tokio::test]
async fn a_burst_is_split_into_frames_of_websocket_batch_messages() {
    let config = ServerConfig {
        websocket_batch: 2,
        ..config()
    };
    let mut ws = queued_before_open(config, &["1", "2", "3", "4", "5"]).await;
    assert_eq!(ws_text(&mut ws).await, "a[\"1\",\"2\"]");
    assert_eq!(ws_text(&mut ws).await, "a[\"3\",\"4\"]");
    assert_eq!(ws_text(&mut ws).await, "a[\"5\"]");
}

#[tokio::test]
async fn user_close_sends_go_away() {
    let addr = start(config(), |session: Session| {
        tokio::spawn(async move {
            let (tx, _rx) = session.split();
            let _ = tx.close(3000, "Go away!").await;
        });
    })
    .await;
    let mut ws = ws_connect(addr, &ws_path(&sid())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    assert_eq!(ws_text(&mut ws).await, "c[3000,\"Go away!\"]");
    assert_eq!(ws_closed(&mut ws).await, Some((3000, "Go away!".into())));
}

#[tokio::test]
async fn dropping_every_sender_closes_with_go_away() {
    let (on_session, mut sessions) = capture();
    let addr = start(config(), on_session).await;
    let mut ws = ws_connect(addr, &ws_path(&sid())).await;
    let (tx, _rx) = next_session(&mut sessions).await.split();
    assert_eq!(ws_text(&mut ws).await, "o");
    tx.send("last".into()).await.unwrap();
    drop(tx);
    assert_eq!(ws_text(&mut ws).await, "a[\"last\"]");
    assert_eq!(ws_text(&mut ws).await, "c[3000,\"Go away!\"]");
    ws_closed(&mut ws).await;
}

#[tokio::test]
async fn heartbeats() {
    let addr = start(
        ServerConfig {
            heartbeat_interval: Duration::from_millis(50),
            ..config()
        },
        echo,
    )
    .await;
    let mut ws = ws_connect(addr, &ws_path(&sid())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    assert_eq!(ws_text(&mut ws).await, "h");
    assert_eq!(ws_text(&mut ws).await, "h");
    // Raw WebSocket: pings.
    let mut raw = ws_connect(addr, "/echo/websocket").await;
    let mut pings = 0;
    while pings < 2 {
        match ws_next(&mut raw).await {
            Some(Message::Ping(_)) => pings += 1,
            other => panic!("expected a ping, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn malformed_frames_close_the_session() {
    for bad in ["[\"a", "{}", "[1]", "5", "nope", "[[\"a\"]]"] {
        let (on_session, mut sessions) = capture();
        let addr = start(config(), on_session).await;
        let mut ws = ws_connect(addr, &ws_path(&sid())).await;
        let (_tx, mut rx) = next_session(&mut sessions).await.split();
        assert_eq!(ws_text(&mut ws).await, "o");
        ws_send(&mut ws, "[\"before\"]").await;
        ws_send(&mut ws, bad).await;
        assert_eq!(rx.recv().await.as_deref(), Some("before"));
        assert_eq!(
            ws_closed(&mut ws).await,
            Some((1007, "Broken framing.".into())),
            "{bad}"
        );
        assert_eq!(
            tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap(),
            None
        );
    }
}

#[tokio::test]
async fn oversized_and_binary_messages() {
    let addr = start(
        ServerConfig {
            max_message_bytes: 1024,
            ..config()
        },
        echo,
    )
    .await;
    let mut ws = ws_connect(addr, &ws_path(&sid())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    ws_send(&mut ws, &format!("[\"{}\"]", "x".repeat(2000))).await;
    let (code, _) = ws_closed(&mut ws).await.unwrap();
    assert_eq!(code, 1009);

    let mut ws = ws_connect(addr, &ws_path(&sid())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    ws.send(Message::binary(vec![0xff, 0x00])).await.unwrap();
    assert_eq!(ws_closed(&mut ws).await.unwrap().0, 1003);
    // Binary that is valid UTF-8 is taken as text.
    let mut ws = ws_connect(addr, &ws_path(&sid())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    ws.send(Message::binary(b"[\"bin\"]".to_vec()))
        .await
        .unwrap();
    assert_eq!(ws_text(&mut ws).await, "a[\"bin\"]");
}

#[tokio::test]
async fn reused_session_ids_are_independent() {
    let addr = start(config(), echo).await;
    let path = ws_path(&sid());
    let mut a = ws_connect(addr, &path).await;
    let mut b = ws_connect(addr, &path).await;
    assert_eq!(ws_text(&mut a).await, "o");
    assert_eq!(ws_text(&mut b).await, "o");
    ws_send(&mut a, "[\"a\"]").await;
    ws_send(&mut b, "[\"b\"]").await;
    assert_eq!(ws_text(&mut a).await, "a[\"a\"]");
    assert_eq!(ws_text(&mut b).await, "a[\"b\"]");
}

#[tokio::test]
async fn handshake_errors() {
    let addr = start(config(), echo).await;
    let r = get(addr, &ws_path("x")).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "Can \"Upgrade\" only to \"WebSocket\".")
    );
    let r = request(
        addr,
        "GET",
        &ws_path("x"),
        &[("Upgrade", "WebSocket"), ("Connection", "close")],
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    let r = request(
        addr,
        "GET",
        &ws_path("x"),
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "12"),
            ("Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw=="),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    // WebSocket disabled: 404, and /info says so.
    let addr = start(
        ServerConfig {
            websocket: false,
            raw_websocket: false,
            ..config()
        },
        echo,
    )
    .await;
    assert_eq!(get(addr, &ws_path("x")).await.status, 404);
    assert_eq!(get(addr, "/echo/websocket").await.status, 404);
    let info: serde_json::Value =
        serde_json::from_slice(&get(addr, "/echo/info").await.body).unwrap();
    assert_eq!(info["websocket"], false);
}

#[tokio::test]
async fn raw_websocket_echo_close_and_bare_prefix() {
    let (on_session, mut sessions) = capture();
    let addr = start(config(), on_session).await;
    for path in ["/echo/websocket", "/echo"] {
        let mut ws = ws_connect(addr, path).await;
        let session = next_session(&mut sessions).await;
        assert_eq!(session.info().transport(), Transport::RawWebSocket);
        assert_eq!(session.info().id().len(), 20);
        let (tx, mut rx) = session.split();
        ws_send(&mut ws, "{\"method\":\"x\"}").await;
        assert_eq!(rx.recv().await.as_deref(), Some("{\"method\":\"x\"}"));
        tx.try_send("one\u{ffff}".into()).unwrap();
        tx.try_send("two".into()).unwrap();
        assert_eq!(ws_text(&mut ws).await, "one\u{ffff}");
        assert_eq!(ws_text(&mut ws).await, "two");
        tx.close(3000, "Go away!").await.unwrap();
        assert_eq!(ws_closed(&mut ws).await, Some((3000, "Go away!".into())));
        assert_eq!(rx.recv().await, None);
    }
}

#[tokio::test]
async fn slow_consumer_stops_reading_but_writes_go_on() {
    let (on_session, mut sessions) = capture();
    let addr = start(
        ServerConfig {
            incoming_queue: 1,
            ..config()
        },
        on_session,
    )
    .await;
    let mut ws = ws_connect(addr, &ws_path(&sid())).await;
    let (tx, mut rx) = next_session(&mut sessions).await.split();
    assert_eq!(ws_text(&mut ws).await, "o");
    for i in 0..5 {
        ws_send(&mut ws, &format!("[\"{i}\"]")).await;
    }
    // The incoming queue is full; outgoing messages still flow.
    tx.send("out".into()).await.unwrap();
    assert_eq!(ws_text(&mut ws).await, "a[\"out\"]");
    for i in 0..5 {
        assert_eq!(rx.recv().await, Some(i.to_string()));
    }
}

#[tokio::test]
async fn peer_that_stops_reading_is_dropped() {
    let (on_session, mut sessions) = capture();
    let addr = start(
        ServerConfig {
            write_timeout: Duration::from_millis(300),
            outgoing_queue: 4,
            ..config()
        },
        on_session,
    )
    .await;
    // A raw TCP client that completes the handshake and then never reads.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\r\n",
        ws_path(&sid())
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let (tx, _rx) = next_session(&mut sessions).await.split();
    let big = "x".repeat(256 * 1024);
    // Sends block (bounded queue) and then fail once the server gives up on the peer.
    let flood = async {
        loop {
            if tx.send(big.clone()).await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .expect("the session was never closed");
    drop(tcp);
}

#[tokio::test]
async fn session_limit_refuses_websockets() {
    let addr = start(
        ServerConfig {
            max_sessions: 1,
            ..config()
        },
        echo,
    )
    .await;
    let mut ws = ws_connect(addr, &ws_path(&sid())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    let second = tokio_tungstenite::connect_async(format!("ws://{addr}{}", ws_path(&sid()))).await;
    assert!(second.is_err());
    // The slot is freed when the first one ends.
    drop(ws);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok((mut ws, _)) =
            tokio_tungstenite::connect_async(format!("ws://{addr}{}", ws_path(&sid()))).await
        {
            assert_eq!(ws_text(&mut ws).await, "o");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn hixie76_handshake_and_frames() {
    let addr = start(config(), echo).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let path = ws_path(&sid());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\
         Origin: http://{addr}\r\nSec-WebSocket-Key1: 4 @1  46546xW%0l 1 5\r\n\
         Sec-WebSocket-Key2: 12998 5 Y3 1  .P00\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    // Headers come before the key3 nonce is sent.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains(&format!("sec-websocket-location: ws://{addr}{path}").to_ascii_lowercase())
    );
    tcp.write_all(b"^n:ds[4U").await.unwrap();
    let mut answer = [0u8; 16];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"8jKS'y:G*Co,Wxa-");
    let mut open = [0u8; 3];
    tcp.read_exact(&mut open).await.unwrap();
    assert_eq!(&open, b"\x00o\xff");
    tcp.write_all(b"\x00[\"hi\"]\xff").await.unwrap();
    let mut frame = [0u8; 9];
    tcp.read_exact(&mut frame).await.unwrap();
    assert_eq!(&frame, b"\x00a[\"hi\"]\xff");
}

#[tokio::test]
async fn dropping_the_receiver_flushes_then_closes() {
    let addr = start(config(), |session: Session| {
        let (tx, rx) = session.split();
        tx.try_send("queued".into()).unwrap();
        drop(rx);
        tokio::spawn(async move {
            tx.closed().await;
        });
    })
    .await;
    let mut ws = ws_connect(addr, &ws_path(&sid())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    assert_eq!(ws_text(&mut ws).await, "a[\"queued\"]");
    assert_eq!(ws_text(&mut ws).await, "c[3000,\"Go away!\"]");
    ws_closed(&mut ws).await;
}

#[tokio::test]
async fn large_messages_cross_the_small_read_buffer() {
    let addr = start(config(), echo).await;
    let mut ws = ws_connect(addr, &ws_path(&sid())).await;
    assert_eq!(ws_text(&mut ws).await, "o");
    let big: String = (0..1_000_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let started = std::time::Instant::now();
    ws_send(&mut ws, &format!("[\"{big}\"]")).await;
    let frame = ws_text(&mut ws).await;
    let msgs: Vec<String> = serde_json::from_str(frame.strip_prefix('a').unwrap()).unwrap();
    assert_eq!(msgs, [big]);
    println!("1 MB echo over SockJS WebSocket: {:?}", started.elapsed());
}

#[tokio::test]
async fn messages_travel_escaped_where_frames_carry_them() {
    use kite_sockjs::session::{Escaped, Received};
    let (on_session, mut sessions) = capture();
    let addr = start(config(), on_session).await;
    let mut ws = ws_connect(addr, &ws_path(&sid())).await;
    let (tx, mut rx) = next_session(&mut sessions).await.split();
    assert!(tx.frames_escaped());
    assert_eq!(ws_text(&mut ws).await, "o");
    // Sent escaped: the frame a plain message makes.
    tx.send_escaped(Escaped::new("{\"m\":\"\u{2028}\"}"))
        .await
        .unwrap();
    assert_eq!(ws_text(&mut ws).await, "a[\"{\\\"m\\\":\\\"\\u2028\\\"}\"]");
    // A frame in the usual shape arrives escaped, as the client wrote it.
    ws_send(&mut ws, r#"["{\"a\":\"b\\\\c\"}","x"]"#).await;
    match rx.recv_message().await {
        Some(Received::Escaped(e)) => {
            assert_eq!(e.as_str(), r#"{\"a\":\"b\\\\c\"}"#);
            assert_eq!(e.to_plain().unwrap(), r#"{"a":"b\\c"}"#);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(rx.recv_message().await, Some(Received::Escaped(e)) if e.as_str() == "x"));
    // `\u` escapes are unescaped by the transport; `recv` unescapes either form.
    ws_send(&mut ws, r#"["\u0041"]"#).await;
    assert_eq!(rx.recv_message().await, Some(Received::Text("A".into())));
    ws_send(&mut ws, r#"["{\"k\":1}"]"#).await;
    assert_eq!(rx.recv().await.as_deref(), Some(r#"{"k":1}"#));
    // A malformed frame still closes the session (1007, as before).
    ws_send(&mut ws, r#"["ok","bad\x"]"#).await;
    assert_eq!(rx.recv().await, None);

    // Raw WebSocket: no frames, so an escaped message is sent unescaped.
    let mut ws = ws_connect(addr, "/echo/websocket").await;
    let (tx, _rx) = next_session(&mut sessions).await.split();
    assert!(!tx.frames_escaped());
    tx.send_escaped(Escaped::new("{\"m\":\"\u{2028}\"}"))
        .await
        .unwrap();
    assert_eq!(ws_text(&mut ws).await, "{\"m\":\"\u{2028}\"}");
}
