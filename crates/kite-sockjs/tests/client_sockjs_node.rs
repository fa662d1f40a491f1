//! Our SockJS client against a foreign server: sockjs-node 0.3 (interop/sockjs/echo_server.js),
//! over WebSocket and XHR polling.
#![allow(clippy::unwrap_used)]

mod client_support;

use std::time::Duration;

use client_support::{recv, NodeProcess, DEADLINE};
use kite_sockjs::client::{connect, ClientConfig, ClientTransport, ConnectError};
use kite_sockjs::Transport;

async fn server() -> NodeProcess {
    NodeProcess::start(
        "sockjs/echo_server.js",
        &[],
        &[("SOCKJS_HEARTBEAT_MS", "200")],
    )
    .await
}

fn config(transport: ClientTransport) -> ClientConfig {
    ClientConfig {
        transport,
        handshake_timeout: Duration::from_secs(10),
        poll_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

fn expected(transport: ClientTransport) -> Transport {
    match transport {
        ClientTransport::XhrPolling => Transport::XhrPolling,
        _ => Transport::WebSocket,
    }
}

/// Defines one test per transport from `async fn name(transport)`.
macro_rules! both_transports {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn websocket() {
                super::$name(kite_sockjs::client::ClientTransport::WebSocket).await
            }
            #[tokio::test]
            async fn xhr_polling() {
                super::$name(kite_sockjs::client::ClientTransport::XhrPolling).await
            }
        }
    };
}

async fn echo_round_trip(transport: ClientTransport) {
    let mut node = server().await;
    let url = format!("http://127.0.0.1:{}/echo", node.port);
    let session = connect(&url, &config(transport)).await.unwrap();
    assert_eq!(session.info().transport(), expected(transport));
    assert_eq!(session.info().id().len(), 20);
    assert_eq!(session.info().role(), kite_sockjs::Role::Dialed);
    let (tx, mut rx) = session.split();
    for i in 0..3 {
        let msg = format!(r#"{{"method":"kite.ping","n":{i}}}"#);
        tx.send(msg.clone()).await.unwrap();
        assert_eq!(recv(&mut rx).await.as_deref(), Some(msg.as_str()));
    }
    // Several heartbeats (every 200 ms) go by without disturbing anything.
    tokio::time::sleep(Duration::from_millis(700)).await;
    tx.send("after heartbeats".into()).await.unwrap();
    assert_eq!(recv(&mut rx).await.as_deref(), Some("after heartbeats"));
    let protocol = if transport == ClientTransport::XhrPolling {
        "xhr-polling"
    } else {
        "websocket"
    };
    let open = node.wait_line(|v| v["event"] == "open").await;
    assert_eq!(open["protocol"], protocol);
    // Dropping every sender closes the session; the server notices.
    drop(tx);
    node.wait_line(|v| v["event"] == "close" && v["prefix"] == "/echo")
        .await;
    assert_eq!(recv(&mut rx).await, None);
}
both_transports!(echo_round_trip);

async fn many_messages_in_order(transport: ClientTransport) {
    let node = server().await;
    let url = format!("http://127.0.0.1:{}/echo", node.port);
    let (tx, mut rx) = connect(&url, &config(transport)).await.unwrap().split();
    const N: usize = 2000;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            tx.send(format!("message {i}")).await.unwrap();
        }
        tx
    });
    for i in 0..N {
        assert_eq!(recv(&mut rx).await, Some(format!("message {i}")));
    }
    let _tx = sender.await.unwrap();
}
both_transports!(many_messages_in_order);

async fn unicode_survives(transport: ClientTransport) {
    let node = server().await;
    let url = format!("http://127.0.0.1:{}/echo", node.port);
    let (tx, mut rx) = connect(&url, &config(transport)).await.unwrap().split();
    let samples = [
        "line\u{2028}separator\u{2029}paragraph",
        "astral 😀 𝄞 🀄",
        "quotes \" and \\ backslashes \\\" and / slashes",
        "controls \u{0}\u{1}\u{1f}\t\r\n end",
        "\u{200c}\u{200f}\u{2060}\u{fff0}\u{fffe}\u{ffff}",
        "<script>&amp;</script>",
        "héllo wörld ✓ 中文 العربية",
        r#"{"method":"echo","arguments":["a\"b"]}"#,
        "",
    ];
    for s in samples {
        tx.send(s.to_string()).await.unwrap();
    }
    for s in samples {
        assert_eq!(recv(&mut rx).await.as_deref(), Some(s));
    }
}
both_transports!(unicode_survives);

async fn large_messages(transport: ClientTransport) {
    let node = server().await;
    let url = format!("http://127.0.0.1:{}/echo", node.port);
    let (tx, mut rx) = connect(&url, &config(transport)).await.unwrap().split();
    // 2 MiB with characters that need escaping, and 3 messages larger than one batch.
    let big: String = "ab\"c\u{2028}d😀\n".repeat(2 << 17);
    tx.send(big.clone()).await.unwrap();
    assert_eq!(recv(&mut rx).await.as_deref(), Some(big.as_str()));
    let chunk = "x".repeat(700 << 10);
    for _ in 0..3 {
        tx.send(chunk.clone()).await.unwrap();
    }
    for _ in 0..3 {
        assert_eq!(recv(&mut rx).await.as_deref(), Some(chunk.as_str()));
    }
}
both_transports!(large_messages);

