//! Several Kontrol URLs: `KITE_KONTROL_URL` list parsing and the order URLs are tried, with
//! two Kontrols in process (127.0.0.1, ephemeral ports) over one embedded storage: a dead
//! URL first is skipped, the kite registers with the next; when the Kontrol it is on stops,
//! it re-registers with the other; a watch follows. (Real processes over PostgreSQL and
//! etcd: crates/kontrol/tests/failover.rs.)
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kite::kitekey::KiteKey;
use kite::protocol::KontrolQuery;
use kite::{Config, Kite, WatchAction};
use kontrol::kite_service::KontrolKite;
use kontrol::storage::{EmbeddedConfig, Storage, StorageConfig};
use kontrol::KontrolConfig;

#[test]
fn kite_kontrol_url_lists() {
    let env = |v: &str| HashMap::from([("KITE_KONTROL_URL".to_owned(), v.to_owned())]);
    let mut c = Config::default();
    c.apply_env(&env(
        " http://a:4000/kite , http://b:4000/kite,,http://a:4000/kite,",
    ))
    .unwrap();
    assert_eq!(c.kontrol_url, "http://a:4000/kite");
    assert_eq!(c.kontrol_urls, ["http://a:4000/kite", "http://b:4000/kite"]);
    assert_eq!(c.kontrol_url_list(), c.kontrol_urls);

    // One URL, as before.
    let mut c = Config::default();
    c.apply_env(&env("http://a:4000/kite")).unwrap();
    assert_eq!(c.kontrol_url, "http://a:4000/kite");
    assert_eq!(c.kontrol_url_list(), ["http://a:4000/kite"]);

    // Only commas: ignored like an empty value.
    let mut c = Config {
        kontrol_url: "http://k/kite".into(),
        ..Default::default()
    };
    c.apply_env(&env(" , ")).unwrap();
    assert_eq!(c.kontrol_url_list(), ["http://k/kite"]);

    // Nothing configured: no URL.
    assert!(Config::default().kontrol_url_list().is_empty());

    // Only `kontrol_urls` set programmatically.
    let c = Config {
        kontrol_urls: vec!["http://x/kite".into(), "http://y/kite".into()],
        ..Default::default()
    };
    assert_eq!(c.kontrol_url_list(), ["http://x/kite", "http://y/kite"]);
}

/// The kite.key's `kontrolURL` is the default; `KITE_KONTROL_URL` replaces it.
#[test]
fn kite_key_url_is_the_default() {
    let home = tempfile::tempdir().unwrap();
    let pair = kite::auth::KeyPair::generate(1024).unwrap();
    let key = kite::auth::issue_kite_key(
        &pair,
        "kontrol",
        "alice",
        "http://k:4000/kite",
        SystemTime::now(),
    )
    .unwrap();
    kite::kitekey::write(home.path(), &key).unwrap();
    let c = Config::load_from(Some(home.path()), &HashMap::new()).unwrap();
    assert_eq!(c.kontrol_url_list(), ["http://k:4000/kite"]);
    let env = HashMap::from([(
        "KITE_KONTROL_URL".to_owned(),
        "http://a/kite,http://b/kite".to_owned(),
    )]);
    let c = Config::load_from(Some(home.path()), &env).unwrap();
    assert_eq!(c.kontrol_url_list(), ["http://a/kite", "http://b/kite"]);
}

struct Replica {
    server: Arc<KontrolKite>,
    url: String,
}

/// Two Kontrols over one embedded storage (1 s heartbeats, 2 s grace).
async fn two_kontrols(dir: &std::path::Path) -> (Replica, Replica) {
    let mut storage_config = EmbeddedConfig::new(dir.join("data"));
    storage_config.sweep_interval = Duration::from_millis(200);
    let storage = Arc::new(
        Storage::connect(&StorageConfig::Embedded(storage_config))
            .await
            .unwrap(),
    );
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let mut config = KontrolConfig::new("kontrol", "");
        config.heartbeat_interval = Duration::from_secs(1);
        config.heartbeat_grace = Duration::from_secs(2);
        config.key_bits = 1024;
        let server = KontrolKite::spawn_local(config, storage.clone())
            .await
            .unwrap();
        let url = server.url().unwrap();
        replicas.push(Replica { server, url });
    }
    let b = replicas.pop().unwrap();
    let a = replicas.pop().unwrap();
    (a, b)
}

/// A URL nothing listens on.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}/kite")
}

fn kite_with(replica: &Replica, name: &str, urls: &[&str]) -> Kite {
    let raw = replica.server.kontrol().issue_kite_key("alice").unwrap();
    let key = KiteKey::parse(&raw, SystemTime::now()).unwrap();
    let mut config = Config::default();
    config.apply_kite_key(&key);
    let env = HashMap::from([("KITE_KONTROL_URL".to_owned(), urls.join(","))]);
    config.apply_env(&env).unwrap();
    config.ip = "127.0.0.1".into();
    config.environment = "failover".into();
    config.timeout = Duration::from_secs(5);
    Kite::with_config(name, "1.0.0", config).unwrap()
}

