//! The SockJS test server the public conformance suite (sockjs-protocol) expects.
//!
//! ```text
//! cargo run --release --example sockjs_test_server -p kite-sockjs -- 127.0.0.1:8081
//! SOCKJS_URL=http://127.0.0.1:8081 python sockjs-protocol.py
//! ```
//!
//! Services: `/echo` (echoes every message; streaming responses end after 4096 bytes),
//! `/close` (closes every session at once with 3000 "Go away!"),
//! `/disabled_websocket_echo` (echo without WebSocket), `/cookie_needed_echo` (echo that sets
//! `JSESSIONID`). Sessions without a receiving request expire after 5 s, heartbeats every
//! 25 s, as the suite assumes.

use std::net::SocketAddr;
use std::time::Duration;

use kite_sockjs::server::{router, ServerConfig};
use kite_sockjs::Session;

fn echo(session: Session) {
    tokio::spawn(async move {
        let (tx, mut rx) = session.split();
        while let Some(message) = rx.recv().await {
            if tx.send(message).await.is_err() {
                break;
            }
        }
    });
}

fn close(session: Session) {
    tokio::spawn(async move {
        let (tx, _rx) = session.split();
        let _ = tx.close(3000, "Go away!").await;
    });
}

fn config(prefix: &str) -> ServerConfig {
    ServerConfig {
        prefix: prefix.to_string(),
        heartbeat_interval: Duration::from_secs(25),
        disconnect_delay: Duration::from_secs(5),
        response_limit: 4096,
        ..ServerConfig::default()
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".to_string());
    let app = axum::Router::new()
        .merge(router(config("/echo"), echo))
        .merge(router(config("/close"), close))
        .merge(router(
            ServerConfig {
                websocket: false,
                ..config("/disabled_websocket_echo")
            },
            echo,
        ))
        .merge(router(
            ServerConfig {
                cookie_needed: true,
                ..config("/cookie_needed_echo")
            },
            echo,
        ));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!("SockJS test server on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
