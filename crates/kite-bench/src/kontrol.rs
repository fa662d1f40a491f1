//! Kontrol's storage layer on each backend: how fast kites register, how fast `getKites`
//! queries answer with 10,000 and 100,000 kites registered.
//!
//! The service layer (RPC methods, token issuing per result) is not measured yet: these are
//! the storage figures Kontrol's `register` and `getKites` are built on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use kite_protocol::{Kite as Identity, KontrolQuery};
use kite_testkit::services::{Etcd, Postgres};
use kontrol::storage::{
    self, EmbeddedConfig, EtcdConfig, PostgresConfig, Registration, Storage, StorageConfig,
};

use crate::plan::{Backend, Plan};
use crate::services;
use crate::stats::Latencies;
use crate::table::{int, ms, Table};
use crate::{machine, Findings};

/// Users in the generated registry.
const USERS: usize = 100;
/// Instances of each (user, name) pair.
const PER: usize = 10;
/// Registrations in flight at once.
const CONCURRENCY: usize = 64;
/// Registration lifetime: nothing expires during the run.
const TTL: Duration = Duration::from_secs(3600);

/// The `i`th kite: user `i % 100`, instance `(i / 100) % 10`, name `i / 1000`. Every block
/// of 1,000 adds one name with 10 instances for each of the 100 users.
fn registration(i: usize) -> Registration {
    let user = i % USERS;
    let instance = (i / USERS) % PER;
    let name = i / (USERS * PER);
    Registration {
        kite: Identity {
            username: format!("user{user}"),
            environment: "production".into(),
            name: format!("svc{name}"),
            version: format!("1.0.{instance}"),
            region: "eu".into(),
            hostname: format!("host{instance}"),
            id: format!("00000000-0000-4000-8000-{i:012}"),
        },
        url: format!("http://10.0.{}.{}:3000/kite", (i / 250) % 250, i % 250),
        key_id: "bench-key".into(),
    }
}

/// The usual Go client query: username, environment and name (10 matches once the
/// name's block is complete).
fn query(q: usize, registered: usize) -> KontrolQuery {
    let names = registered.div_ceil(USERS * PER).max(1);
    KontrolQuery {
        username: format!("user{}", q % USERS),
        environment: "production".into(),
        name: format!("svc{}", (q.wrapping_mul(7919)) % names),
        ..KontrolQuery::default()
    }
}

/// What keeps a backend alive while measured.
enum Running {
    Embedded(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] Postgres),
    Etcd(#[allow(dead_code)] Etcd),
}

async fn start(backend: Backend) -> anyhow::Result<(Running, StorageConfig)> {
    Ok(match backend {
        Backend::Embedded => {
            let dir = tempfile::Builder::new()
                .prefix("kite-bench-kontrol-")
                .tempdir()?;
            let config = StorageConfig::Embedded(EmbeddedConfig::new(dir.path()));
            (Running::Embedded(dir), config)
        }
        Backend::Postgres => {
            let pg = tokio::task::spawn_blocking(services::postgres).await??;
            let config = StorageConfig::Postgres(PostgresConfig::new(pg.conninfo("postgres")));
            (Running::Postgres(pg), config)
        }
        Backend::Etcd => {
            let etcd = tokio::task::spawn_blocking(services::etcd).await??;
            let config = StorageConfig::Etcd(EtcdConfig::new([etcd.endpoint()]));
            (Running::Etcd(etcd), config)
        }
    })
}

/// Registers kites `from..to`, `CONCURRENCY` at a time; returns registrations per second.
async fn register(storage: &Arc<Storage>, from: usize, to: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut results = futures_util::stream::iter(from..to)
        .map(|i| {
            let s = storage.clone();
            async move {
                s.upsert(&registration(i), TTL)
                    .await
                    .with_context(|| format!("register kite {i}"))
            }
        })
        .buffer_unordered(CONCURRENCY);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok((to - from) as f64 / t.elapsed().as_secs_f64())
}

pub(crate) async fn kontrol(plan: &Plan, findings: &mut Findings) -> anyhow::Result<()> {
    let load_before = machine::loadavg();
    let mut table = Table::new(&[
        "backend",
        "kites",
        "register/s",
        "getKites p50 ms",
        "getKites p99 ms",
        "getKites p99.9 ms",
        "matches per query",
    ]);
    let mut steps = plan.kites.clone();
    steps.sort_unstable();
    for &backend in &plan.backends {
        eprintln!("  kontrol: starting {}...", backend.name());
        let (running, config) = match start(backend).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("  kontrol: {} skipped: {e:#}", backend.name());
                table.row(vec![
                    backend.name().into(),
                    "skipped".into(),
                    format!("{e:#}").replace('|', "/").replace('\n', " "),
                ]);
                continue;
            }
        };
        let storage = match storage::connect(&config).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                findings.errors += 1;
                table.row(vec![
                    backend.name().into(),
                    "failed".into(),
                    format!("connect: {e}"),
                ]);
                continue;
            }
        };
        let mut registered = 0;
        for &target in &steps {
            if target <= registered {
                continue;
            }
            eprintln!(
                "  kontrol: {}: registering kites up to {target}...",
                backend.name()
            );
            let rate = match register(&storage, registered, target).await {
                Ok(r) => r,
                Err(e) => {
                    findings.errors += 1;
                    table.row(vec![
                        backend.name().into(),
                        int(target as f64),
                        format!("failed: {e:#}"),
                    ]);
                    break;
                }
            };
            registered = target;
            let mut lat = Latencies::new();
            let mut matches = 0usize;
            let mut failed = None;
            for q in 0..plan.queries {
                let query = query(q, registered);
                let t = Instant::now();
                match storage.get(&query).await {
                    Ok(found) => {
                        lat.record(t.elapsed());
                        matches += found.len();
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                findings.errors += 1;
                table.row(vec![
                    backend.name().into(),
                    int(target as f64),
                    int(rate),
                    format!("getKites failed: {e}"),
                ]);
                break;
            }
            eprintln!(
                "  kontrol: {} with {target} kites: {} register/s, getKites p50 {} ms p99 {} ms",
                backend.name(),
                int(rate),
                ms(lat.ms(0.5)),
                ms(lat.ms(0.99))
            );
            table.row(vec![
                backend.name().into(),
                int(target as f64),
                int(rate),
                ms(lat.ms(0.5)),
                ms(lat.ms(0.99)),
                ms(lat.ms(0.999)),
                format!("{:.1}", matches as f64 / plan.queries.max(1) as f64),
            ]);
            if backend == Backend::Embedded && target == 100_000 {
                findings.getkites_p99_100k = Some(lat.ms(0.99));
            }
        }
        if let Ok(s) = Arc::try_unwrap(storage) {
            let _ = s.close().await;
        }
        drop(running);
    }
    let load_after = machine::loadavg();
    println!("### Kontrol storage\n");
    println!(
        "Storage layer only (the Kontrol service is not measured yet). Registration: `upsert`, {CONCURRENCY} in flight. getKites: `get` with username + environment + name, {} sequential queries per row. PostgreSQL and etcd run with their default settings (durable commits) on loopback. Load average before/after: {load_before} / {load_after}.\n",
        plan.queries
    );
    table.print();
    Ok(())
}
