//! The storage suite against a real etcd server started by the test harness.

mod support;

support::suite::storage_suite!(support::etcd_env);
support::suite::replica_suite!(support::etcd_env);

/// The harness's own contract: a dedicated server works, and dropping it stops the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_server_stops_on_drop() {
    let server = tokio::task::spawn_blocking(support::etcd::EtcdServer::start)
        .await
        .unwrap();
    let mut c = kontrol::storage::EtcdConfig::new([server.endpoint()]);
    c.prefix = "/dedicated".into();
    let s = kontrol::storage::Storage::connect(&kontrol::storage::StorageConfig::Etcd(c))
        .await
        .unwrap();
    assert_eq!(s.count().await.unwrap(), 0);
    drop(s);
    let port = server.client_port;
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "etcd still listening after drop"
    );
}
