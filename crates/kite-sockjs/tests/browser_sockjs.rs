//! A real browser against our SockJS server: headless Chromium (Debian's /usr/bin/chromium,
//! driven by playwright-core from `interop/sockjs/browser_echo.js`) loads a page served by
//! this test's axum app and talks to our echo service through sockjs-client 1.6.1, once per
//! forced transport: `websocket`, `xhr-streaming`, `xhr-polling`.
//!
//! Fails when /usr/bin/chromium is missing (scripts/install-test-deps installs it).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use axum::http::header;
use axum::routing::get;
use kite_sockjs::server::{router, ServerConfig};
use kite_testkit::paths::interop_dir;

const PAGE: &str =
    "<!doctype html><meta charset=\"utf-8\"><title>kite-rs SockJS browser test</title>\
<script src=\"/static/sockjs.min.js\"></script>";

async fn start_server() -> SocketAddr {
    let sockjs_js =
        std::fs::read(interop_dir().join("node_modules/sockjs-client/dist/sockjs.min.js"))
            .expect("interop/node_modules/sockjs-client is missing: run `npm ci` in interop/");
    let app = axum::Router::new()
        .route(
            "/browser.html",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }),
        )
        .route(
            "/static/sockjs.min.js",
            get(move || {
                let body = sockjs_js.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/javascript; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
        .merge(router(
            ServerConfig {
                prefix: "/echo".into(),
                heartbeat_interval: Duration::from_secs(2),
                disconnect_delay: Duration::from_secs(2),
                sockjs_url: "/static/sockjs.min.js".into(),
                ..ServerConfig::default()
            },
            |session| {
                tokio::spawn(async move {
                    let (tx, mut rx) = session.split();
                    while let Some(message) = rx.recv().await {
                        if tx.send(message).await.is_err() {
                            break;
                        }
                    }
                });
            },
        ));
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
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_sockjs_client_talks_to_our_server() {
    kite_testkit::peers::require_chromium();
    let addr = start_server().await;
    let page = format!("http://{addr}/browser.html");
    let sockjs = format!("http://{addr}/echo");
    let child = tokio::process::Command::new("node")
        .arg(interop_dir().join("sockjs/browser_echo.js"))
        .args([&page, &sockjs, "websocket", "xhr-streaming", "xhr-polling"])
        .current_dir(interop_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("can't start node (is Node.js installed?)");
    let output = tokio::time::timeout(Duration::from_secs(150), child.wait_with_output())
        .await
        .expect("browser_echo.js did not finish within 150 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "browser_echo.js printed no JSON ({e}); status {}\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        )
    });
    assert!(
        report["error"].is_null(),
        "browser driver failed: {}\nstderr: {stderr}",
        report["error"]
    );
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{report:#}");
    for (result, transport) in results
        .iter()
        .zip(["websocket", "xhr-streaming", "xhr-polling"])
    {
        assert_eq!(result["transport"], transport);
        assert!(
            result["ok"] == true,
            "{transport} failed in the browser: {}\nfull report: {report:#}",
            result["error"]
        );
        assert_eq!(result["used"], transport);
        let received = result["received"].as_array().unwrap();
        assert_eq!(received.len() as u64, result["sent"].as_u64().unwrap());
        assert_eq!(received[1], "line\u{2028}separator\u{2029}paragraph");
        assert_eq!(received[2], "astral \u{1F600} \u{1D11E}");
        assert_eq!(received[6], "<100000 chars>");
        assert_eq!(received.last().unwrap(), "batch 49");
    }
    assert!(output.status.success(), "status {}", output.status);
}