fn query() -> KontrolQuery {
    KontrolQuery {
        username: "alice".into(),
        environment: "failover".into(),
        name: "math".into(),
        ..Default::default()
    }
}

async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_are_tried_in_turn_and_the_kite_fails_over() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_kontrols(dir.path()).await;
    let dead = dead_url();

    // A dead URL first: a one-shot call tries the next one.
    let looker = kite_with(&a, "looker", &[&dead, &b.url]);
    assert!(looker.get_kites(&query()).await.unwrap().is_empty());
    assert_eq!(looker.kontrol().url(), b.url);
    assert_eq!(looker.kontrol().urls(), [dead.clone(), b.url.clone()]);

    // Nothing reachable: the error names every URL.
    let nowhere = kite_with(&a, "nowhere", &[&dead, &dead_url()]);
    let err = nowhere.get_kites(&query()).await.unwrap_err();
    assert!(err.message.contains(&dead), "{err}");

    // The math kite: A first. It registers with A.
    let math = kite_with(&a, "math", &[&a.url, &b.url]);
    math.handle_func("square", |r: kite::Request| async move {
        let x: f64 = r.args().one()?;
        Ok(x * x)
    });
    math.listen().await.unwrap();
    let math_url = math.url().unwrap();
    let registrations = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let kontrol = math.kontrol();
        let seen = registrations.clone();
        let me = kontrol.clone();
        kontrol.on_register(move |_| seen.lock().unwrap().push(me.url()));
    }
    let first = math.register_forever(&math_url).await;
    assert_eq!(first.url, math_url);
    let math_kontrol = math.kontrol();
    let math_id = math.id().to_owned();
    assert_eq!(math_kontrol.url(), a.url);
    let math_handle = math.shutdown_handle();
    tokio::spawn(async move { math.serve().await });
    assert_eq!(
        registrations.lock().unwrap().as_slice(),
        std::slice::from_ref(&a.url)
    );

    // A kite registered over HTTP, A first.
    let http_kite = kite_with(&a, "http-math", &[&a.url, &b.url]);
    let http_registrations = Arc::new(std::sync::Mutex::new(0usize));
    {
        let seen = http_registrations.clone();
        http_kite
            .kontrol()
            .on_register(move |_| *seen.lock().unwrap() += 1);
    }
    http_kite
        .register_http("http://127.0.0.1:9/kite")
        .await
        .unwrap();
    let http_query = KontrolQuery {
        name: "http-math".into(),
        ..query()
    };
    let found = looker.kontrol().get_kites_raw(&http_query).await.unwrap();
    assert_eq!(found.len(), 1);

    // A watch through B (the looker is on B) and one through A.
    let watching = kite_with(&a, "watcher", &[&a.url, &b.url]);
    let mut watcher = watching.watch_kites(&query()).await.unwrap();
    assert_eq!(watching.kontrol().url(), a.url);
    assert_eq!(watcher.kites().len(), 1);

    // A stops: math re-registers with B, keeping its id and URL; the watch follows.
    a.server.shutdown().await;
    until("math registered with B", || {
        let r = registrations.lock().unwrap().clone();
        let b = b.url.clone();
        async move { (r.last() == Some(&b)).then_some(()) }
    })
    .await;
    assert_eq!(math_kontrol.url(), b.url);
    let found = looker.kontrol().get_kites_raw(&query()).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].kite.id.as_str(), found[0].url.as_str()),
        (math_id.as_str(), math_url.as_str())
    );

    let e = tokio::time::timeout(Duration::from_secs(30), watcher.next_event())
        .await
        .expect("an event after the switch")
        .unwrap()
        .unwrap();
    assert_eq!(e.action, WatchAction::Register);
    assert_eq!(e.kite.id, math_id);
    assert_eq!(watcher.rewatches(), 1);
    assert_eq!(watching.kontrol().url(), b.url);

    // The HTTP kite's heartbeat to A fails: it registers with B.
    until("the HTTP kite registered again", || {
        let n = *http_registrations.lock().unwrap();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let found = looker.kontrol().get_kites_raw(&http_query).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kite.id, http_kite.id());
    http_kite.kontrol().close().await;

    // Through B, calling math with the token works.
    let client = looker.get_kite(&query()).await.unwrap();
    client.dial().await.unwrap();
    assert_eq!(
        client.tell("square", &(7,)).await.unwrap().as_f64(),
        Some(49.0)
    );

    // Closing the Kontrol client ends the watch stream.
    watching.kontrol().close().await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(_e) = watcher.next_event().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream ends after close");

    math_kontrol.close().await;
    math_handle.shutdown();
    looker.kontrol().close().await;
    b.server.shutdown().await;
}
