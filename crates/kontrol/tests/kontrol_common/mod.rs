//! Helpers shared by the Kontrol tests: a Kontrol over a test store, kite identities and
//! kite keys, a verifier as a target kite would run it, deadline polling, and a minimal raw
//! HTTP/1.1 client (to check bytes exactly).
#![allow(dead_code, clippy::unwrap_used)]

pub mod suite;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kite::auth::{issue_kite_key, AuthSettings, Authenticator, KeyPair};
use kite_protocol::{Authentication, Kite};
use kontrol::storage::Storage;
use kontrol::{Kontrol, KontrolConfig, WatchSink};
use serde_json::Value;

use crate::support::TestEnv;

pub const KONTROL_URL: &str = "http://127.0.0.1:4000/kite";

/// A configuration with short timings and small keys: heartbeat 1 s, grace 1 s (a silent
/// kite is gone after 2 s, the shortest etcd lease), 1024-bit keys.
pub fn test_config() -> KontrolConfig {
    let mut c = KontrolConfig::new("kontrol", KONTROL_URL);
    c.key_bits = 1024;
    c.heartbeat_interval = Duration::from_secs(1);
    c.heartbeat_grace = Duration::from_secs(1);
    c
}

/// Connects to the test store and starts a Kontrol on it.
pub async fn start(env: &TestEnv, config: KontrolConfig) -> (Kontrol, Arc<Storage>) {
    let storage = Arc::new(env.connect().await);
    let kontrol = Kontrol::start(config, Arc::clone(&storage))
        .await
        .unwrap_or_else(|e| panic!("start kontrol: {e}"));
    (kontrol, storage)
}

/// Shuts `kontrol` down and closes its store once Kontrol has let go of it (the embedded
/// store admits one process at a time).
pub async fn stop(kontrol: Kontrol, storage: Arc<Storage>) {
    kontrol.shutdown().await;
    drop(kontrol);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut storage = storage;
    loop {
        match Arc::try_unwrap(storage) {
            Ok(s) => {
                s.close().await.unwrap();
                return;
            }
            Err(s) => {
                assert!(
                    Instant::now() < deadline,
                    "kontrol did not release its storage"
                );
                storage = s;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A kite identity `/user/prod/name/1.0.0/eu/host/<random id>`.
pub fn kite(user: &str, name: &str) -> Kite {
    Kite {
        username: user.into(),
        environment: "prod".into(),
        name: name.into(),
        version: "1.0.0".into(),
        region: "eu".into(),
        hostname: "host".into(),
        id: uuid::Uuid::new_v4().to_string(),
    }
}

/// A kite key for `user` signed by `pair` as Kontrol would issue it.
pub fn kite_key(pair: &KeyPair, user: &str) -> String {
    issue_kite_key(pair, "kontrol", user, KONTROL_URL, SystemTime::now()).unwrap()
}

/// A kite key for `user` signed by Kontrol's current pair.
pub fn key_for(kontrol: &Kontrol, user: &str) -> String {
    kite_key(&kontrol.current_key_pair(), user)
}

pub fn kite_key_auth(key: &str) -> Authentication {
    Authentication::new("kiteKey", key)
}

/// What a target kite trusting this Kontrol's current key would run to check tokens.
pub fn verifier(kontrol: &Kontrol) -> Authenticator {
    verifier_with_key(kontrol.public_key().as_str())
}

pub fn verifier_with_key(public_pem: &str) -> Authenticator {
    Authenticator::new(AuthSettings {
        kontrol_user: "kontrol".into(),
        kontrol_key: public_pem.into(),
        ..AuthSettings::default()
    })
    .unwrap()
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A watch sink feeding a channel.
pub fn channel_sink() -> (WatchSink, tokio::sync::mpsc::Receiver<Value>) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let sink: WatchSink = Box::new(move |v| {
        let tx = tx.clone();
        Box::pin(async move { tx.send(v).await.is_ok() })
    });
    (sink, rx)
}

/// Receives the next watch event within `deadline`.
pub async fn next_event(rx: &mut tokio::sync::mpsc::Receiver<Value>, deadline: Duration) -> Value {
    tokio::time::timeout(deadline, rx.recv())
        .await
        .expect("no watch event in time")
        .expect("watch channel closed")
}

#[allow(unused_imports)]
pub use kite_testkit::vectors::read as read_vector;

#[allow(unused_imports)]
pub use kite_testkit::http::RawResponse;

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the whole response.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> RawResponse {
    let headers: Vec<(&str, &str)> = content_type
        .map(|ct| vec![("Content-Type", ct)])
        .unwrap_or_default();
    kite_testkit::http::request(addr, method, path, &headers, body).await
}

/// Serves `app` on 127.0.0.1:0; returns the address. The server ends with the runtime.
pub async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}
