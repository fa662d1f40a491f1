//! The web page's HTTP side, served by the `kontrol` kite over real sockets: the page and its
//! assets (headers), the JSON snapshot `/api/kites`, the Server-Sent Events feed
//! `/api/watch` (REGISTER on registration, DEREGISTER on deletion and on expiry, end at
//! shutdown), the connection bound, the switch that removes it all, and the re-snapshot after
//! lost events (`kontrol::web::feed` with a tiny watch buffer).
#![allow(clippy::unwrap_used)]

#[allow(unused_macros, unused_imports)]
mod kontrol_common;
#[allow(unused_macros, unused_imports)]
mod support;
#[allow(unused_imports)]
mod web_common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use kite_protocol::Kite;
use kontrol::web::WebEvent;
use kontrol_common::{http, kite, wait_for};
use web_common::*;

const EVENT_WAIT: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A kite whose name and hostname are markup.
fn markup_kite() -> Kite {
    Kite {
        name: "<script>".into(),
        hostname: "<img src=x onerror=window.pwned=1>".into(),
        ..kite("bob", "ignored")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_assets() {
    let s = start().await;
    let page = http(s.addr, "GET", "/", None, b"").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let html = page.text();
    assert!(html.contains(r#"<script src="/web/app.js" defer></script>"#));
    assert!(html.contains(r#"href="/web/style.css""#));
    // No external assets.
    assert!(!html.contains("http://") && !html.contains("https://"));

    let js = http(s.addr, "GET", "/web/app.js", None, b"").await;
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(js.text().contains("new EventSource('/api/watch')"));
    assert!(!js.text().contains("innerHTML"));
    let css = http(s.addr, "GET", "/web/style.css", None, b"").await;
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));

    // The other Kontrol endpoints are still there; unknown paths are 404.
    assert_eq!(http(s.addr, "GET", "/healthz", None, b"").await.status, 200);
    assert_eq!(
        http(s.addr, "GET", "/web/nope", None, b"").await.status,
        404
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_lists_live_kites_without_secrets() {
    let s = start().await;
    let kontrol = s.kontrol();
    let before = now_ms();
    let math = kite("alice", "math");
    register(kontrol, &math, "http://127.0.0.1:7001/kite").await;
    let markup = markup_kite();
    let markup_url = "http://127.0.0.1:7002/<b>x</b>?q=<script>";
    register(kontrol, &markup, markup_url).await;
    let after = now_ms();

    let res = http(s.addr, "GET", "/api/kites", None, b"").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(res.header("cache-control"), Some("no-store"));
    let snap = res.json();
    assert_eq!(snap["total"], 3, "{snap:#}"); // math, markup, kontrol itself
    assert_eq!(snap["truncated"], false);
    let server_now = snap["now"].as_u64().unwrap();
    assert!(server_now >= after);
    let kites = snap["kites"].as_array().unwrap();
    // Identity order: alice < bob < kontrol.
    let users: Vec<&str> = kites
        .iter()
        .map(|e| e["kite"]["username"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "bob", "kontrol"]);
    for e in kites {
        // Identity, URL and registration time only: no token, key id or key.
        let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["kite", "registeredAt", "url"], "{e}");
        assert_eq!(e["kite"].as_object().unwrap().len(), 7, "{e}");
    }
    assert_eq!(
        kites[0]["kite"],
        serde_json::to_value(&math).unwrap(),
        "{snap:#}"
    );
    assert_eq!(kites[0]["url"], "http://127.0.0.1:7001/kite");
    let registered = kites[0]["registeredAt"].as_u64().unwrap();
    assert!(
        (before.saturating_sub(1000)..=after + 1000).contains(&registered),
        "{registered} not in {before}..{after}"
    );
    // Kite-provided strings are data, passed on unchanged (the page escapes them).
    assert_eq!(kites[1]["kite"]["name"], "<script>");
    assert_eq!(
        kites[1]["kite"]["hostname"],
        "<img src=x onerror=window.pwned=1>"
    );
    assert_eq!(kites[1]["url"], markup_url);
    let text = res.text();
    assert!(!text.contains("token") && !text.contains("keyId"), "{text}");

    // Deregistered kites are gone at once.
    kontrol.deregister(&math.id).await.unwrap();
    let snap = http(s.addr, "GET", "/api/kites", None, b"").await.json();
    assert_eq!(snap["total"], 2);
    assert!(!snapshot_ids(&snap).contains(&math.id));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_truncated_at_max_kites() {
    let s = start_with(|c| c.web.max_kites = 2, |_| {}).await;
    for name in ["a", "b", "c"] {
        register(
            s.kontrol(),
            &kite("alice", name),
            "http://127.0.0.1:7001/kite",
        )
        .await;
    }
    let snap = http(s.addr, "GET", "/api/kites", None, b"").await.json();
    assert_eq!(snap["total"], 4);
    assert_eq!(snap["truncated"], true);
    let names: Vec<&str> = snap["kites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kite"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_snapshot_register_deregister_expiry() {
    let s = start().await;
    let kontrol = s.kontrol();
    let mut sse = SseClient::connect(s.addr, "/api/watch").await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-store"));

    // First a snapshot (only Kontrol itself), with the reconnection delay.
    let first = sse.expect_event(EVENT_WAIT).await;
    assert_eq!(first.event, "snapshot");
    assert_eq!(first.retry, Some(2000));
    assert_eq!(
        snapshot_ids(&first.data),
        [kontrol.identity().id.clone()],
        "{:#}",
        first.data
    );

    // A kite registers: REGISTER with its identity, URL and registration time.
    let math = kite("alice", "math");
    register(kontrol, &math, "http://127.0.0.1:7001/kite").await;
    let ev = sse.expect_event(EVENT_WAIT).await;
    assert_eq!(ev.event, "register", "{:?}", ev);
    assert_eq!(ev.data["kite"], serde_json::to_value(&math).unwrap());
    assert_eq!(ev.data["url"], "http://127.0.0.1:7001/kite");
    assert!(ev.data["registeredAt"].as_u64().unwrap() <= ev.data["now"].as_u64().unwrap());
    let mut keys: Vec<&str> = ev
        .data
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["kite", "now", "registeredAt", "url"]);

    // It is deleted: DEREGISTER.
    kontrol.deregister(&math.id).await.unwrap();
    let ev = sse.expect_event(EVENT_WAIT).await;
    assert_eq!(ev.event, "deregister", "{:?}", ev);
    assert_eq!(ev.data["kite"]["id"], math.id.as_str());

    // Another one registers and never heartbeats: DEREGISTER once its 2 s TTL is over.
    let silent = kite("carol", "silent");
    let registered = std::time::Instant::now();
    register(kontrol, &silent, "http://127.0.0.1:7003/kite").await;
    let ev = sse.expect_event(EVENT_WAIT).await;
    assert_eq!(ev.event, "register");
    assert_eq!(ev.data["kite"]["id"], silent.id.as_str());
    let ev = sse.expect_event(EVENT_WAIT).await;
    assert_eq!(ev.event, "deregister", "{:?}", ev);
    assert_eq!(ev.data["kite"]["id"], silent.id.as_str());
    assert!(registered.elapsed() >= kontrol.config().record_ttl());

    // A new connection starts with the current state.
    let mut again = SseClient::connect(s.addr, "/api/watch").await;
    let snap = again.expect_event(EVENT_WAIT).await;
    assert_eq!(snap.event, "snapshot");
    assert_eq!(snapshot_ids(&snap.data), [kontrol.identity().id.clone()]);

    // Kontrol shuts down: the streams end.
    kontrol.shutdown().await;
    assert!(sse.next_event(EVENT_WAIT).await.is_none());
    assert!(again.next_event(EVENT_WAIT).await.is_none());
    // And new ones are refused.
    let res = http(s.addr, "GET", "/api/watch", None, b"").await;
    assert_eq!(res.status, 503);
    assert_eq!(res.json()["err"], "kontrol is shutting down");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_connections_are_bounded() {
    let s = start_with(
        |c| {
            c.web.max_streams = 1;
            c.web.keep_alive = Duration::from_millis(100);
        },
        |_| {},
    )
    .await;
    let mut one = SseClient::connect(s.addr, "/api/watch").await;
    assert_eq!(one.expect_event(EVENT_WAIT).await.event, "snapshot");
    let refused = http(s.addr, "GET", "/api/watch", None, b"").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["err"], "too many live connections (limit 1)");
    // The snapshot endpoint is not bounded by it.
    assert_eq!(
        http(s.addr, "GET", "/api/kites", None, b"").await.status,
        200
    );
    // Closing the first frees its slot (noticed at the next keep-alive write).
    drop(one);
    let mut two = wait_for("the slot to be released", EVENT_WAIT, || async {
        let c = SseClient::connect(s.addr, "/api/watch").await;
        (c.status == 200).then_some(c)
    })
    .await;
    assert_eq!(two.expect_event(EVENT_WAIT).await.event, "snapshot");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_page_is_not_served() {
    let s = start_with(|c| c.web.enabled = false, |_| {}).await;
    for path in ["/", "/web/app.js", "/api/kites", "/api/watch"] {
        assert_eq!(
            http(s.addr, "GET", path, None, b"").await.status,
            404,
            "{path}"
        );
    }
    assert_eq!(http(s.addr, "GET", "/healthz", None, b"").await.status, 200);
    s.shutdown().await;
}

/// Events lost by a slow consumer are replaced by a new snapshot: with a watch buffer of 2,
/// five registrations while nobody reads make the feed lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_resnapshots_after_lost_events() {
    let s = start_with(|_| {}, |store| store.limits.watch_buffer = 2).await;
    let kontrol = s.kontrol();
    let feed = kontrol::web::feed(kontrol).await.unwrap();
    tokio::pin!(feed);
    let Some(WebEvent::Snapshot(first)) = feed.next().await else {
        panic!("the feed starts with a snapshot")
    };
    assert_eq!(first.total, 1);
    let kites: Vec<Kite> = (0..5).map(|i| kite("alice", &format!("k{i}"))).collect();
    for k in &kites {
        register(kontrol, k, "http://127.0.0.1:7001/kite").await;
    }
    let next = tokio::time::timeout(EVENT_WAIT, feed.next())
        .await
        .unwrap()
        .unwrap();
    let WebEvent::Snapshot(resync) = next else {
        panic!("expected a new snapshot after lost events, got {next:?}")
    };
    assert_eq!(resync.total, 6);
    for k in &kites {
        assert!(resync.kites.iter().any(|e| e.kite == *k), "{k} missing");
    }
    // Applying what follows keeps the view right: the events still buffered are the last
    // registrations, already in the snapshot.
    let next = tokio::time::timeout(EVENT_WAIT, feed.next())
        .await
        .unwrap()
        .unwrap();
    let WebEvent::Register(change) = next else {
        panic!("expected a buffered REGISTER, got {next:?}")
    };
    assert!(kites[3..].contains(&change.entry.kite), "{change:?}");
    s.shutdown().await;
}
