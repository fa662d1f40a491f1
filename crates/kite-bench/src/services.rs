//! The PostgreSQL and etcd servers the bench measures Kontrol on: `kite_testkit`'s, started
//! on loopback in temporary directories and stopped (their directories removed) when dropped.
//! PostgreSQL keeps its default, durable settings: they are part of what is measured.

use kite_testkit::services::{Durability, Etcd, EtcdOptions, Postgres, PostgresOptions};

/// Starts PostgreSQL with its default settings; blocks until it accepts connections.
pub(crate) fn postgres() -> anyhow::Result<Postgres> {
    let options = PostgresOptions {
        durability: Durability::ServerDefaults,
        max_connections: 200,
        ..PostgresOptions::default()
    };
    Ok(Postgres::try_start(&options)?)
}

/// Starts a single-member etcd cluster; blocks until it is healthy.
pub(crate) fn etcd() -> anyhow::Result<Etcd> {
    Ok(Etcd::try_start(&EtcdOptions::default())?)
}
