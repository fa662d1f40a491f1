//! What the web page reads from storage — `Storage::get_all` and `Storage::watch_all`, the
//! whole registry without a query — on every backend (real PostgreSQL and etcd started by
//! the harness), and the page's feed across two Kontrol replicas sharing a store.
#![allow(clippy::unwrap_used)]

#[allow(unused_macros, unused_imports)]
mod kontrol_common;
#[allow(unused_macros, unused_imports)]
mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kontrol::storage::{Registration, WatchAction};
use kontrol::web::WebEvent;
use kontrol::Kontrol;
use kontrol_common::{key_for, kite, kite_key_auth, test_config};
use serde_json::json;
use support::TestEnv;

const WAIT: Duration = Duration::from_secs(10);

fn registration(user: &str, name: &str) -> Registration {
    Registration {
        kite: kite(user, name),
        url: format!("http://127.0.0.1:7000/{name}"),
        key_id: "key".into(),
    }
}

async fn whole_registry(env: TestEnv) {
    let storage = env.connect().await;
    assert!(storage.get_all().await.unwrap().is_empty());
    let ttl = Duration::from_secs(60);
    // Different usernames, environments, names: no query could match them all.
    let a = registration("alice", "math");
    let mut b = registration("bob", "weather");
    b.kite.environment = "staging".into();
    storage.upsert(&a, ttl).await.unwrap();
    storage.upsert(&b, ttl).await.unwrap();
    let mut ids: Vec<String> = storage
        .get_all()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kite.id)
        .collect();
    ids.sort();
    let mut want = vec![a.kite.id.clone(), b.kite.id.clone()];
    want.sort();
    assert_eq!(ids, want);

    let mut watcher = storage.watch_all().await.unwrap();
    let c = registration("carol", "tide");
    storage.upsert(&c, ttl).await.unwrap();
    let ev = tokio::time::timeout(WAIT, watcher.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.action, WatchAction::Register);
    assert_eq!(ev.record.kite, c.kite);
    assert!(storage.delete(&a.kite.id).await.unwrap());
    let ev = tokio::time::timeout(WAIT, watcher.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.action, WatchAction::Deregister);
    assert_eq!(ev.record.kite, a.kite);

    // Expired records are not listed, and their expiry is announced.
    let short = registration("dave", "brief");
    storage
        .upsert(&short, Duration::from_secs(2))
        .await
        .unwrap();
    let ev = tokio::time::timeout(WAIT, watcher.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.action, &ev.record.kite),
        (WatchAction::Register, &short.kite)
    );
    let ev = tokio::time::timeout(WAIT, watcher.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.action, &ev.record.kite),
        (WatchAction::Deregister, &short.kite)
    );
    assert!(!storage
        .get_all()
        .await
        .unwrap()
        .iter()
        .any(|r| r.kite.id == short.kite.id));
}

/// A kite registered through one replica shows up in the page feed of the other.
async fn feed_across_replicas(env: TestEnv) {
    let s1 = Arc::new(env.connect().await);
    let s2 = Arc::new(env.connect().await);
    let k1 = Kontrol::start(test_config(), Arc::clone(&s1))
        .await
        .unwrap();
    let k2 = Kontrol::start(test_config(), Arc::clone(&s2))
        .await
        .unwrap();
    let feed = kontrol::web::feed(&k2).await.unwrap();
    tokio::pin!(feed);
    let Some(WebEvent::Snapshot(first)) = feed.next().await else {
        panic!("the feed starts with a snapshot")
    };
    assert_eq!(first.total, 2, "{first:?}"); // both Kontrols
    let math = kite("alice", "math");
    k1.register(
        &math,
        Some(&kite_key_auth(&key_for(&k1, "alice"))),
        Some(&json!("http://127.0.0.1:7001/kite")),
    )
    .await
    .unwrap();
    let next = tokio::time::timeout(WAIT, feed.next())
        .await
        .unwrap()
        .unwrap();
    let WebEvent::Register(change) = next else {
        panic!("expected REGISTER, got {next:?}")
    };
    assert_eq!(change.entry.kite, math);
    k1.deregister(&math.id).await.unwrap();
    let next = tokio::time::timeout(WAIT, feed.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&next, WebEvent::Deregister(c) if c.entry.kite == math),
        "{next:?}"
    );
    k1.shutdown().await;
    k2.shutdown().await;
    // Kontrol's shutdown ends the feed.
    assert!(tokio::time::timeout(WAIT, feed.next())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_whole_registry() {
    whole_registry(support::embedded_env().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_whole_registry() {
    whole_registry(support::postgres_env().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_whole_registry() {
    whole_registry(support::etcd_env().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_feed_across_replicas() {
    feed_across_replicas(support::postgres_env().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_feed_across_replicas() {
    feed_across_replicas(support::etcd_env().await).await;
}
