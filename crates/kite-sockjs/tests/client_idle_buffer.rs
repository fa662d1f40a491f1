//! After a burst, an idle WebSocket client gives its enlarged read buffer back at the next
//! server heartbeat (as the server does on its own heartbeat), rather than over the next
//! three small reads (~75 s with SockJS's 25 s heartbeats).
#![allow(clippy::unwrap_used)]

mod trace_support;

use std::time::Duration;

use kite_sockjs::client::{connect, ClientConfig, ClientTransport};
use kite_sockjs::server::{router, ServerConfig};
use kite_sockjs::Session;
use trace_support::Capture;

const DEADLINE: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_millis(200);
const RELEASED: &str = "released the read buffer of an idle WebSocket";

#[tokio::test]
async fn idle_client_releases_its_read_buffer_at_the_next_heartbeat() {
    let (logged, _guard) = Capture::start();
    let config = ServerConfig {
        prefix: "/burst".into(),
        heartbeat_interval: HEARTBEAT,
        // The server reads small messages only and never buffers: every release logged
        // is the client's.
        websocket_read_buffer_max: 0,
        ..ServerConfig::default()
    };
    // Answers each message with a 300 KB one.
    let app = router(config, |session: Session| {
        tokio::spawn(async move {
            let (tx, mut rx) = session.split();
            while rx.recv().await.is_some() {
                if tx.send("b".repeat(300_000)).await.is_err() {
                    break;
                }
            }
        });
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = ClientConfig {
        transport: ClientTransport::WebSocket,
        ..ClientConfig::default()
    };
    let session = connect(&format!("http://{addr}/burst"), &client)
        .await
        .unwrap();
    let (tx, mut rx) = session.split();
    tx.send("burst please".into()).await.unwrap();
    let burst = tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap();
    assert_eq!(burst.map(|b| b.len()), Some(300_000));
    assert!(logged.with_message(RELEASED).is_empty());

    // Idle now: the next heartbeat gives the burst's buffer back.
    let waited = tokio::time::Instant::now();
    while logged.with_message(RELEASED).is_empty() {
        assert!(
            waited.elapsed() < DEADLINE,
            "the client kept its read buffer: {:#?}",
            logged.events()
        );
        tokio::time::sleep(HEARTBEAT / 4).await;
    }
    let released = logged.with_message(RELEASED);
    let bytes: usize = released[0].field("bytes").unwrap().parse().unwrap();
    assert!(bytes > 0);
    // Later heartbeats find nothing more to give back.
    tokio::time::sleep(HEARTBEAT * 3).await;
    assert_eq!(logged.with_message(RELEASED).len(), 1);

    // The session is still fine, and a new burst grows (and releases) the buffer again.
    tx.send("again".into()).await.unwrap();
    let burst = tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap();
    assert_eq!(burst.map(|b| b.len()), Some(300_000));
    let waited = tokio::time::Instant::now();
    while logged.with_message(RELEASED).len() < 2 {
        assert!(
            waited.elapsed() < DEADLINE,
            "no release after the second burst"
        );
        tokio::time::sleep(HEARTBEAT / 4).await;
    }
}