async fn oversized_incoming_frame_ends_session(transport: ClientTransport) {
    let node = server().await;
    let url = format!("http://127.0.0.1:{}/echo", node.port);
    let cfg = ClientConfig {
        max_message_bytes: 4096,
        ..config(transport)
    };
    let (tx, mut rx) = connect(&url, &cfg).await.unwrap().split();
    tx.send("small".into()).await.unwrap();
    assert_eq!(recv(&mut rx).await.as_deref(), Some("small"));
    tx.send("y".repeat(10_000)).await.unwrap();
    assert_eq!(recv(&mut rx).await, None);
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();
}
both_transports!(oversized_incoming_frame_ends_session);

async fn server_initiated_close(transport: ClientTransport) {
    let node = server().await;
    let url = format!("http://127.0.0.1:{}/close", node.port);
    let (tx, mut rx) = connect(&url, &config(transport)).await.unwrap().split();
    assert_eq!(recv(&mut rx).await.as_deref(), Some("bye"));
    assert_eq!(recv(&mut rx).await, None);
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();
    assert!(tx.send("too late".into()).await.is_err());
}
both_transports!(server_initiated_close);

#[tokio::test]
async fn auto_prefers_websocket() {
    let node = server().await;
    let url = format!("http://127.0.0.1:{}/echo", node.port);
    let session = connect(&url, &config(ClientTransport::Auto)).await.unwrap();
    assert_eq!(session.info().transport(), Transport::WebSocket);
    let (tx, mut rx) = session.split();
    tx.send("hi".into()).await.unwrap();
    assert_eq!(recv(&mut rx).await.as_deref(), Some("hi"));
}

#[tokio::test]
async fn auto_falls_back_to_xhr_when_websocket_is_refused() {
    let node = server().await;
    let url = format!("http://127.0.0.1:{}/nows", node.port);
    // Forcing WebSocket fails with the HTTP status of the refused handshake...
    match connect(&url, &config(ClientTransport::WebSocket)).await {
        Err(ConnectError::HandshakeStatus { status }) => assert!(!status.is_informational()),
        other => panic!("expected a refused handshake, got {other:?}"),
    }
    // ...and Auto falls back to XHR polling.
    let session = connect(&url, &config(ClientTransport::Auto)).await.unwrap();
    assert_eq!(session.info().transport(), Transport::XhrPolling);
    let (tx, mut rx) = session.split();
    tx.send("via xhr".into()).await.unwrap();
    assert_eq!(recv(&mut rx).await.as_deref(), Some("via xhr"));
}

#[tokio::test]
async fn connection_refused_does_not_fall_back() {
    // A port that was just free: bind, note, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/kite");
    for transport in [
        ClientTransport::Auto,
        ClientTransport::WebSocket,
        ClientTransport::XhrPolling,
    ] {
        match connect(&url, &config(transport)).await {
            Err(ConnectError::Connect { addr, .. }) => {
                assert_eq!(addr, format!("127.0.0.1:{port}"))
            }
            other => panic!("{transport:?}: expected a connect error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn xhr_open_on_a_non_sockjs_path_fails() {
    let node = server().await;
    let url = format!("http://127.0.0.1:{}/nothing", node.port);
    match connect(&url, &config(ClientTransport::XhrPolling)).await {
        Err(ConnectError::XhrStatus { status }) => assert_eq!(status, 404),
        other => panic!("expected a 404, got {other:?}"),
    }
}

#[tokio::test]
async fn xhr_requests_share_the_cookie_jar() {
    let mut node = server().await;
    let url = format!("http://127.0.0.1:{}/sticky", node.port);
    let cfg = config(ClientTransport::XhrPolling);
    let (tx, mut rx) = connect(&url, &cfg).await.unwrap().split();
    for i in 0..3 {
        tx.send(format!("m{i}")).await.unwrap();
        assert_eq!(recv(&mut rx).await, Some(format!("m{i}")));
    }
    assert_eq!(cfg.cookies.len(), 1);
    let first = node.wait_line(|v| v["event"] == "cookie").await;
    assert_eq!(first["cookie"], serde_json::Value::Null, "{first}");
    let rest: Vec<_> = node
        .drain_lines()
        .into_iter()
        .filter(|v| v["event"] == "cookie")
        .collect();
    assert!(rest.len() >= 4, "{rest:?}");
    for line in &rest {
        assert_eq!(line["cookie"], "sticky=backend1", "{line}");
    }
    assert!(rest
        .iter()
        .any(|v| v["url"].as_str().unwrap().ends_with("/xhr_send")));
    // A second client with the same jar presents the cookie from its first request on.
    let (tx2, mut rx2) = connect(&url, &cfg).await.unwrap().split();
    tx2.send("again".into()).await.unwrap();
    assert_eq!(recv(&mut rx2).await.as_deref(), Some("again"));
    let line = node.wait_line(|v| v["event"] == "cookie").await;
    assert_eq!(line["cookie"], "sticky=backend1", "{line}");
}
