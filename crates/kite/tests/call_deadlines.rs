//! Call timeouts over real sockets: the per-connection deadline sweeper fails calls with
//! `timeout` on time, frees their response callbacks, and ends with its connection.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use kite::{Client, Kite, KiteError, Request, Transport};
use serde_json::json;

/// A kite with the math methods and `never`, whose handler never answers.
fn server_kite() -> Kite {
    let mut k = math_kite();
    // `never` handlers are still running at shutdown.
    k.limits.shutdown_timeout = Duration::from_millis(100);
    k.handle_func("never", |_r: Request| async move {
        std::future::pending::<()>().await;
        Ok(())
    });
    k
}

async fn dialed(served: &Served, max_pending_calls: usize) -> (Kite, Client) {
    let mut k = client_kite(Transport::WebSocket);
    k.limits.max_pending_calls = max_pending_calls;
    let c = k.new_client(&served.url);
    c.dial().await.unwrap();
    (k, c)
}

fn assert_timeout(e: &KiteError, method: &str, after: &str) {
    assert_eq!(e.kind, "timeout", "{e}");
    assert_eq!(
        e.message,
        format!("No response to \"{method}\" method in {after}")
    );
    assert_eq!(e.id, "");
    assert_eq!(e.code, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_call_times_out_on_time_and_frees_its_slot() {
    let served = serve(server_kite()).await;
    // One pending call at a time: every later call needs the timed-out one freed.
    let (mut k, c) = dialed(&served, 1).await;

    let started = Instant::now();
    let e = c
        .tell_with_timeout("never", &(), Some(Duration::from_millis(200)))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_timeout(&e, "never", "200ms");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(c.tell("square", &(3,)).await.unwrap().as_f64(), Some(9.0));

    // The other entry points: `go`, extra envelope fields (the generic encoding).
    let e = c
        .go_with_timeout("never", &(1,), Some(Duration::from_millis(150)))
        .await
        .unwrap_err();
    assert_timeout(&e, "never", "150ms");
    let mut fields = kite::EnvelopeFields::new();
    fields.insert("traceparent".into(), json!("00-x"));
    let e = c
        .tell_with_fields("never", &(), fields, Some(Duration::from_millis(150)))
        .await
        .unwrap_err();
    assert_timeout(&e, "never", "150ms");
    assert_eq!(c.tell("square", &(4,)).await.unwrap().as_f64(), Some(16.0));
    c.close().await;

    // The default timeout is `Limits::call_timeout`.
    k.limits.call_timeout = Some(Duration::from_millis(250));
    let c = k.new_client(&served.url);
    c.dial().await.unwrap();
    let started = Instant::now();
    let e = c.tell("never", &()).await.unwrap_err();
    assert_timeout(&e, "never", "250ms");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(c.tell("square", &(5,)).await.unwrap().as_f64(), Some(25.0));
    c.close().await;
    served.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_timeouts_on_one_connection_each_fire_on_time() {
    let served = serve(server_kite()).await;
    let (_k, c) = dialed(&served, 16).await;
    let start = Instant::now();
    // Registered longest first: every later call has an earlier deadline.
    let timeouts = [1500u64, 900, 300];
    let mut calls = Vec::new();
    for ms in timeouts {
        let c = c.clone();
        calls.push(tokio::spawn(async move {
            let issued = start.elapsed();
            let e = c
                .tell_with_timeout("never", &(), Some(Duration::from_millis(ms)))
                .await
                .unwrap_err();
            (ms, issued, start.elapsed(), e)
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // A call without a timeout is not disturbed by the sweeper.
    assert_eq!(
        c.tell_with_timeout("square", &(2,), None)
            .await
            .unwrap()
            .as_f64(),
        Some(4.0)
    );
    let mut fired = Vec::new();
    for call in calls {
        fired.push(call.await.unwrap());
    }
    fired.sort_by_key(|f| f.2);
    assert_eq!(
        fired.iter().map(|f| f.0).collect::<Vec<_>>(),
        [300, 900, 1500],
        "{fired:?}"
    );
    for (ms, issued, done, e) in &fired {
        let expected = KiteError::timeout("never", Duration::from_millis(*ms));
        assert_eq!(
            (&e.kind, &e.message, &e.code, &e.id),
            (
                &expected.kind,
                &expected.message,
                &expected.code,
                &expected.id
            )
        );
        let waited = *done - *issued;
        let ms = Duration::from_millis(*ms);
        assert!(waited >= ms, "{ms:?} timeout fired after {waited:?}");
        assert!(
            waited < ms + Duration::from_millis(400),
            "{ms:?} timeout fired after {waited:?}"
        );
    }
    c.close().await;
    served.handle.shutdown();
}

/// Log lines of this test binary (kite at debug level).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("kite=debug")
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .init();
        logs
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_after_the_timeout_is_dropped_with_a_debug_line() {
    let logs = captured_logs();
    let served = serve(server_kite()).await;
    let (_k, c) = dialed(&served, 1).await;
    let session = c.connection().unwrap().info().id().to_string();

    // `slow` answers after 400 ms, 300 ms after the call gave up.
    let e = c
        .tell_with_timeout("slow", &(400,), Some(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert_timeout(&e, "slow", "100ms");
    let late = |logs: &Mutex<Vec<u8>>| {
        String::from_utf8_lossy(&logs.lock().unwrap())
            .lines()
            .any(|l| l.contains("unknown callback id") && l.contains(&session))
    };
    assert!(eventually(Duration::from_secs(5), || late(&logs)).await);
    // The connection goes on.
    assert!(c.is_connected());
    assert_eq!(c.tell("square", &(6,)).await.unwrap().as_f64(), Some(36.0));
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    for line in text.lines().filter(|l| l.contains(&session)) {
        assert!(line.contains("DEBUG"), "{line}");
    }
    c.close().await;
    served.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_call_is_freed_at_its_deadline() {
    let served = serve(server_kite()).await;
    let (_k, c) = dialed(&served, 1).await;
    let started = Instant::now();
    // The caller gives up before the call's own timeout: its future is dropped.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(50),
        c.tell_with_timeout("never", &(), Some(Duration::from_millis(500))),
    )
    .await;
    assert!(abandoned.is_err());
    // Its response callback still holds the only pending slot...
    let e = c.tell("square", &(2,)).await.unwrap_err();
    assert_eq!(
        (e.kind.as_str(), e.message.as_str()),
        ("sendError", "can't send, too many pending calls (1)")
    );
    // ...until its deadline, not forever.
    let mut freed = None;
    while started.elapsed() < Duration::from_secs(5) {
        if c.tell("square", &(2,)).await.is_ok() {
            freed = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let freed = freed.expect("the abandoned call's slot is freed");
    assert!(freed >= Duration::from_millis(500), "{freed:?}");
    c.close().await;
    served.handle.shutdown();
}

/// Tasks alive on this test's runtime.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fails_pending_calls_with_disconnect_and_ends_the_sweeper() {
    // The server runs on its own runtime, so that this runtime's tasks are the client's.
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let served = serve(server_kite()).await;
            tx.send((served.url.clone(), served.handle.clone()))
                .unwrap();
            served.handle.stopped().await;
        });
    });
    let (url, handle) = rx.recv().unwrap();

    let before = alive_tasks();
    let k = client_kite(Transport::WebSocket);
    let c = k.new_client(&url);
    c.dial().await.unwrap();
    // Calls without a timeout start no sweeper.
    assert_eq!(
        c.tell_with_timeout("square", &(2,), None)
            .await
            .unwrap()
            .as_f64(),
        Some(4.0)
    );
    let connected = alive_tasks();
    assert!(connected > before);
    // The first call with a timeout starts it: one more task.
    assert_eq!(
        c.tell_with_timeout("square", &(3,), Some(Duration::from_secs(30)))
            .await
            .unwrap()
            .as_f64(),
        Some(9.0)
    );
    assert_eq!(alive_tasks(), connected + 1);
    assert_eq!(c.tell("square", &(4,)).await.unwrap().as_f64(), Some(16.0));
    assert_eq!(alive_tasks(), connected + 1, "one sweeper per connection");

    // A pending call, with a timeout far away, fails with `disconnect` when the link drops.
    let pending = tokio::spawn({
        let c = c.clone();
        async move {
            c.tell_with_timeout("never", &(), Some(Duration::from_secs(30)))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    handle.shutdown();
    let e = pending.await.unwrap().unwrap_err();
    assert_eq!(e.kind, "disconnect", "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    c.close().await;
    // Every task of the connection ended, the sweeper included.
    assert!(
        eventually(Duration::from_secs(5), || alive_tasks() == before).await,
        "{} tasks alive, {before} before dialing",
        alive_tasks()
    );
    server.join().unwrap();
}

#[test]
fn timeouts_still_fire_after_the_runtime_of_the_first_timed_call_is_gone() {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let main = runtime();
    let (served, _k, c) = main.block_on(async {
        let served = serve(server_kite()).await;
        let (k, c) = dialed(&served, 4).await;
        (served, k, c)
    });
    // The connection's first call with a timeout comes from another runtime, which then
    // shuts down (and drops every task spawned on it).
    let other = runtime();
    let r = other.block_on(c.tell_with_timeout("square", &(2,), Some(Duration::from_secs(5))));
    assert_eq!(r.unwrap().as_f64(), Some(4.0));
    drop(other);
    main.block_on(async {
        let started = Instant::now();
        let e = tokio::time::timeout(
            Duration::from_secs(5),
            c.tell_with_timeout("never", &(), Some(Duration::from_millis(200))),
        )
        .await
        .expect("the timeout fires")
        .unwrap_err();
        assert_timeout(&e, "never", "200ms");
        assert!(started.elapsed() < Duration::from_millis(1500));
        c.close().await;
        served.handle.shutdown();
    });
}
