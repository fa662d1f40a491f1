//! The storage suite against the embedded backend, plus embedded-only checks.

mod support;

use std::time::{Duration, Instant};

use kontrol::storage::{Storage, StorageError};
use support::suite::{kite, q, reg, LONG};

support::suite::storage_suite!(support::embedded_env);

/// One data directory serves one process: a second open is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_is_exclusive() {
    let env = support::embedded_env().await;
    let s = env.connect().await;
    let err = Storage::connect(&env.config).await.unwrap_err();
    assert!(matches!(err, StorageError::Config(_)), "{err:?}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(s);
    // Released on drop.
    env.connect().await;
}

/// A watcher that does not keep up is told how much it missed, then continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_is_told_it_lagged() {
    use kontrol::storage::{StorageConfig, WatchAction, WatchError};
    use support::suite::next_event;

    let mut env = support::embedded_env().await;
    if let StorageConfig::Embedded(c) = &mut env.config {
        c.limits.watch_buffer = 4;
    }
    let s = env.connect().await;
    let mut w = s.watch(&q(&[("username", "u")])).await.unwrap();
    for i in 0..10 {
        let k = kite("u", "e", "n", "1.0.0", "r", "h", &format!("k{i}"));
        s.upsert(&reg(&k, "http://h/kite"), LONG).await.unwrap();
    }
    // Events are published before upsert returns: 10 events, room for 4.
    assert_eq!(w.recv().await, Err(WatchError::Lagged(6)));
    for i in 6..10 {
        let ev = next_event(&mut w).await;
        assert_eq!(ev.action, WatchAction::Register);
        assert_eq!(ev.record.kite.id, format!("k{i}"));
    }
    drop(s);
    assert_eq!(w.recv().await, Err(WatchError::Closed));
}

/// get() over 100,000 kites stays well under 5 ms at p99 (in-memory index).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_fast_with_100k_kites() {
    let env = support::embedded_env().await;
    let s = std::sync::Arc::new(env.connect().await);
    const USERS: usize = 100;
    const NAMES: usize = 100;
    const PER: usize = 10; // 100 * 100 * 10 = 100,000 kites
    let mut batch = Vec::new();
    for u in 0..USERS {
        for n in 0..NAMES {
            for i in 0..PER {
                let k = kite(
                    &format!("user{u}"),
                    "prod",
                    &format!("svc{n}"),
                    &format!("1.{i}.0"),
                    "eu",
                    &format!("host{i}"),
                    &format!("{u}-{n}-{i}"),
                );
                let s = s.clone();
                batch.push(tokio::spawn(async move {
                    s.upsert(&reg(&k, "http://h/kite"), LONG).await.unwrap();
                }));
                if batch.len() == 2000 {
                    for t in batch.drain(..) {
                        t.await.unwrap();
                    }
                }
            }
        }
    }
    for t in batch.drain(..) {
        t.await.unwrap();
    }
    assert_eq!(s.count().await.unwrap(), 100_000);

    let queries = [
        // The common Go client query: username/environment/name.
        |i: usize| {
            q(&[
                ("username", &format!("user{}", i % USERS)),
                ("environment", "prod"),
                ("name", &format!("svc{}", (i * 7) % NAMES)),
            ])
        },
        |i: usize| q(&[("id", &format!("{}-{}-{}", i % USERS, i % NAMES, i % PER))]),
        |i: usize| {
            q(&[
                ("username", &format!("user{}", i % USERS)),
                ("name", &format!("svc{}", i % NAMES)),
                ("version", ">= 1.2, < 1.5"),
            ])
        },
        // kite.js style: name only (1,000 results).
        |i: usize| q(&[("name", &format!("svc{}", i % NAMES))]),
    ];
    // Selective queries must stay far below 5 ms. The name-only query returns 1,000 records
    // and is dominated by copying them out. The machine is shared (debug build, other jobs):
    // a round counts if its p99 is within bounds; three rounds are allowed to absorb
    // preemption by other processes.
    for (qi, make) in queries.iter().enumerate() {
        let bound = Duration::from_millis(if qi == 3 { 25 } else { 5 });
        let mut best = Duration::MAX;
        for _round in 0..3 {
            let mut times = Vec::with_capacity(1000);
            for i in 0..1000 {
                let query = make(i);
                let t = Instant::now();
                let got = s.get(&query).await.unwrap();
                times.push(t.elapsed());
                assert!(!got.is_empty());
            }
            times.sort();
            let p99 = times[times.len() * 99 / 100];
            println!(
                "query shape {qi}: p50 {:?} p99 {p99:?}",
                times[times.len() / 2]
            );
            best = best.min(p99);
            if best < bound {
                break;
            }
        }
        assert!(best < bound, "query shape {qi}: p99 {best:?}");
    }
}
