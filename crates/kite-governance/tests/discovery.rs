//! `dial_kites` against our Kontrol (in process, embedded storage in a temporary
//! directory): the balancer follows Kontrol's watch — kites that register get traffic,
//! kites that go away (their registration expires) get none.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::eventually;
use kite::kitekey::KiteKey;
use kite::protocol::KontrolQuery;
use kite::{Kite, Request};
use kite_governance::{dial_kites, BalancerConfig, ClientConfig, Strategy};
use kontrol::kite_service::KontrolKite;
use kontrol::storage::{EmbeddedConfig, Storage, StorageConfig};
use kontrol::KontrolConfig;
use serde_json::json;

struct Kontrol {
    server: Arc<KontrolKite>,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Kontrol {
    fn drop(&mut self) {
        let s = self.server.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { s.shutdown().await });
        }
    }
}

async fn start_kontrol() -> Kontrol {
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
    let server = KontrolKite::spawn_local(config, storage).await.unwrap();
    let url = server.url().unwrap();
    Kontrol {
        server,
        url,
        _dir: dir,
    }
}

/// A kite of `username` holding a kite key from this Kontrol.
fn user_kite(k: &Kontrol, name: &str, username: &str) -> Kite {
    let raw = k.server.kontrol().issue_kite_key(username).unwrap();
    let key = KiteKey::parse(&raw, SystemTime::now()).unwrap();
    let mut config = kite::Config::default();
    config.apply_kite_key(&key);
    assert_eq!(config.kontrol_url, k.url);
    config.ip = "127.0.0.1".into();
    config.environment = "test".into();
    config.timeout = Duration::from_secs(5);
    Kite::with_config(name, "1.0.0", config).unwrap()
}

/// A registered worker answering its id; returns its Kontrol client (to go away) and id.
async fn worker(k: &Kontrol) -> (kite::KontrolClient, String, kite::ShutdownHandle) {
    let w = user_kite(k, "worker", "alice");
    let id = w.id().to_string();
    let me = id.clone();
    w.handle_func("work", move |_r: Request| {
        let me = me.clone();
        async move { Ok(json!(me)) }
    });
    w.listen().await.unwrap();
    let url = w.url().unwrap();
    w.register(&url).await.unwrap();
    let kontrol = w.kontrol();
    let handle = w.shutdown_handle();
    tokio::spawn(async move { w.serve().await });
    (kontrol, id, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancer_follows_kontrol() {
    let k = start_kontrol().await;
    let (_k1, id1, _h1) = worker(&k).await;
    let (k2, id2, _h2) = worker(&k).await;
    let caller = user_kite(&k, "caller", "bob");
    let query = KontrolQuery {
        username: "alice".into(),
        environment: "test".into(),
        name: "worker".into(),
        ..Default::default()
    };
    let config = ClientConfig {
        balancer: BalancerConfig {
            strategy: Strategy::RoundRobin,
            ..Default::default()
        },
        ..Default::default()
    };
    let client = dial_kites(&caller, query, &config).await.unwrap();
    assert_eq!(&*client.route().to, "worker");
    assert_eq!(&*client.route().to_cluster, "test");
    let balancer = client.balancer().unwrap().clone();
    assert!(balancer.wait_connected(2, Duration::from_secs(10)).await);
    let mut seen = HashSet::new();
    for _ in 0..4 {
        seen.insert(
            client
                .call("work", &())
                .await
                .unwrap()
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(seen, HashSet::from([id1.clone(), id2.clone()]));

    // A new instance registers: the watch brings it in.
    let (_k3, id3, _h3) = worker(&k).await;
    assert!(balancer.wait_connected(3, Duration::from_secs(10)).await);
    let mut seen = HashSet::new();
    for _ in 0..6 {
        seen.insert(
            client
                .call("work", &())
                .await
                .unwrap()
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert!(seen.contains(&id3), "{seen:?}");

    // The second one loses its Kontrol connection: its registration expires, the watch
    // removes it, and it gets no more calls although it still runs.
    k2.close().await;
    assert!(
        eventually(Duration::from_secs(15), || balancer
            .instances()
            .iter()
            .all(|i| i.id != id2))
        .await,
        "{:?}",
        balancer.instances()
    );
    for _ in 0..6 {
        let v = client.call("work", &()).await.unwrap();
        assert_ne!(v.as_str().unwrap(), id2);
    }
}
