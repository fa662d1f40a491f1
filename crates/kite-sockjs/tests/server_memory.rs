//! Memory cost of idle WebSocket sessions on the server.
//!
//! The server runs in a child process (this test binary re-executed, test
//! `memory_child_server`) so the client side does not pollute its RSS. The parent opens
//! `KITE_SOCKJS_MEMORY_CONNS` (default 5000) SockJS WebSocket sessions, each one echoing a
//! message once so it is fully established, and compares the child's `VmRSS` before and
//! after. Ignored by default (it opens ~10,000 sockets); run it with
//!
//! ```text
//! cargo test --release -p kite-sockjs --test server_memory -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

const CHILD_ENV: &str = "KITE_SOCKJS_MEMORY_CHILD";

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The server side, run only as the child of `idle_websocket_memory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of idle_websocket_memory"]
async fn memory_child_server() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let mut config = kite_sockjs::server::ServerConfig {
        max_sessions: 1_000_000,
        ..kite_sockjs::server::ServerConfig::default()
    };
    if let Some(n) = std::env::var("KITE_SOCKJS_MEMORY_READ_BUFFER")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.websocket_read_buffer = n;
    }
    let hold_only = std::env::var_os("KITE_SOCKJS_MEMORY_HOLD_ONLY").is_some();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = kite_sockjs::server::router(config, move |session| {
        if hold_only {
            // Measure the transport alone: the session is held, nobody serves it.
            let (tx, rx) = session.split();
            tx.try_send("ping".into()).unwrap();
            held.lock().unwrap().push((tx, rx));
            return;
        }
        tokio::spawn(async move {
            let (tx, mut rx) = session.split();
            while let Some(m) = rx.recv().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        });
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("PORT {}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // Serve until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut buf = [0u8; 64];
        while std::io::stdin()
            .read(&mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await
    .unwrap();
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(port: u16, i: usize) -> Ws {
    let url = format!("ws://127.0.0.1:{port}/kite/{}/s{i}/websocket", i % 1000);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let o = ws.next().await.unwrap().unwrap();
    assert_eq!(o, Message::text("o"));
    ws.send(Message::text("[\"ping\"]")).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo, Message::text("a[\"ping\"]"));
    ws
}

async fn open_many(port: u16, from: usize, count: usize) -> Vec<Ws> {
    let mut all = Vec::with_capacity(count);
    let mut start = from;
    while start < from + count {
        let end = (start + 250).min(from + count);
        let batch = futures_util::future::join_all((start..end).map(|i| open(port, i))).await;
        all.extend(batch);
        start = end;
    }
    all
}

/// RSS once it has stopped changing (allocator and kernel settle).
async fn settled_rss(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss_kib(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "opens ~10,000 sockets; run explicitly"]
async fn idle_websocket_memory() {
    let conns: usize = std::env::var("KITE_SOCKJS_MEMORY_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let max_kib: f64 = std::env::var("KITE_SOCKJS_MAX_KIB_PER_CONN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8.0);
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "memory_child_server", "--ignored", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("child exited");
            if let Some(p) = line.strip_prefix("PORT ") {
                break p.trim().parse().unwrap();
            }
        }
    })
    .await
    .expect("child server did not start");

    // Warm up: runtime threads, allocator arenas, first-use buffers.
    let warm = open_many(port, 0, 200).await;
    let before = settled_rss(pid).await;
    let held = open_many(port, 200, conns).await;
    let after = settled_rss(pid).await;
    let per_conn = (after.saturating_sub(before)) as f64 / conns as f64;
    println!(
        "server RSS: {before} KiB with 200 warm-up sessions, {after} KiB after {conns} more idle \
         WebSocket sessions: {per_conn:.2} KiB per session"
    );
    drop((warm, held));
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    assert!(
        per_conn <= max_kib,
        "{per_conn:.2} KiB per idle session exceeds {max_kib} KiB"
    );
}
