//! The storage suite against a real PostgreSQL server started by the test harness.

mod support;

support::suite::storage_suite!(support::postgres_env);
support::suite::replica_suite!(support::postgres_env);

/// Events travel as NOTIFY payloads (< 8000 bytes): a registration that cannot be announced
/// is refused up front with a clear error; the largest ordinary ones pass and are announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_registration_is_refused() {
    use kontrol::storage::{StorageError, ValidationError};
    use support::suite::{kite, next_event, q, reg, LONG};

    let mut env = support::postgres_env().await;
    if let kontrol::storage::StorageConfig::Postgres(c) = &mut env.config {
        c.limits.max_url_len = 4000;
    }
    let s = env.connect().await;
    let mut w = s.watch(&q(&[("name", "big")])).await.unwrap();

    // Quotes double when JSON-escaped.
    let mut k = kite("u", "e", "big", "1.0.0", "r", "h", "id-1");
    let r = reg(&k, &"\"".repeat(4000));
    let err = match s.upsert(&r, LONG).await {
        Ok(_) => panic!("oversized registration accepted"),
        Err(e) => e,
    };
    assert!(
        matches!(
            err,
            StorageError::Invalid(ValidationError::RecordTooLarge { limit: 7999, .. })
        ),
        "{err:?}"
    );
    assert!(err.is_client_error());
    assert_eq!(s.count().await.unwrap(), 0);

    // At the default field limits without escaping it fits.
    let long = "x".repeat(255);
    k = kite(&long, &long, "big", &long, &long, &long, &long);
    let mut r = reg(&k, &format!("http://{}", "h".repeat(2040)));
    r.key_id = long.clone();
    let rec = s.upsert(&r, LONG).await.unwrap();
    let ev = next_event(&mut w).await;
    assert_eq!(ev.record, rec);
}

/// The harness's own contract: a dedicated server works, and dropping it stops the process
/// and removes its directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_server_stops_on_drop() {
    support::init_tracing();
    let server = tokio::task::spawn_blocking(kite_testkit::services::Postgres::start)
        .await
        .unwrap();
    let conninfo = server.conninfo("postgres");
    let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(client);
    let _ = driver.await;
    let port = server.port();
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "postgres still listening after drop"
    );
}

/// Every session of the storage is killed server-side: the query pool reconnects, the
/// change feed reconnects and reports the gap, and events flow again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_connection_loss() {
    use kontrol::storage::{StorageConfig, WatchAction, WatchError};
    use std::time::{Duration, Instant};
    use support::suite::{kite, next_event, q, reg, EVENT_DEADLINE, LONG};

    let env = support::postgres_env().await;
    let StorageConfig::Postgres(c) = &env.config else {
        unreachable!()
    };
    let dbname = c
        .conninfo
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .unwrap()
        .to_owned();
    let s = env.connect().await;
    let mut w = s.watch(&q(&[("name", "math")])).await.unwrap();

    let server = kite_testkit::services::Postgres::shared();
    let (admin, conn) =
        tokio_postgres::connect(&server.conninfo("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&dbname],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 3, "pool and listener sessions: {killed}");

    match tokio::time::timeout(EVENT_DEADLINE, w.recv()).await {
        Ok(Err(WatchError::Interrupted)) => {}
        other => panic!("expected the feed to report an interruption, got {other:?}"),
    }

    let k = kite("alice", "prod", "math", "1.0.0", "eu", "h1", "after-loss");
    let deadline = Instant::now() + Duration::from_secs(20);
    let rec = loop {
        match s.upsert(&reg(&k, "http://x/kite"), LONG).await {
            Ok(rec) => break rec,
            Err(e) => {
                assert!(Instant::now() < deadline, "storage did not recover: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let ev = next_event(&mut w).await;
    assert_eq!((ev.action, ev.record), (WatchAction::Register, rec));
    assert_eq!(s.get(&q(&[("id", "after-loss")])).await.unwrap().len(), 1);
}
