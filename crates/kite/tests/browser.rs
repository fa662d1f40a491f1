//! kite.js 1.0.13's browser bundle in headless Chromium calls a Rust kite over SockJS
//! WebSocket, SockJS XHR polling and raw WebSocket. The page and the bundle are served by
//! the kite itself (extra routes next to SockJS).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use axum::response::Html;
use axum::routing::get;
use common::*;
use kite_testkit::{peers, process};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kitejs_in_chromium_calls_rust_kite() {
    peers::require_chromium();
    let bundle = std::fs::read_to_string(peers::node_module("kite.js").join("dist/bundle.js"))
        .expect("kite.js browser bundle (run scripts/install-test-deps)");
    let k = math_kite();
    k.add_routes(
        axum::Router::new()
            .route(
                "/",
                get(|| async {
                    Html("<!doctype html><html><head><script src=\"/kite.js\"></script></head><body>kite</body></html>")
                }),
            )
            .route(
                "/kite.js",
                get(move || {
                    let bundle = bundle.clone();
                    async move { ([("content-type", "application/javascript")], bundle) }
                }),
            ),
    );
    let served = serve(k).await;
    let origin = served.url.trim_end_matches("/kite").to_string();
    let url = served.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        process::node("kite/browser_client.js")
            .arg(format!("{origin}/"))
            .arg(url)
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "bad output {stdout:?}: {e}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["ok"], true, "{report:#}");
    for r in report["results"].as_array().unwrap() {
        assert_eq!(r["square"], 16, "{r}");
        assert_eq!(r["countdown"], "done", "{r}");
        assert_eq!(r["ticks"], serde_json::json!([3, 2, 1]), "{r}");
        assert_eq!(r["ping"], "pong", "{r}");
    }
    assert_eq!(report["results"].as_array().unwrap().len(), 3);
    served.handle.shutdown();
}
