//! The storage suite against a real etcd server started by the test harness.

mod support;

support::suite::storage_suite!(support::etcd_env);
support::suite::replica_suite!(support::etcd_env);

/// The harness's own contract: a dedicated server works, and dropping it stops the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_server_stops_on_drop() {
    support::init_tracing();
    let server = tokio::task::spawn_blocking(kite_testkit::services::Etcd::start)
        .await
        .unwrap();
    let mut c = kontrol::storage::EtcdConfig::new([server.endpoint()]);
    c.prefix = "/dedicated".into();
    let s = kontrol::storage::Storage::connect(&kontrol::storage::StorageConfig::Etcd(c))
        .await
        .unwrap();
    assert_eq!(s.count().await.unwrap(), 0);
    drop(s);
    let port = server.client_port();
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "etcd still listening after drop"
    );
}

/// etcd restarts under a watching storage: the watch resumes from the last revision it saw
/// (no interruption reported, nothing lost) and operations work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_etcd_restart() {
    support::init_tracing();
    use kontrol::storage::{EtcdConfig, Storage, StorageConfig, WatchAction};
    use std::time::{Duration, Instant};
    use support::suite::{kite, next_event, q, reg, LONG};

    let mut server = tokio::task::spawn_blocking(kite_testkit::services::Etcd::start)
        .await
        .unwrap();
    let mut c = EtcdConfig::new([server.endpoint()]);
    c.prefix = "/restart".into();
    c.request_timeout = Duration::from_secs(2);
    let s = Storage::connect(&StorageConfig::Etcd(c)).await.unwrap();
    let mut w = s.watch(&q(&[("username", "alice")])).await.unwrap();
    let a = kite("alice", "prod", "math", "1.0.0", "eu", "h1", "a");
    s.upsert(&reg(&a, "http://a/kite"), LONG).await.unwrap();
    assert_eq!(next_event(&mut w).await.action, WatchAction::Register);

    server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();

    let b = kite("alice", "prod", "math", "1.0.0", "eu", "h1", "b");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match s.upsert(&reg(&b, "http://b/kite"), LONG).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "etcd storage did not recover: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(s.delete("a").await.unwrap());
    let ev = next_event(&mut w).await;
    assert_eq!(
        (ev.action, ev.record.kite.id.as_str()),
        (WatchAction::Register, "b")
    );
    let ev = next_event(&mut w).await;
    assert_eq!(
        (ev.action, ev.record.kite.id.as_str()),
        (WatchAction::Deregister, "a")
    );
    assert_eq!(s.get(&q(&[("username", "alice")])).await.unwrap().len(), 1);
    drop(s);
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
}
