//! Our SockJS client against our SockJS server (`kite_sockjs::server::router`), over
//! WebSocket and XHR polling, on real sockets.
#![allow(clippy::unwrap_used)]

mod client_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use client_support::{recv, DEADLINE};
use kite_sockjs::client::{connect, ClientConfig, ClientTransport, CookieJar};
use kite_sockjs::server::{router, ServerConfig};
use kite_sockjs::{Role, Session, Transport};

fn echo(session: Session) {
    assert_eq!(session.info().role(), Role::Accepted);
    tokio::spawn(async move {
        let (tx, mut rx) = session.split();
        while let Some(message) = rx.recv().await {
            if tx.send(message).await.is_err() {
                break;
            }
        }
    });
}

fn server_config(prefix: &str) -> ServerConfig {
    ServerConfig {
        prefix: prefix.to_string(),
        heartbeat_interval: Duration::from_millis(200),
        disconnect_delay: Duration::from_millis(500),
        ..ServerConfig::default()
    }
}

/// Starts our server with `/echo`, `/nows` (no WebSocket), `/close` (says "bye" and
/// closes), `/sticky` (sets JSESSIONID); returns its address and a count of sessions
/// that ended on the server side.
async fn start() -> (SocketAddr, Arc<AtomicUsize>) {
    let ended = Arc::new(AtomicUsize::new(0));
    let ended2 = ended.clone();
    let app = axum::Router::new()
        .merge(router(server_config("/echo"), move |session| {
            let ended = ended2.clone();
            tokio::spawn(async move {
                let (tx, mut rx) = session.split();
                while let Some(message) = rx.recv().await {
                    if tx.send(message).await.is_err() {
                        break;
                    }
                }
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }))
        .merge(router(
            ServerConfig {
                websocket: false,
                ..server_config("/nows")
            },
            echo,
        ))
        .merge(router(
            ServerConfig {
                cookie_needed: true,
                ..server_config("/sticky")
            },
            echo,
        ))
        .merge(router(server_config("/close"), |session| {
            tokio::spawn(async move {
                let (tx, _rx) = session.split();
                tx.send("bye".into()).await.unwrap();
                let _ = tx.close(3000, "Go away!").await;
            });
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    (addr, ended)
}

fn config(transport: ClientTransport) -> ClientConfig {
    ClientConfig {
        transport,
        handshake_timeout: Duration::from_secs(10),
        poll_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

macro_rules! both_transports {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn websocket() {
                super::$name(kite_sockjs::client::ClientTransport::WebSocket).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn xhr_polling() {
                super::$name(kite_sockjs::client::ClientTransport::XhrPolling).await
            }
        }
    };
}

async fn echo_everything(transport: ClientTransport) {
    let (addr, ended) = start().await;
    let url = format!("http://{addr}/echo");
    let session = connect(&url, &config(transport)).await.unwrap();
    let expected = if transport == ClientTransport::WebSocket {
        Transport::WebSocket
    } else {
        Transport::XhrPolling
    };
    assert_eq!(session.info().transport(), expected);
    let (tx, mut rx) = session.split();
    let samples = [
        "{\"method\":\"kite.ping\",\"arguments\":[],\"callbacks\":{}}".to_string(),
        "line\u{2028}separator\u{2029} astral 😀 𝄞 controls \u{0}\u{1f} <&> \"\\".to_string(),
        "\u{200c}\u{fff0}\u{ffff}".to_string(),
        String::new(),
        "z\u{2028}".repeat(300_000),
    ];
    for s in &samples {
        tx.send(s.clone()).await.unwrap();
    }
    for s in &samples {
        assert_eq!(recv(&mut rx).await.as_ref(), Some(s));
    }
    // Many messages, sent by another task while this one reads.
    const N: usize = 3000;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            tx.send(format!("n{i}")).await.unwrap();
        }
        tx
    });
    for i in 0..N {
        assert_eq!(recv(&mut rx).await, Some(format!("n{i}")));
    }
    // Heartbeats (every 200 ms) go by unnoticed.
    let tx = sender.await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    tx.send("still here".into()).await.unwrap();
    assert_eq!(recv(&mut rx).await.as_deref(), Some("still here"));
    // Dropping the sender ends the session on both sides.
    drop(tx);
    assert_eq!(recv(&mut rx).await, None);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while ended.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never saw the session end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
both_transports!(echo_everything);

async fn server_close(transport: ClientTransport) {
    let (addr, _) = start().await;
    let url = format!("http://{addr}/close");
    let (tx, mut rx) = connect(&url, &config(transport)).await.unwrap().split();
    assert_eq!(recv(&mut rx).await.as_deref(), Some("bye"));
    assert_eq!(recv(&mut rx).await, None);
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();
}
both_transports!(server_close);

#[tokio::test]
async fn auto_uses_websocket_and_falls_back_to_xhr() {
    let (addr, _) = start().await;
    let ws = connect(
        &format!("http://{addr}/echo"),
        &config(ClientTransport::Auto),
    )
    .await
    .unwrap();
    assert_eq!(ws.info().transport(), Transport::WebSocket);
    let session = connect(
        &format!("http://{addr}/nows"),
        &config(ClientTransport::Auto),
    )
    .await
    .unwrap();
    assert_eq!(session.info().transport(), Transport::XhrPolling);
    let (tx, mut rx) = session.split();
    tx.send("fell back".into()).await.unwrap();
    assert_eq!(recv(&mut rx).await.as_deref(), Some("fell back"));
}

#[tokio::test]
async fn jsessionid_cookie_is_kept_in_the_jar() {
    let (addr, _) = start().await;
    let jar = Arc::new(CookieJar::new());
    let cfg = ClientConfig {
        cookies: jar.clone(),
        ..config(ClientTransport::XhrPolling)
    };
    let (tx, mut rx) = connect(&format!("http://{addr}/sticky"), &cfg)
        .await
        .unwrap()
        .split();
    tx.send("x".into()).await.unwrap();
    assert_eq!(recv(&mut rx).await.as_deref(), Some("x"));
    let cookie = jar.header_value("127.0.0.1", "/sticky/1/2/xhr", false);
    assert!(
        cookie
            .as_deref()
            .is_some_and(|c| c.starts_with("JSESSIONID=")),
        "{cookie:?}"
    );
}
