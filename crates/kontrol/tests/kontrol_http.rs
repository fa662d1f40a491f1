//! Kontrol's HTTP endpoints over real sockets (PROTOCOL.md 8.2), checked byte for byte
//! against the Go captures where they apply (vectors/heartbeat_http*.txt).
#![allow(clippy::unwrap_used)]

#[allow(unused_macros, unused_imports)]
mod kontrol_common;
#[allow(unused_macros, unused_imports)]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kontrol::{Kontrol, KontrolConfig};
use kontrol_common::*;
use serde_json::json;

const JSON: Option<&str> = Some("application/json");

async fn setup(config: KontrolConfig) -> (Kontrol, SocketAddr, support::TestEnv) {
    let env = support::embedded_env().await;
    let (kontrol, _storage) = start(&env, config).await;
    let addr = serve(kontrol::http::routes(kontrol.clone())).await;
    (kontrol, addr, env)
}

fn body(url: &str, kite: &kite_protocol::Kite, auth_type: &str, key: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"url": url, "kite": kite, "auth": {"type": auth_type, "key": key}}))
        .unwrap()
}

fn assert_text_plain(res: &RawResponse) {
    assert_eq!(
        res.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{res:?}"
    );
}

fn assert_err(res: &RawResponse, status: u16, err: &str) {
    assert_eq!(res.status, status, "{}", res.text());
    assert_text_plain(res);
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(res.text(), format!("{}\n", json!({ "err": err })));
}

/// Registration and heartbeats as in heartbeat_http.txt / heartbeat_http_registeragain.txt,
/// with Go's default interval: the exact bytes of the capture's responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_heartbeat_like_go() {
    let mut config = KontrolConfig::new("kontrol", KONTROL_URL);
    config.key_bits = 1024;
    let (kontrol, addr, _env) = setup(config).await;
    let k = kite("alice", "math");
    let key = key_for(&kontrol, "alice");
    let url = "http://127.0.0.1:3639/kite";
    let res = http(
        addr,
        "POST",
        "/register",
        JSON,
        &body(url, &k, "kiteKey", &key),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_text_plain(&res);
    assert_eq!(
        res.text(),
        "{\"url\":\"http://127.0.0.1:3639/kite\",\"heartbeatInterval\":10}\n"
    );

    let res = http(addr, "GET", &format!("/heartbeat?id={}", k.id), None, b"").await;
    assert_eq!((res.status, res.text().as_str()), (200, "pong"));
    assert_text_plain(&res);
    assert_eq!(res.header("content-length"), Some("4"));

    let res = http(
        addr,
        "GET",
        "/heartbeat?id=00000000-0000-0000-0000-000000000000",
        None,
        b"",
    )
    .await;
    assert_eq!((res.status, res.text().as_str()), (200, "registeragain"));
    assert_text_plain(&res);
    assert_eq!(res.header("content-length"), Some("13"));

    let res = http(addr, "GET", "/heartbeat", None, b"").await;
    assert_eq!(
        (res.status, res.text().as_str()),
        (400, "query id is empty\n")
    );
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    let res = http(addr, "GET", "/heartbeat?id=", None, b"").await;
    assert_eq!(res.status, 400);

    // Registered over HTTP, found like any other kite.
    let found = kontrol.get_kites(&k.to_query(), "bob").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].url, url);

    let res = http(addr, "GET", "/healthz", None, b"").await;
    assert_eq!((res.status, res.text().as_str()), (200, "ok\n"));
}

