//! Test harness for the storage backends: real servers (from `kite_testkit::services`),
//! fresh isolated stores per test, and the behavioural suite shared by every backend.
#![allow(dead_code, clippy::unwrap_used)]

pub mod suite;

use std::time::Duration;

/// One `#[tokio::test]` per name: `$env()` gives the test its isolated store and
/// `$crate::<parent>::<module>::<name>(&env)` runs the body, with a 120 s limit. The behavioural
/// suites (`support::suite`, `kontrol_common::suite`) instantiate their lists with it.
macro_rules! backend_tests {
    ($env:path => $parent:ident::$module:ident { $($name:ident),* $(,)? }) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let env = $env().await;
            tokio::time::timeout(
                std::time::Duration::from_secs(120),
                $crate::$parent::$module::$name(&env),
            )
            .await
            .expect("test timed out");
        }
    )*};
}
pub(crate) use backend_tests;

use kite_testkit::services::{Etcd, Postgres};
use kontrol::storage::{EmbeddedConfig, EtcdConfig, PostgresConfig, Storage, StorageConfig};

/// An isolated store for one test: its configuration (connect as often as needed, e.g. to
/// simulate a restart or a second replica) and whatever must live as long as the test.
pub struct TestEnv {
    pub config: StorageConfig,
    /// Whether several processes may share the store (PostgreSQL, etcd).
    pub shared: bool,
    _dir: Option<tempfile::TempDir>,
}

impl TestEnv {
    pub async fn connect(&self) -> Storage {
        Storage::connect(&self.config)
            .await
            .unwrap_or_else(|e| panic!("connect {:?}: {e}", self.config))
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Sweep interval used by the tests: short, so expiry events are quick.
pub const TEST_SWEEP: Duration = Duration::from_millis(200);

pub async fn embedded_env() -> TestEnv {
    init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = EmbeddedConfig::new(dir.path().join("data"));
    c.sweep_interval = TEST_SWEEP;
    TestEnv {
        config: StorageConfig::Embedded(c),
        shared: false,
        _dir: Some(dir),
    }
}

pub async fn postgres_env() -> TestEnv {
    init_tracing();
    let server = tokio::task::spawn_blocking(Postgres::shared)
        .await
        .expect("start postgres");
    let mut c = PostgresConfig::new(server.new_database().await);
    c.sweep_interval = TEST_SWEEP;
    c.pool_size = 2;
    TestEnv {
        config: StorageConfig::Postgres(c),
        shared: true,
        _dir: None,
    }
}

pub async fn etcd_env() -> TestEnv {
    init_tracing();
    let server = tokio::task::spawn_blocking(Etcd::shared)
        .await
        .expect("start etcd");
    let mut c = EtcdConfig::new([server.endpoint()]);
    c.prefix = server.new_prefix();
    TestEnv {
        config: StorageConfig::Etcd(c),
        shared: true,
        _dir: None,
    }
}
