//! The service harness's own contract: the durability option reaches the server, a missing
//! binary is an error (not a panic), etcd restarts on its ports, and a dropped server stops.
#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::PathBuf;

use kite_testkit::services::{
    Durability, Etcd, EtcdOptions, Postgres, PostgresOptions, ServiceError,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `SHOW <setting>` on a fresh database of `pg`.
fn show(rt: &tokio::runtime::Runtime, pg: &Postgres, setting: &str) -> String {
    rt.block_on(async {
        let conninfo = pg.new_database().await;
        let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .unwrap();
        let driver = tokio::spawn(conn);
        let row = client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .unwrap();
        let value: String = row.get(0);
        drop(client);
        let _ = driver.await;
        value
    })
}

#[test]
fn postgres_durability_follows_the_option() {
    let rt = runtime();
    let fast = Postgres::start();
    assert_eq!(show(&rt, &fast, "synchronous_commit"), "off");
    assert_eq!(show(&rt, &fast, "fsync"), "off");
    assert_eq!(show(&rt, &fast, "max_connections"), "400");

    let durable = Postgres::try_start(&PostgresOptions {
        durability: Durability::ServerDefaults,
        max_connections: 50,
        ..PostgresOptions::default()
    })
    .unwrap();
    assert_eq!(show(&rt, &durable, "synchronous_commit"), "on");
    assert_eq!(show(&rt, &durable, "fsync"), "on");
    assert_eq!(show(&rt, &durable, "max_connections"), "50");

    let port = durable.port();
    drop(durable);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "postgres still listening after drop"
    );
}

#[test]
fn missing_binaries_are_errors() {
    let pg = Postgres::try_start(&PostgresOptions {
        bin_dir: Some(PathBuf::from("/nonexistent/postgresql/bin")),
        ..PostgresOptions::default()
    });
    // As root initdb runs through setpriv, which starts and then fails: a command error.
    let err = pg.err().unwrap();
    assert!(
        matches!(err, ServiceError::Io { .. } | ServiceError::Command { .. }),
        "{err:?}"
    );

    let etcd = Etcd::try_start(&EtcdOptions {
        program: Some(PathBuf::from("/nonexistent/etcd")),
    });
    let err = etcd.err().unwrap();
    assert!(matches!(err, ServiceError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/etcd"), "{err}");
}

#[test]
fn etcd_restarts_on_its_ports_and_stops_on_drop() {
    let mut etcd = Etcd::start();
    let port = etcd.client_port();
    assert_ne!(etcd.new_prefix(), etcd.new_prefix());
    etcd.restart();
    assert_eq!(etcd.client_port(), port);
    assert_eq!(etcd.endpoint(), format!("http://127.0.0.1:{port}"));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(etcd);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "etcd still listening after drop"
    );
}