/// Without heartbeats a kite registered over HTTP expires after interval + grace and
/// `/heartbeat` says `registeragain`; with them it stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_and_silence_expires() {
    let config = test_config();
    let ttl = config.record_ttl();
    let (kontrol, addr, _env) = setup(config).await;
    let k = kite("alice", "math");
    let key = key_for(&kontrol, "alice");
    let res = http(
        addr,
        "POST",
        "/register",
        JSON,
        &body("http://127.0.0.1:1/kite", &k, "kiteKey", &key),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["heartbeatInterval"], json!(1));

    let path = format!("/heartbeat?id={}", k.id);
    let start = Instant::now();
    while start.elapsed() < ttl + Duration::from_secs(1) {
        let res = http(addr, "GET", &path, None, b"").await;
        assert_eq!(res.text(), "pong");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // (Polling /heartbeat would keep it alive: watch getKites instead.)
    wait_for(
        "the silent kite to expire",
        ttl + Duration::from_secs(3),
        || async {
            kontrol
                .get_kites(&k.to_query(), "bob")
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let res = http(addr, "GET", &path, None, b"").await;
    assert_eq!((res.status, res.text().as_str()), (200, "registeragain"));
}

/// Bad input gets a clear 4xx and changes nothing (Q17: no crash on missing auth/kite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_register_requests() {
    let (kontrol, addr, _env) = setup(test_config()).await;
    let before = kontrol.storage().count().await.unwrap();
    let k = kite("alice", "math");
    let key = key_for(&kontrol, "alice");
    let url = "http://127.0.0.1:1/kite";

    let res = http(addr, "POST", "/register", JSON, b"").await;
    assert_err(&res, 400, "wrong register input: 'EOF'");
    // Any method, like Go.
    let res = http(addr, "GET", "/register", None, b"").await;
    assert_err(&res, 400, "wrong register input: 'EOF'");
    let res = http(addr, "POST", "/register", JSON, b"{{{ junk").await;
    assert_eq!(res.status, 400);
    assert!(res.json()["err"]
        .as_str()
        .unwrap()
        .starts_with("wrong register input: '"));
    let res = http(addr, "POST", "/register", JSON, b"[1,2,3]").await;
    assert_eq!(res.status, 400);
    let res = http(
        addr,
        "POST",
        "/register",
        JSON,
        json!({"url": url, "kite": k}).to_string().as_bytes(),
    )
    .await;
    assert_err(&res, 400, "wrong register input: 'auth is missing'");
    let res = http(
        addr,
        "POST",
        "/register",
        JSON,
        json!({"url": url, "auth": {"type": "kiteKey", "key": key}})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_err(&res, 400, "wrong register input: 'kite is missing'");

    let res = http(
        addr,
        "POST",
        "/register",
        JSON,
        &body(url, &k, "token", &key),
    )
    .await;
    assert_err(&res, 400, "unexpected authentication type: token");
    let res = http(
        addr,
        "POST",
        "/register",
        JSON,
        &body("", &k, "kiteKey", &key),
    )
    .await;
    assert_err(&res, 400, "empty URL");
    let res = http(
        addr,
        "POST",
        "/register",
        JSON,
        &body(url, &k, "kiteKey", "junk"),
    )
    .await;
    assert_eq!(res.status, 401, "{}", res.text());
    let foreign = kite::auth::KeyPair::generate(1024).unwrap();
    let res = http(
        addr,
        "POST",
        "/register",
        JSON,
        &body(url, &k, "kiteKey", &kite_key(&foreign, "alice")),
    )
    .await;
    assert_err(&res, 401, "kontrol key is not trusted");
    let mut no_region = k.clone();
    no_region.region.clear();
    let res = http(
        addr,
        "POST",
        "/register",
        JSON,
        &body(url, &no_region, "kiteKey", &key),
    )
    .await;
    assert_err(&res, 400, "Empty Kite field: region");
    let mut as_bob = k.clone();
    as_bob.username = "bob".into();
    let res = http(
        addr,
        "POST",
        "/register",
        JSON,
        &body(url, &as_bob, "kiteKey", &key),
    )
    .await;
    assert_err(
        &res,
        400,
        "kite username \"bob\" does not match the kite key's username \"alice\"",
    );
    let res = http(
        addr,
        "POST",
        "/register",
        JSON,
        &body("gopher://x/kite", &k, "kiteKey", &key),
    )
    .await;
    assert_err(
        &res,
        400,
        "invalid register URL: unsupported scheme \"gopher\"",
    );

    // Oversized body: 413 with a clear message.
    let mut big = body(url, &k, "kiteKey", &key);
    big.extend(std::iter::repeat_n(b' ', 100 * 1024));
    let res = http(addr, "POST", "/register", JSON, &big).await;
    assert_err(&res, 413, "request body too large (limit 65536 bytes)");

    // The capture's registration: a kite key of another Kontrol (Go's test key pair).
    let capture = read_vector("heartbeat_http.txt");
    let go_body = capture
        .lines()
        .find(|l| l.starts_with("{\"url\""))
        .expect("register body in capture");
    let res = http(addr, "POST", "/register", JSON, go_body.as_bytes()).await;
    assert_err(&res, 401, "kontrol key is not trusted");

    assert_eq!(kontrol.storage().count().await.unwrap(), before);
}

/// A kite key of a deleted pair over HTTP: 200 with the new public key and a re-signed key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_after_rotation() {
    let (kontrol, addr, _env) = setup(test_config()).await;
    let old_key = key_for(&kontrol, "alice");
    kontrol.rotate_keys().await.unwrap();
    let k = kite("alice", "math");
    let res = http(
        addr,
        "POST",
        "/register",
        JSON,
        &body("http://127.0.0.1:1/kite", &k, "kiteKey", &old_key),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let v = res.json();
    assert_eq!(v["publicKey"], json!(kontrol.public_key()));
    let resigned = v["kiteKey"].as_str().unwrap();
    let claims = kite::auth::Claims::decode_unverified(resigned).unwrap();
    assert_eq!(claims.kontrol_key, Some(kontrol.public_key()));
    assert_eq!(claims.sub.as_deref(), Some("alice"));
}
