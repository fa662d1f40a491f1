//! Kontrol scale-out failover with real processes (issue #5): two `kontrol` binaries over
//! the same PostgreSQL (or etcd), a kite process configured with both URLs
//! (`KITE_KONTROL_URL=A,B`) and `register_forever`. Kontrol A, the one the kite is on, is
//! killed (SIGKILL); the kite reconnects to B and registers again, stays listed through
//! the switch (polled via B), keeps its id and URL, and a watch opened through A goes on
//! through B with consistent events. Also: `/heartbeat` answers `registeragain` for a kite
//! registered over its kite connection, as Go's Kontrol does.
//!
//! The kite process is this test binary started again with `FAILOVER_CHILD` set (see
//! `failover_child_kite`): a real, separate process.
#![allow(clippy::unwrap_used)]

#[allow(unused_macros, unused_imports)]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kite::protocol::KontrolQuery;
use kite::{Kite, WatchAction, WatchEvent, Watcher};
use kite_testkit::process::TestProcess;
use kontrol::storage::StorageConfig;

const KONTROL: &str = env!("CARGO_BIN_EXE_kontrol");
/// The child kite's name.
const NAME: &str = "failover-math";
/// Kontrol's timing in these tests: heartbeat every 1 s, a registration lives 1 s + 3 s
/// after its last heartbeat.
const HEARTBEAT: &str = "1s";
const GRACE: Duration = Duration::from_secs(3);
const DEADLINE: Duration = Duration::from_secs(60);

/// The storage arguments of the `kontrol` binary for `config`.
fn storage_args(config: &StorageConfig) -> Vec<String> {
    match config {
        StorageConfig::Postgres(c) => vec![
            "--storage".into(),
            "postgres".into(),
            "--postgres-url".into(),
            c.conninfo.clone(),
        ],
        StorageConfig::Etcd(c) => vec![
            "--storage".into(),
            "etcd".into(),
            "--machines".into(),
            c.endpoints.join(","),
        ],
        other => panic!("not a shared storage: {other:?}"),
    }
}

/// Starts a `kontrol` process on 127.0.0.1 (free port) over `storage`; returns it and its
/// `/kite` URL (from its banner).
fn start_kontrol(storage: &[String], home: &Path) -> (TestProcess, String) {
    let mut p = TestProcess::spawn(
        "kontrol",
        Command::new(KONTROL)
            .args(["--listen", "127.0.0.1:0", "--heartbeat-interval", HEARTBEAT])
            .args(["--heartbeat-grace", &format!("{}s", GRACE.as_secs())])
            .args(storage)
            .env("HOME", home)
            .env("KITE_HOME", home.join(".kite"))
            .env("RUST_LOG", "warn")
            .env_remove("KONTROL_PORT")
            .env_remove("KONTROL_DATADIR"),
    );
    let url = p.wait_for(DEADLINE, |l| {
        l.strip_prefix("KITE_KONTROL_URL=").map(str::to_owned)
    });
    (p, url)
}

/// Writes a kite key for `alice` into `home/.kite` with `kontrol --initial`.
fn issue_kite_key(storage: &[String], home: &Path, kontrol_url: &str) {
    let out = Command::new(KONTROL)
        .args([
            "--initial",
            "--username",
            "alice",
            "--kontrolurl",
            kontrol_url,
        ])
        .args(storage)
        .env("HOME", home)
        .env("KITE_HOME", home.join(".kite"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kontrol --initial: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the child kite (this binary, `failover_child_kite`) with `KITE_KONTROL_URL`
/// = `urls`; returns it, its URL and its id (from its ready line).
fn start_child(home: &Path, urls: &str, environment: &str) -> (TestProcess, String, String) {
    let exe = std::env::current_exe().unwrap();
    let mut p = TestProcess::spawn(
        "child kite",
        Command::new(exe)
            .args(["failover_child_kite", "--exact", "--nocapture"])
            .env("FAILOVER_CHILD", "1")
            .env("KITE_HOME", home.join(".kite"))
            .env("KITE_KONTROL_URL", urls)
            .env("KITE_ENVIRONMENT", environment)
            .env("KITE_IP", "127.0.0.1")
            .env("KITE_PORT", "0")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "kite=info".into()),
            ),
    );
    let (url, id) = p.wait_for(DEADLINE, |l| {
        let rest = l.strip_prefix("CHILD READY ")?;
        let (url, id) = rest.split_once(' ')?;
        Some((url.to_owned(), id.to_owned()))
    });
    (p, url, id)
}

/// The kite run by the child process: serves `square`, registers with `register_forever`
/// and prints `CHILD REGISTERED <kontrol url>` after every (re-)registration.
#[test]
fn failover_child_kite() {
    if std::env::var_os("FAILOVER_CHILD").is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut k = Kite::load(NAME, "1.0.0").unwrap();
        k.config.disable_authentication = true;
        k.handle_func("square", |r: kite::Request| async move {
            let a: f64 = r.args().one()?;
            Ok(a * a)
        });
        k.listen().await.unwrap();
        let url = k.url().unwrap();
        let kontrol = k.kontrol();
        let me = kontrol.clone();
        kontrol.on_register(move |_| println!("CHILD REGISTERED {}", me.url()));
        println!("CHILD READY {url} {}", k.id());
        drop(k.register_forever(&url));
        k.run().await.unwrap();
    });
}

