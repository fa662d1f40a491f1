//! A cluster of three instances of the `worker` kite behind a governed, balanced client:
//! one fast (a child process, killed mid-run), one slow, one failing. Traffic shifts away
//! from the slow and the failing one, the failing one's breaker opens, probes (half-open)
//! and closes once it recovers, calls fail over when the fast one is killed, a
//! deregistered instance gets no more calls, and the fallback answers when none is left.
//! Everything is also checked in `/metrics`, scraped over HTTP.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use kite::{KiteError, Request};
use kite_governance::{
    changes_channel, BalancerConfig, BreakerConfig, BreakerState, Change, ClientConfig, Fallback,
    GovernedClient, Instance, Metrics, RetryBudget, RetryConfig, ServerConfig, ServerGovernance,
};
use serde_json::{json, Value};

fn instance_of(v: &Value) -> String {
    v["instance"].as_str().unwrap_or("?").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_of_three() {
    // The fast instance runs in its own process so it can be killed for real.
    let (mut fast_proc, fast_url, fast) = spawn_worker(30);
    let slow = start("worker", |k| {
        ServerGovernance::install(k, ServerConfig::default());
        let id = k.id().to_string();
        k.handle_func("work", move |_r: Request| {
            let id = id.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(json!({ "instance": id }))
            }
        });
    })
    .await;
    let failing_now = Arc::new(AtomicBool::new(true));
    let f = failing_now.clone();
    let failing = start("worker", move |k| {
        ServerGovernance::install(k, ServerConfig::default());
        let id = k.id().to_string();
        k.handle_func("work", move |_r: Request| {
            let id = id.clone();
            let f = f.clone();
            async move {
                if f.load(Ordering::SeqCst) {
                    return Err(KiteError::generic("instance is broken"));
                }
                Ok(json!({ "instance": id }))
            }
        });
    })
    .await;

    let metrics = Metrics::new();
    let caller = start("caller", |k| metrics.install(k)).await;
    let mut retry = RetryConfig::default().idempotent("work");
    retry.idempotent_retry_on.insert("genericError".into());
    retry.budget = RetryBudget {
        ratio: 0.5,
        min_per_second: 100.0,
        max_tokens: 100.0,
    };
    let config = ClientConfig {
        retry: Some(retry),
        balancer: BalancerConfig {
            instance_breaker: Some(BreakerConfig {
                consecutive_failures: Some(3),
                error_rate: None,
                open_for: Duration::from_millis(300),
                ..Default::default()
            }),
            ready_timeout: Duration::from_millis(300),
            ..Default::default()
        },
        ..ClientConfig::default()
    }
    .metrics(&metrics)
    .fallback("work", Fallback::value(json!({ "instance": "fallback" })));
    let (tx, changes) = changes_channel(16);
    let client = GovernedClient::balanced(&caller.kite, "worker", "test/local", changes, &config);
    let balancer = client.balancer().unwrap().clone();
    for (identity, url) in [
        (fast.clone(), fast_url.clone()),
        (slow.identity.clone(), slow.url.clone()),
        (failing.identity.clone(), failing.url.clone()),
    ] {
        tx.send(Change::Insert(Instance::new(
            identity,
            caller.kite.new_client(&url),
        )))
        .await
        .unwrap();
    }
    assert!(balancer.wait_connected(3, Duration::from_secs(10)).await);
    let state_of = |id: &str| {
        balancer
            .instances()
            .into_iter()
            .find(|i| i.id == id)
            .unwrap()
    };

    // Phase 1: traffic shifts to the fast instance; the failing one's breaker opens.
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let v = client.call("work", &()).await.unwrap();
        *counts.entry(instance_of(&v)).or_default() += 1;
    }
    let n = |c: &HashMap<String, usize>, id: &str| c.get(id).copied().unwrap_or(0);
    assert!(n(&counts, &fast.id) >= 30, "{counts:?}");
    assert!(n(&counts, &slow.identity.id) <= 5, "{counts:?}");
    assert_eq!(n(&counts, "fallback"), 0);
    assert_eq!(n(&counts, &failing.identity.id), 0);
    let text = scrape(&caller.url).await;
    let failing_opens = |t: &str| {
        metric(
            t,
            "kite_circuit_transitions_total",
            &[("instance", &failing.identity.id), ("state", "open")],
        )
    };
    assert!(failing_opens(&text) >= 1.0, "{text}");
    assert!(metric(&text, "kite_client_retries_total", &[("method", "work")]) >= 1.0);
    let fast_calls = metric(
        &text,
        "kite_client_instance_calls_total",
        &[("instance", &fast.id)],
    );
    let slow_calls = metric(
        &text,
        "kite_client_instance_calls_total",
        &[("instance", &slow.identity.id)],
    );
    assert!(fast_calls >= 30.0 && slow_calls <= 5.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "kite_client_calls_total",
            &[
                ("from", "caller"),
                ("from_cluster", "test/local"),
                ("to", "worker"),
                ("to_cluster", "test/local"),
                ("method", "work")
            ]
        ),
        40.0
    );

    // Phase 2: the fast instance is killed while a call is in flight on it; that call and
    // every later one still succeed (retried / failed over), none goes to it again.
    let mut killed = false;
    for _ in 0..50 {
        let c = client.clone();
        let call = tokio::spawn(async move { c.call("work", &()).await });
        let fast_busy = eventually(Duration::from_secs(2), || {
            state_of(&fast.id).in_flight > 0 || call.is_finished()
        })
        .await;
        if fast_busy && state_of(&fast.id).in_flight > 0 {
            fast_proc.kill();
            killed = true;
        }
        let v = call.await.unwrap().unwrap();
        if killed {
            assert_ne!(instance_of(&v), "fallback");
            break;
        }
    }
    assert!(killed, "a call landed on the fast instance");
    assert!(eventually(Duration::from_secs(5), || !state_of(&fast.id).connected).await);
    for _ in 0..10 {
        let v = client.call("work", &()).await.unwrap();
        assert_ne!(instance_of(&v), fast.id);
        assert_ne!(instance_of(&v), "fallback");
    }

    // Phase 3: the failing instance recovers; a half-open probe closes its breaker.
    failing_now.store(false, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut recovered = false;
    while tokio::time::Instant::now() < deadline {
        let v = client.call("work", &()).await.unwrap();
        if instance_of(&v) == failing.identity.id {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the recovered instance gets traffic again");
    assert_eq!(
        state_of(&failing.identity.id).breaker,
        Some(BreakerState::Closed)
    );
    let text = scrape(&caller.url).await;
    for state in ["open", "half_open", "closed"] {
        assert!(
            metric(
                &text,
                "kite_circuit_transitions_total",
                &[("instance", &failing.identity.id), ("state", state)],
            ) >= 1.0,
            "{state}: {text}"
        );
    }

    // Phase 4: the failing instance deregisters: it gets no more calls.
    tx.send(Change::Remove(failing.identity.id.clone()))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || balancer
            .instances()
            .iter()
            .all(|i| i.id != failing.identity.id))
        .await
    );
    let before = metric(
        &scrape(&failing.url).await,
        "kite_server_calls_total",
        &[("method", "work")],
    );
    for _ in 0..5 {
        let v = client.call("work", &()).await.unwrap();
        assert_eq!(instance_of(&v), slow.identity.id);
    }
    let after = metric(
        &scrape(&failing.url).await,
        "kite_server_calls_total",
        &[("method", "work")],
    );
    assert_eq!(before, after);
    // The slow instance's own metrics see the caller's five-tuple.
    let slow_text = scrape(&slow.url).await;
    assert!(
        metric(
            &slow_text,
            "kite_server_calls_total",
            &[
                ("from", "caller"),
                ("from_cluster", "test/local"),
                ("to", "worker"),
                ("to_cluster", "test/local"),
                ("method", "work")
            ]
        ) >= 5.0,
        "{slow_text}"
    );

    // Phase 5: no instance left: the fallback answers.
    tx.send(Change::Remove(slow.identity.id.clone()))
        .await
        .unwrap();
    // Only the killed instance is left (disconnected, never deregistered).
    assert!(
        eventually(Duration::from_secs(5), || balancer
            .instances()
            .iter()
            .all(|i| i.id == fast.id && !i.connected))
        .await
    );
    let v = client.call("work", &()).await.unwrap();
    assert_eq!(instance_of(&v), "fallback");
    let text = scrape(&caller.url).await;
    assert_eq!(
        metric(
            &text,
            "kite_client_fallbacks_total",
            &[("method", "work"), ("reason", "noInstanceError")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "kite_client_errors_total",
            &[("method", "work"), ("type", "noInstanceError")]
        ),
        1.0
    );
    // Connections by transport: the caller dialed three instances over SockJS.
    assert!(
        metric(
            &text,
            "kite_connections_opened_total",
            &[("role", "dialed")]
        ) >= 3.0,
        "{text}"
    );
}
