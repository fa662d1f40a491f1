//! The kite side of Kontrol against our Kontrol, in process on 127.0.0.1:<ephemeral> over
//! embedded storage in a temporary directory: register → getKites → square with a token;
//! `kite.heartbeat` keeps a kite listed and its absence lets it expire; watch events;
//! token renewal against Kontrol's short-lived tokens; HTTP registration.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use futures_util::StreamExt;
use kite::kitekey::KiteKey;
use kite::protocol::KontrolQuery;
use kite::{Kite, KontrolSettings, WatchAction};
use kontrol::kite_service::KontrolKite;
use kontrol::storage::{EmbeddedConfig, Storage, StorageConfig};
use kontrol::KontrolConfig;

struct Setup {
    server: Arc<KontrolKite>,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let s = self.server.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { s.shutdown().await });
        }
    }
}

/// Kontrol with 1 s heartbeats and 1 s grace; `adjust` may change more.
async fn start_kontrol(adjust: impl FnOnce(&mut KontrolConfig)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut storage_config = EmbeddedConfig::new(dir.path().join("data"));
    storage_config.sweep_interval = Duration::from_millis(200);
    let storage = Arc::new(
        Storage::connect(&StorageConfig::Embedded(storage_config))
            .await
            .unwrap(),
    );
    let mut config = KontrolConfig::new("kontrol", "");
    config.heartbeat_interval = Duration::from_secs(1);
    config.heartbeat_grace = Duration::from_secs(1);
    config.key_bits = 1024;
    adjust(&mut config);
    let server = KontrolKite::spawn_local(config, storage).await.unwrap();
    let url = server.url().unwrap();
    Setup {
        server,
        url,
        _dir: dir,
    }
}

/// A kite of `username` with a kite key from this Kontrol (configured as a full load
/// would: username, Kontrol URL, key and user from the key).
fn user_kite(setup: &Setup, name: &str, username: &str) -> Kite {
    let raw = setup.server.kontrol().issue_kite_key(username).unwrap();
    let key = KiteKey::parse(&raw, SystemTime::now()).unwrap();
    let mut config = kite::Config::default();
    config.apply_kite_key(&key);
    assert_eq!(config.kontrol_url, setup.url);
    config.ip = "127.0.0.1".into();
    config.environment = "test".into();
    config.timeout = Duration::from_secs(5);
    Kite::with_config(name, "1.0.0", config).unwrap()
}

async fn math_server(setup: &Setup, username: &str) -> (Kite, String) {
    let k = user_kite(setup, "math", username);
    math_methods(&k);
    k.listen().await.unwrap();
    let url = k.url().unwrap();
    (k, url)
}

fn spawn_serve(k: Kite) -> kite::ShutdownHandle {
    let h = k.shutdown_handle();
    tokio::spawn(async move { k.serve().await });
    h
}

