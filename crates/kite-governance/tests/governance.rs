//! Deadlines across a chain of kites (the handler observes cancellation), retries within
//! their budget, rate limits per method and per caller, the five-tuple breaker with its
//! fallback, hedging, and run-time degradation switches — checked on the wire and in
//! `/metrics`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use kite::{KiteError, Request};
use kite_governance::{
    BreakerConfig, ClientConfig, Fallback, GovernedClient, LimitConfig, Metrics, Rate, RetryBudget,
    RetryConfig, ServerConfig, ServerGovernance,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A dialed governed client from `from` to `to`.
async fn governed(from: &Node, to: &Node, config: &ClientConfig) -> GovernedClient {
    let c = from.kite.new_client(&to.url);
    c.set_remote_kite(to.identity.clone());
    c.dial().await.unwrap();
    GovernedClient::single(&from.kite, c, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_cuts_calls_short_downstream() {
    let (events_tx, mut events) = mpsc::unbounded_channel::<String>();
    let budgets = Arc::new(Mutex::new(Vec::<Value>::new()));
    let b = budgets.clone();
    let back = start("back", move |k| {
        ServerGovernance::install(k, ServerConfig::default());
        k.handle_func("wait", move |r: Request| {
            let tx = events_tx.clone();
            let b = b.clone();
            async move {
                b.lock()
                    .unwrap()
                    .push(r.envelope_field("deadline").cloned().unwrap_or(Value::Null));
                let _ = tx.send("started".into());
                tokio::select! {
                    _ = r.cancelled() => {
                        let _ = tx.send("cancelled".into());
                        Err(KiteError::generic("cancelled"))
                    }
                    _ = tokio::time::sleep(Duration::from_secs(30)) => Ok("finished"),
                }
            }
        });
    })
    .await;
    // The front kite relays `relay` to back's `wait` with a governed client: the budget
    // left when the caller's request arrived is inherited.
    let front_client: Arc<Mutex<Option<GovernedClient>>> = Arc::default();
    let fc = front_client.clone();
    let front = start("front", move |k| {
        ServerGovernance::install(k, ServerConfig::default());
        k.handle_func("relay", move |_r: Request| {
            let c = fc.lock().unwrap().clone().unwrap();
            async move { c.call("wait", &()).await }
        });
    })
    .await;
    *front_client.lock().unwrap() = Some(governed(&front, &back, &ClientConfig::default()).await);

    let metrics = Metrics::new();
    let caller = start("caller", |k| metrics.install(k)).await;
    let config = ClientConfig::default()
        .metrics(&metrics)
        .method_timeout("relay", Some(Duration::from_millis(400)));
    let client = governed(&caller, &front, &config).await;

    let t0 = Instant::now();
    let e = client.call("relay", &()).await.unwrap_err();
    assert_eq!(e.kind, "timeout", "{e}");
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    // Downstream, the handler saw the remaining budget and then its cancellation.
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        let mut seen = Vec::new();
        while let Some(e) = events.recv().await {
            seen.push(e);
            if seen.last().map(String::as_str) == Some("cancelled") {
                break;
            }
        }
        seen
    })
    .await
    .unwrap();
    assert_eq!(got, vec!["started", "cancelled"]);
    let budget = budgets.lock().unwrap()[0].as_u64().unwrap();
    assert!(budget > 0 && budget <= 400, "{budget}");

    // With a fallback the same call answers the fallback value.
    let config2 = config
        .clone()
        .fallback("relay", Fallback::value(json!("later")));
    let client2 = governed(&caller, &front, &config2).await;
    assert_eq!(client2.call("relay", &()).await.unwrap(), json!("later"));
    assert_eq!(events.recv().await.unwrap(), "started");
    assert_eq!(events.recv().await.unwrap(), "cancelled");

    // The caller going away cancels the request too.
    let raw = caller.kite.new_client(&back.url);
    raw.dial().await.unwrap();
    let pending = raw.go_with_timeout("wait", &(), None);
    assert_eq!(events.recv().await.unwrap(), "started");
    raw.close().await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap(),
        "cancelled"
    );
    assert_eq!(pending.await.unwrap_err().kind, "disconnect");

    // A request arriving with no budget left is refused without running the handler.
    let raw = caller.kite.new_client(&back.url);
    raw.dial().await.unwrap();
    let mut fields = kite::EnvelopeFields::new();
    fields.insert("deadline".into(), json!(0));
    let e = raw
        .tell_with_fields("wait", &(), fields, Some(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(e.kind, "timeout");
    assert!(events.try_recv().is_err(), "the handler did not run");

    // Metrics: caller-side timeouts and fallbacks, back-side timeouts and the refusal.
    let text = scrape(&caller.url).await;
    assert!(
        metric(
            &text,
            "kite_client_errors_total",
            &[("to", "front"), ("method", "relay"), ("type", "timeout")]
        ) >= 2.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "kite_client_fallbacks_total",
            &[("method", "relay"), ("reason", "timeout")]
        ),
        1.0
    );
    let back_text = scrape(&back.url).await;
    assert!(
        metric(
            &back_text,
            "kite_server_errors_total",
            &[("from", "front"), ("method", "wait"), ("type", "timeout")]
        ) >= 2.0,
        "{back_text}"
    );
    assert_eq!(
        metric(
            &back_text,
            "kite_server_shed_total",
            &[("method", "wait"), ("reason", "deadline")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_respect_the_budget_and_rate_limits_answer() {
    let limits = LimitConfig {
        method_rates: [("limited".to_string(), Rate::new(0.0, 5))].into(),
        caller_method_rates: [("percaller".to_string(), Rate::new(0.0, 2))].into(),
        ..Default::default()
    };
    let back = start("back", move |k| {
        ServerGovernance::install(
            k,
            ServerConfig {
                limits,
                ..Default::default()
            },
        );
        k.handle_func("limited", |_r: Request| async { Ok("ok") });
        k.handle_func("percaller", |_r: Request| async { Ok("ok") });
    })
    .await;
    let metrics = Metrics::new();
    let caller = start("caller", |k| metrics.install(k)).await;
    let mut retry = RetryConfig::default().idempotent("limited");
    retry.budget = RetryBudget {
        ratio: 0.25,
        min_per_second: 0.0,
        max_tokens: 100.0,
    };
    retry.backoff = Duration::from_millis(1);
    let config = ClientConfig {
        retry: Some(retry),
        breaker: None,
        ..Default::default()
    }
    .metrics(&metrics);
    let client = governed(&caller, &back, &config).await;
    let mut ok = 0;
    for _ in 0..50 {
        match client.call("limited", &()).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.kind, "requestLimitError");
                assert_eq!(e.message, "The maximum request rate is exceeded.");
                assert_eq!(e.code, "rate");
            }
        }
    }
    assert_eq!(ok, 5);
    let text = scrape(&caller.url).await;
    // 50 calls deposit 12.5 tokens: exactly 12 retries, the rest refused by the budget.
    assert_eq!(
        metric(&text, "kite_client_retries_total", &[("method", "limited")]),
        12.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "kite_client_retries_denied_total",
            &[("method", "limited")]
        ) >= 1.0
    );
    let back_text = scrape(&back.url).await;
    assert_eq!(
        metric(
            &back_text,
            "kite_server_calls_total",
            &[("from", "caller"), ("method", "limited")]
        ),
        62.0
    );
    assert_eq!(
        metric(
            &back_text,
            "kite_server_shed_total",
            &[("method", "limited"), ("reason", "rate")]
        ),
        57.0
    );
    assert_eq!(
        metric(
            &back_text,
            "kite_server_errors_total",
            &[("method", "limited"), ("type", "requestLimitError")]
        ),
        57.0
    );

    // Per caller: each caller kite has its own bucket of 2.
    for name in ["alice-app", "bob-app"] {
        let other = start(name, |_| {}).await;
        let c = other.kite.new_client(&back.url);
        c.dial().await.unwrap();
        assert!(c.tell("percaller", &()).await.is_ok());
        assert!(c.tell("percaller", &()).await.is_ok());
        let e = c.tell("percaller", &()).await.unwrap_err();
        assert_eq!(e.kind, "requestLimitError");
        assert_eq!(e.code, "callerRate");
    }
    let back_text = scrape(&back.url).await;
    for name in ["alice-app", "bob-app"] {
        assert_eq!(
            metric(
                &back_text,
                "kite_server_shed_total",
                &[
                    ("from", name),
                    ("method", "percaller"),
                    ("reason", "callerRate")
                ]
            ),
            1.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_tuple_breaker_fallback_and_hedging() {
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    let counter = Arc::new(AtomicU64::new(0));
    let c2 = counter.clone();
    let back = start("back", move |k| {
        ServerGovernance::install(k, ServerConfig::default());
        k.handle_func("flaky", move |_r: Request| {
            let b = b.clone();
            async move {
                if b.load(Ordering::SeqCst) {
                    Err(KiteError::generic("down"))
                } else {
                    Ok("fresh")
                }
            }
        });
        k.handle_func("sometimes_slow", move |_r: Request| {
            let n = c2.fetch_add(1, Ordering::SeqCst);
            async move {
                if n % 2 == 0 {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                Ok(n)
            }
        });
    })
    .await;
    let metrics = Metrics::new();
    let caller = start("caller", |k| metrics.install(k)).await;
    let config = ClientConfig {
        retry: Some(RetryConfig::default().hedge("sometimes_slow", Duration::from_millis(50))),
        breaker: Some(BreakerConfig {
            consecutive_failures: Some(3),
            error_rate: None,
            open_for: Duration::from_millis(200),
            ..Default::default()
        }),
        ..Default::default()
    }
    .metrics(&metrics)
    .fallback("flaky", Fallback::value(json!("cached")));
    let client = governed(&caller, &back, &config).await;
    for _ in 0..3 {
        let e = client.call("flaky", &()).await.unwrap_err();
        assert_eq!(e.kind, "genericError");
    }
    // Open: the fallback answers without a request.
    assert_eq!(client.call("flaky", &()).await.unwrap(), json!("cached"));
    let text = scrape(&caller.url).await;
    let tuple = [
        ("from", "caller"),
        ("from_cluster", "test/local"),
        ("to", "back"),
        ("to_cluster", "test/local"),
        ("method", "flaky"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v = tuple.to_vec();
        v.extend_from_slice(extra);
        v
    };
    assert_eq!(
        metric(&text, "kite_circuit_state", &with(&[("instance", "")])),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "kite_client_fallbacks_total",
            &with(&[("reason", "circuitOpenError")])
        ),
        1.0
    );
    // Recovery: after the open period a probe goes through and closes the breaker.
    broken.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fresh = false;
    while Instant::now() < deadline {
        if client.call("flaky", &()).await.unwrap() == json!("fresh") {
            fresh = true;
            break;
        }
        // Open for 200 ms: wait for the next probe window.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fresh);
    let text = scrape(&caller.url).await;
    assert_eq!(
        metric(&text, "kite_circuit_state", &with(&[("instance", "")])),
        0.0
    );
    for state in ["open", "half_open", "closed"] {
        assert_eq!(
            metric(
                &text,
                "kite_circuit_transitions_total",
                &with(&[("instance", ""), ("state", state)])
            ),
            1.0,
            "{state}"
        );
    }

    // Hedging: the first request is slow, the hedge after 50 ms answers.
    let t0 = Instant::now();
    let v = client.call("sometimes_slow", &()).await.unwrap();
    assert_eq!(v, json!(1));
    assert!(t0.elapsed() < Duration::from_secs(2));
    let text = scrape(&caller.url).await;
    assert_eq!(
        metric(
            &text,
            "kite_client_hedges_total",
            &[("method", "sometimes_slow")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_is_shed_at_the_concurrency_bound() {
    let release = Arc::new(tokio::sync::Notify::new());
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let r = release.clone();
    let back = start("back", move |k| {
        ServerGovernance::install(
            k,
            ServerConfig {
                limits: LimitConfig {
                    method_concurrency: [("busy".to_string(), 1)].into(),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        k.handle_func("busy", move |_r: Request| {
            let r = r.clone();
            let tx = started_tx.clone();
            async move {
                let notified = r.notified();
                let _ = tx.send(());
                notified.await;
                Ok("done")
            }
        });
    })
    .await;
    let caller = start("caller", |_| {}).await;
    let c = caller.kite.new_client(&back.url);
    c.dial().await.unwrap();
    let first = c.go("busy", &());
    started.recv().await.unwrap();
    let e = c.tell("busy", &()).await.unwrap_err();
    assert_eq!(e.kind, "requestLimitError");
    assert_eq!(e.code, "concurrency");
    release.notify_one();
    assert_eq!(first.await.unwrap().as_str(), Some("done"));
    // The slot is free again.
    let again = c.go("busy", &());
    started.recv().await.unwrap();
    release.notify_one();
    assert_eq!(again.await.unwrap().as_str(), Some("done"));
    let text = scrape(&back.url).await;
    assert_eq!(
        metric(
            &text,
            "kite_server_shed_total",
            &[("method", "busy"), ("reason", "concurrency")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degradation_switches_change_at_run_time() {
    let gov: Arc<Mutex<Option<ServerGovernance>>> = Arc::default();
    let g = gov.clone();
    let back = start("back", move |k| {
        *g.lock().unwrap() = Some(ServerGovernance::install(k, ServerConfig::default()));
        k.handle_func("report", |_r: Request| async { Ok("report") });
        k.handle_func("pay", |_r: Request| async { Ok("paid") });
    })
    .await;
    let switches = gov.lock().unwrap().as_ref().unwrap().switches.clone();
    switches.mark_critical("pay");
    let caller = start("caller", |_| {}).await;
    let c = caller.kite.new_client(&back.url);
    c.dial().await.unwrap();
    assert_eq!(
        c.tell("report", &()).await.unwrap().as_str(),
        Some("report")
    );

    switches.shed_non_critical(true);
    let e = c.tell("report", &()).await.unwrap_err();
    assert_eq!(e.kind, "degradedError");
    assert_eq!(c.tell("pay", &()).await.unwrap().as_str(), Some("paid"));
    assert_eq!(
        c.tell("kite.ping", &()).await.unwrap().as_str(),
        Some("pong")
    );
    switches.degrade_to("report", json!("stale report"));
    assert_eq!(
        c.tell("report", &()).await.unwrap().as_str(),
        Some("stale report")
    );
    switches.shed_non_critical(false);
    assert_eq!(
        c.tell("report", &()).await.unwrap().as_str(),
        Some("report")
    );
    switches.disable("pay");
    assert_eq!(c.tell("pay", &()).await.unwrap_err().kind, "degradedError");
    switches.enable("pay");
    assert_eq!(c.tell("pay", &()).await.unwrap().as_str(), Some("paid"));
    let text = scrape(&back.url).await;
    assert_eq!(
        metric(&text, "kite_server_shed_total", &[("reason", "degraded")]),
        3.0
    );
}