/// A kite in this process using `urls` as its Kontrol list, with alice's kite key.
fn local_kite(home: &Path, name: &str, urls: &str) -> Kite {
    let env = HashMap::from([("KITE_KONTROL_URL".to_owned(), urls.to_owned())]);
    let config = kite::Config::load_from(Some(&home.join(".kite")), &env).unwrap();
    Kite::with_config(name, "1.0.0", config).unwrap()
}

fn query(environment: &str) -> KontrolQuery {
    KontrolQuery {
        username: "alice".into(),
        environment: environment.into(),
        name: NAME.into(),
        ..Default::default()
    }
}

/// (id, url) of the kites `kite` finds for `q` (through its Kontrol).
async fn listed(kite: &Kite, q: &KontrolQuery) -> Result<Vec<(String, String)>, kite::KiteError> {
    let kites = kite.kontrol().get_kites_raw(q).await?;
    Ok(kites.into_iter().map(|k| (k.kite.id, k.url)).collect())
}

async fn wait_listed(kite: &Kite, q: &KontrolQuery, id: &str, url: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(found) = listed(kite, q).await {
            if found.iter().any(|(i, u)| i == id && u == url) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{id} never listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next watch event matching `f`, with a deadline.
async fn next_matching(
    watcher: &mut Watcher,
    what: &str,
    mut f: impl FnMut(&WatchEvent) -> bool,
) -> WatchEvent {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, watcher.next_event()).await {
            Ok(Some(Ok(e))) if f(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("watch ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// `GET <base>/heartbeat?id=<id>` on a Kontrol: the body.
async fn http_heartbeat(kontrol_url: &str, id: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = kontrol_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
    let req =
        format!("GET /heartbeat?id={id} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()
}

/// The scenario, over a storage two Kontrol processes share.
async fn failover(storage: StorageConfig, environment: &str) {
    let storage = storage_args(&storage);
    let home = tempfile::tempdir().unwrap();
    let (mut kontrol_a, url_a) = start_kontrol(&storage, home.path());
    // B starts once A has created the key pair in the storage; both then share it.
    let (_kontrol_b, url_b) = start_kontrol(&storage, home.path());
    assert_ne!(url_a, url_b);
    issue_kite_key(&storage, home.path(), &url_a);
    let both = format!("{url_a},{url_b}");
    let q = query(environment);

    // The kite process, A first in its list: it registers with A.
    let (mut child, child_url, child_id) = start_child(home.path(), &both, environment);
    let on = child.wait_for(DEADLINE, |l| {
        l.strip_prefix("CHILD REGISTERED ").map(str::to_owned)
    });
    assert_eq!(on, url_a, "the kite registers with the first Kontrol");

    let via_a = local_kite(home.path(), "observer-a", &url_a);
    let via_b = local_kite(home.path(), "observer-b", &url_b);
    wait_listed(&via_a, &q, &child_id, &child_url).await;
    wait_listed(&via_b, &q, &child_id, &child_url).await;

    // Go's /heartbeat keeps only HTTP registrations alive: for a kite registered over its
    // kite connection both Kontrols say `registeragain`, and it stays listed.
    assert_eq!(http_heartbeat(&url_a, &child_id).await, "registeragain");
    assert_eq!(http_heartbeat(&url_b, &child_id).await, "registeragain");

    // A kite registered over HTTP with A: A answers `pong`, B (which did not take the
    // registration) `registeragain`, as two Go Kontrols would.
    let http_kite = local_kite(home.path(), "http-kite", &url_a);
    http_kite
        .register_http("http://127.0.0.1:9/kite")
        .await
        .unwrap();
    assert_eq!(http_heartbeat(&url_a, http_kite.id()).await, "pong");
    assert_eq!(
        http_heartbeat(&url_b, http_kite.id()).await,
        "registeragain"
    );
    http_kite.kontrol().close().await;

    // A watch opened through A (the first of the watcher's list).
    let watching = local_kite(home.path(), "watcher", &both);
    let mut watcher = watching.watch_kites(&q).await.unwrap();
    assert_eq!(watching.kontrol().url(), url_a);
    let initial: Vec<_> = watcher
        .kites()
        .iter()
        .map(|k| (k.kite.id.clone(), k.url.clone()))
        .collect();
    assert_eq!(initial, vec![(child_id.clone(), child_url.clone())]);

    // Poll getKites via B through the switch: (when, listed with the same id and URL).
    let samples: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let stop = stop_flag::Stop::default();
    let poller = {
        let (samples, stop, q) = (samples.clone(), stop.clone(), q.clone());
        let (id, url) = (child_id.clone(), child_url.clone());
        let via_b = local_kite(home.path(), "poller-b", &url_b);
        tokio::spawn(async move {
            while !stop.is_set() {
                let ok = match listed(&via_b, &q).await {
                    Ok(found) => found.iter().any(|(i, u)| *i == id && *u == url),
                    Err(e) => panic!("getKites via B failed: {e}"),
                };
                samples.lock().unwrap().push((Instant::now(), ok));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The poller sees the kite before the kill.
    let deadline = Instant::now() + DEADLINE;
    while !samples.lock().unwrap().iter().any(|(_, ok)| *ok) {
        assert!(Instant::now() < deadline, "the poller never saw the kite");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Kill A: the kite reconnects to B and registers there again.
    let killed = Instant::now();
    kontrol_a.kill();
    let on = child.wait_for(DEADLINE, |l| {
        l.strip_prefix("CHILD REGISTERED ").map(str::to_owned)
    });
    assert_eq!(on, url_b, "the kite moved to the second Kontrol");
    let switched = Instant::now();

    // The watch went on through B: REGISTER again for the kite (same id, URL).
    let e = next_matching(&mut watcher, "the re-emitted REGISTER", |e| {
        e.action == WatchAction::Register
    })
    .await;
    assert_eq!(
        (e.kite.id.as_str(), e.url.as_str()),
        (child_id.as_str(), child_url.as_str())
    );
    assert!(e.token.is_some(), "re-emitted with a fresh token");
    assert_eq!(watcher.rewatches(), 1);
    assert_eq!(watching.kontrol().url(), url_b);

    // Polling goes on for more than a registration lifetime after the switch: the kite
    // must stay listed by B on its own (heartbeats to B), not by A's old record.
    let until = switched + GRACE + Duration::from_secs(2);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.set();
    poller.await.unwrap();
    let samples = samples.lock().unwrap().clone();
    let mut longest_gap = Duration::ZERO;
    let mut gap_start: Option<Instant> = None;
    for &(at, ok) in &samples {
        match (ok, gap_start) {
            (false, None) => gap_start = Some(at),
            (true, Some(start)) => {
                longest_gap = longest_gap.max(at - start);
                gap_start = None;
            }
            _ => {}
        }
    }
    assert!(gap_start.is_none(), "not listed at the end: {samples:?}");
    assert!(
        longest_gap < GRACE,
        "unlisted for {longest_gap:?} (grace {GRACE:?})"
    );
    assert!(samples.iter().any(|(at, ok)| *ok && *at < killed));
    assert!(samples
        .iter()
        .any(|(at, ok)| *ok && *at > until - Duration::from_secs(1)));
    eprintln!(
        "failover: switched {:?} after the kill; longest unlisted gap {longest_gap:?}; {} samples",
        switched - killed,
        samples.len()
    );
    assert_eq!(
        listed(&via_b, &q).await.unwrap(),
        vec![(child_id.clone(), child_url.clone())]
    );

    // Consistent events through B after the switch: a second kite comes (REGISTER) and
    // goes (killed: DEREGISTER once its registration lapses).
    let (mut second, second_url, second_id) = start_child(home.path(), &both, environment);
    let on = second.wait_for(DEADLINE, |l| {
        l.strip_prefix("CHILD REGISTERED ").map(str::to_owned)
    });
    assert_eq!(on, url_b, "A is down: the second kite registers with B");
    let e = next_matching(&mut watcher, "the second kite's REGISTER", |e| {
        e.kite.id == second_id
    })
    .await;
    assert_eq!(
        (e.action, e.url.as_str()),
        (WatchAction::Register, second_url.as_str())
    );
    second.kill();
    let e = next_matching(&mut watcher, "the second kite's DEREGISTER", |e| {
        e.kite.id == second_id
    })
    .await;
    assert_eq!(e.action, WatchAction::Deregister);
    // The first kite was never reported gone.
    assert_eq!(
        listed(&via_b, &q).await.unwrap(),
        vec![(child_id, child_url)]
    );

    watcher.cancel().await.unwrap();
    watching.kontrol().close().await;
    via_a.kontrol().close().await;
    via_b.kontrol().close().await;
}

/// A tiny stop flag (the crate has no tokio-util dependency).
mod stop_flag {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[derive(Clone, Default)]
    pub struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub fn set(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_over_postgres() {
    let env = support::postgres_env().await;
    failover(env.config.clone(), "failover-pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_over_etcd() {
    support::init_tracing();
    // A server of its own: the kontrol binary uses etcd's default key prefix.
    let server = tokio::task::spawn_blocking(kite_testkit::services::Etcd::start)
        .await
        .unwrap();
    let storage = StorageConfig::Etcd(kontrol::storage::EtcdConfig::new([server.endpoint()]));
    failover(storage, "failover-etcd").await;
    drop(server);
}