fn math_query(username: &str) -> KontrolQuery {
    KontrolQuery {
        username: username.into(),
        environment: "test".into(),
        name: "math".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_discover_and_call_with_a_token() {
    let setup = start_kontrol(|_| {}).await;
    let (math, url) = math_server(&setup, "alice").await;
    let kontrol = math.kontrol();
    let r = math.register(&url).await.unwrap();
    assert_eq!(r.url, url);
    let alice_id = math.id().to_string();
    let handle = spawn_serve(math);

    let bob = user_kite(&setup, "client", "bob");
    let clients = bob.get_kites(&math_query("alice")).await.unwrap();
    assert_eq!(clients.len(), 1);
    let c = &clients[0];
    assert_eq!(c.remote_kite().unwrap().id, alice_id);
    assert_eq!(c.auth().unwrap().kind, "token");
    c.dial().await.unwrap();
    assert_eq!(c.tell("square", &(4,)).await.unwrap().as_f64(), Some(16.0));

    // getToken for the same kite; getKey is Kontrol's key.
    let token = bob.get_token(&math_query("alice")).await.unwrap();
    assert_eq!(
        token,
        c.auth().unwrap().key,
        "cached token shared with getKites"
    );
    let key = bob.get_key().await.unwrap();
    assert_eq!(key.trim(), setup.server.kontrol().public_key().trim());

    // The heartbeat keeps it listed well past interval + grace.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(bob.get_kites(&math_query("alice")).await.unwrap().len(), 1);

    // Without heartbeats (Kontrol connection gone) it expires.
    kontrol.close().await;
    let mut gone = false;
    for _ in 0..100 {
        if bob
            .get_kites(&math_query("alice"))
            .await
            .unwrap()
            .is_empty()
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the kite expired once its heartbeats stopped");
    handle.shutdown();
    bob.kontrol().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_register_and_deregister() {
    let setup = start_kontrol(|_| {}).await;
    let bob = user_kite(&setup, "client", "bob");
    let mut watcher = bob.watch_kites(&math_query("alice")).await.unwrap();
    assert!(watcher.kites().is_empty());
    assert!(watcher.id().is_some());

    let (math, url) = math_server(&setup, "alice").await;
    let kontrol = math.kontrol();
    math.register(&url).await.unwrap();
    let id = math.id().to_string();
    let handle = spawn_serve(math);

    let ev = tokio::time::timeout(Duration::from_secs(10), watcher.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.action, WatchAction::Register);
    assert_eq!(ev.kite.id, id);
    assert_eq!(ev.url, url);
    // A client from the event works.
    let c = bob.kontrol().client_for(&ev.to_kite_with_token());
    c.dial().await.unwrap();
    assert_eq!(c.tell("square", &(5,)).await.unwrap().as_f64(), Some(25.0));

    kontrol.close().await;
    let ev = tokio::time::timeout(Duration::from_secs(10), watcher.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.action, WatchAction::Deregister);
    assert_eq!(ev.kite.id, id);

    watcher.cancel().await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || setup
            .server
            .kontrol()
            .watcher_count()
            == 0)
        .await
    );
    handle.shutdown();
    bob.kontrol().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_renewed() {
    // Tokens live 3 s; Kontrol caches them for 3 s too (no leeway), so the first renewal
    // gets the cached token back and has to force a new one.
    let setup = start_kontrol(|c| {
        c.token_ttl = Duration::from_secs(3);
        c.token_leeway = Duration::ZERO;
    })
    .await;
    let (math, url) = math_server(&setup, "alice").await;
    math.register(&url).await.unwrap();
    let math_kontrol = math.kontrol();
    let handle = spawn_serve(math);

    let bob = user_kite(&setup, "client", "bob");
    bob.kontrol().set_settings(KontrolSettings {
        token_retry: Duration::from_millis(300),
        ..KontrolSettings::default()
    });
    let c = bob.get_kite(&math_query("alice")).await.unwrap();
    let first = c.auth().unwrap().key;
    let renewals = counter();
    let r = renewals.clone();
    c.on_token_renew(move |_| {
        r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    c.dial().await.unwrap();
    assert_eq!(c.tell("square", &(2,)).await.unwrap().as_f64(), Some(4.0));
    // Well past the first token's expiry, calls still work with renewed tokens.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(get(&renewals) >= 1);
    assert_ne!(c.auth().unwrap().key, first);
    assert_eq!(c.tell("square", &(3,)).await.unwrap().as_f64(), Some(9.0));
    c.close().await;
    math_kontrol.close().await;
    handle.shutdown();
    bob.kontrol().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_registration_keeps_the_kite_listed() {
    let setup = start_kontrol(|_| {}).await;
    let (math, url) = math_server(&setup, "alice").await;
    let r = math.register_http(&url).await.unwrap();
    assert_eq!(r.heartbeat_interval, 1);
    let kontrol = math.kontrol();
    let handle = spawn_serve(math);
    let bob = user_kite(&setup, "client", "bob");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = bob.get_kite(&math_query("alice")).await.unwrap();
    c.dial().await.unwrap();
    assert_eq!(c.tell("square", &(6,)).await.unwrap().as_f64(), Some(36.0));
    kontrol.close().await;
    handle.shutdown();
    bob.kontrol().close().await;
}

/// A child process killed when dropped.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples").join(name)
}

/// The seed's discovery example: `first` registers itself, `second` finds it by
/// `{username, environment, name: "first"}` and prints square(4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_examples_run() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let setup = start_kontrol(|_| {}).await;
    let home = tempfile::tempdir().unwrap();
    let key = setup.server.kontrol().issue_kite_key("alice").unwrap();
    kite::kitekey::write(home.path(), &key).unwrap();
    let mut server = Proc(
        Command::new(example("discovery_server"))
            .env("KITE_HOME", home.path())
            .env("KITE_PORT", "0")
            .env("KITE_IP", "127.0.0.1")
            .env("KITE_ENVIRONMENT", "examples")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = server.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .expect("server registered in time")
        .unwrap();
    assert!(
        line.starts_with("first kite registered at http://127.0.0.1:"),
        "{line}"
    );
    let out = tokio::task::spawn_blocking({
        let home = home.path().to_owned();
        move || {
            Command::new(example("discovery_client"))
                .env("KITE_HOME", home)
                .env("KITE_ENVIRONMENT", "examples")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "16");
    drop(server);
}
