//! Rust client ↔ Rust server over real sockets (SockJS WebSocket and XHR polling).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kite::{Function, Kite, KiteError, Request, Transport};
use serde::Serialize;
use serde_json::{json, Value};

const TRANSPORTS: [Transport; 2] = [Transport::WebSocket, Transport::XhrPolling];

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CountdownArg {
    from: u32,
    on_tick: Function,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn square_echo_and_errors() {
    let served = serve(math_kite()).await;
    for transport in TRANSPORTS {
        let k = client_kite(transport);
        let c = k.new_client(&served.url);
        c.dial().await.unwrap();
        let r = c.tell("square", &(4,)).await.unwrap();
        assert_eq!(r.as_f64(), Some(16.0), "{transport:?}");
        assert_eq!(
            c.tell("square", &4).await.unwrap().decode::<f64>().unwrap(),
            16.0
        );

        // Many argument shapes come back unchanged.
        // (Quotes and backslashes, dense and across 32-byte blocks, for the escaped forms.)
        let shapes = json!([1, "two", {"three": 3}, [4], null, true, 1.5, "ü\u{2028}<&>",
            "a\"b\\c\\\"", "\"".repeat(40), "\\".repeat(33), {"k\"": ["\\\""]}]);
        let r = c.tell("echo", &shapes).await.unwrap();
        assert_eq!(r.value(), &shapes);
        assert_eq!(c.tell("echo", &()).await.unwrap().value(), &json!([]));
        assert_eq!(c.tell("echo", &"x").await.unwrap().value(), &json!(["x"]));
        assert_eq!(
            c.tell("echo", &(vec![1, 2],)).await.unwrap().value(),
            &json!([[1, 2]])
        );
        let big = "x".repeat(200_000);
        assert_eq!(
            c.tell("echo", &(&big,)).await.unwrap().value(),
            &json!([big])
        );

        let e = c.tell("nosuchmethod", &(1,)).await.unwrap_err();
        assert_eq!(e.kind, "methodNotFound");
        assert_eq!(e.message, "Method not found: nosuchmethod");
        assert_eq!(e.id, "");

        let e = c.tell("square", &("x",)).await.unwrap_err();
        assert_eq!(e.kind, "argumentError", "{e}");
        assert_eq!(e.id.len(), 16);
        let e = c.tell("square", &()).await.unwrap_err();
        assert_eq!(
            (e.kind.as_str(), e.message.as_str()),
            ("argumentError", "Invalid array length")
        );

        let e = c
            .tell("fail", &("custom failure message",))
            .await
            .unwrap_err();
        assert_eq!(e.kind, "genericError");
        assert_eq!(e.message, "custom failure message");
        assert!(e.id.len() == 16 && e.id.bytes().all(|b| b.is_ascii_hexdigit()));

        let e = c.tell("custom", &()).await.unwrap_err();
        assert_eq!((e.kind.as_str(), e.code.as_str()), ("myError", "E42"));

        let e = c.tell("panic", &()).await.unwrap_err();
        assert_eq!(
            (e.kind.as_str(), e.message.as_str()),
            ("genericError", "boom")
        );
        // The connection survives the panic.
        assert_eq!(c.tell("square", &(3,)).await.unwrap().as_f64(), Some(9.0));
        assert_eq!(
            c.tell("kite.ping", &()).await.unwrap().as_str(),
            Some("pong")
        );
        c.close().await;
    }
    served.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_both_directions() {
    let server = math_kite();
    // The server calls a method of the caller back over the same connection.
    server.handle_func("askBack", |r: Request| async move {
        let who = r.connection().tell("whoami", &("server",)).await?;
        Ok(format!("client said {}", who.as_str().unwrap_or("?")))
    });
    // The server returns an object with a callable member.
    server.handle_func("makeAdder", |r: Request| async move {
        let base: i64 = r.args().one()?;
        #[derive(Serialize)]
        struct Adder {
            add: Function,
        }
        let conn = r.connection().clone();
        let _ = conn;
        Ok(Adder {
            add: Function::new(move |args| {
                let _ = (base, args);
            }),
        })
    });
    let served = serve(server).await;
    for transport in TRANSPORTS {
        let k = client_kite(transport);
        k.handle_func("whoami", |r: Request| async move {
            let from: String = r.args().one()?;
            Ok(format!("client (asked by {from})"))
        });
        let c = k.new_client(&served.url);
        c.dial().await.unwrap();

        let ticks = Arc::new(Mutex::new(Vec::new()));
        let t = ticks.clone();
        let on_tick = Function::new(move |args| t.lock().unwrap().push(args.one::<i64>().unwrap()));
        let r = c
            .tell("countdown", &(CountdownArg { from: 3, on_tick },))
            .await
            .unwrap();
        assert_eq!(r.as_str(), Some("done"));
        // Callbacks run in arrival order, before the response is delivered.
        assert_eq!(*ticks.lock().unwrap(), vec![3, 2, 1], "{transport:?}");

        let r = c.tell("askBack", &()).await.unwrap();
        assert_eq!(r.as_str(), Some("client said client (asked by server)"));

        // A function inside a result arrives as a callable remote function.
        let r = c.tell("makeAdder", &(1,)).await.unwrap();
        #[derive(serde::Deserialize)]
        struct Adder {
            add: kite::RemoteFunction,
        }
        let adder: Adder = r.decode().unwrap();
        adder.add.call(&(2,)).await.unwrap();
        c.close().await;
    }
    served.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_shared_by_callers() {
    let server = math_kite();
    server
        .handle_func("limited", |_r: Request| async move { Ok(1) })
        .throttle(0.0, 2);
    let served = serve(server).await;
    let k = client_kite(Transport::WebSocket);
    let a = k.new_client(&served.url);
    let b = k.new_client(&served.url);
    a.dial().await.unwrap();
    b.dial().await.unwrap();
    assert!(a.tell("limited", &()).await.is_ok());
    assert!(b.tell("limited", &()).await.is_ok());
    let e = a.tell("limited", &()).await.unwrap_err();
    assert_eq!(e.kind, "requestLimitError");
    assert_eq!(e.message, "The maximum request rate is exceeded.");
    served.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bound_per_connection() {
    let mut server = math_kite();
    server.limits.max_concurrent_handlers = 2;
    let active = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (a, p) = (active.clone(), peak.clone());
    server.handle_func("gate", move |_r: Request| {
        let (a, p) = (a.clone(), p.clone());
        async move {
            let now = a.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            a.fetch_sub(1, Ordering::SeqCst);
            Ok(now)
        }
    });
    let served = serve(server).await;
    let k = client_kite(Transport::WebSocket);
    let c = k.new_client(&served.url);
    c.dial().await.unwrap();
    let calls: Vec<_> = (0..6).map(|_| c.go("gate", &())).collect();
    let started = Instant::now();
    for call in calls {
        call.await.unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    // 6 calls, 2 at a time, 100 ms each: at least 3 rounds.
    assert!(started.elapsed() >= Duration::from_millis(290));
    served.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_error_timeout_and_disconnect() {
    let mut server = math_kite();
    server.limits.shutdown_timeout = Duration::from_millis(100);
    let served = serve(server).await;
    let k = client_kite(Transport::WebSocket);
    let c = k.new_client(&served.url);

    // Not connected yet.
    let e = c.tell("square", &(1,)).await.unwrap_err();
    assert_eq!(e.kind, "sendError");

    c.dial().await.unwrap();
    let e = c
        .tell_with_timeout("slow", &(1000,), Some(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert_eq!(e.kind, "timeout");
    assert_eq!(e.message, "No response to \"slow\" method in 100ms");

    // A pending call completes with `disconnect` as soon as the link drops.
    let pending = c.go_with_timeout("slow", &(30_000,), None);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    served.handle.shutdown();
    let e = pending.await.unwrap_err();
    assert_eq!(e.kind, "disconnect", "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(eventually(Duration::from_secs(5), || !c.is_connected()).await);
    let e = c.tell("square", &(1,)).await.unwrap_err();
    assert_eq!(e.kind, "sendError");

    c.close().await;
    let e = c.tell("square", &(1,)).await.unwrap_err();
    assert_eq!(
        (e.kind.as_str(), e.message.as_str()),
        ("sendError", "can't send, client is closed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_timeout_is_honoured() {
    // A TCP server that never answers HTTP.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let k = client_kite(Transport::WebSocket);
    let c = k.new_client(&format!("http://{addr}/kite"));
    let started = Instant::now();
    let e = c
        .dial_timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{e}");
    assert!(!c.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_forever_reconnects_after_server_restart() {
    let first = serve(math_kite()).await;
    let port: u16 = url::Url::parse(&first.url).unwrap().port().unwrap();
    let k = client_kite(Transport::WebSocket);
    let c = k.new_client(&first.url);
    let connects = counter();
    let n = connects.clone();
    c.on_connect(move |_| {
        n.fetch_add(1, Ordering::SeqCst);
    });
    let disconnects = counter();
    let d = disconnects.clone();
    c.on_disconnect(move || {
        d.fetch_add(1, Ordering::SeqCst);
    });
    tokio::time::timeout(Duration::from_secs(10), c.dial_forever())
        .await
        .unwrap();
    assert_eq!(c.tell("square", &(2,)).await.unwrap().as_f64(), Some(4.0));

    first.handle.shutdown();
    first.handle.stopped().await;
    assert!(eventually(Duration::from_secs(5), || get(&disconnects) == 1).await);

    let mut again = math_kite();
    again.config.port = port;
    let second = serve(again).await;
    assert!(eventually(Duration::from_secs(20), || c.is_connected()).await);
    assert_eq!(c.tell("square", &(5,)).await.unwrap().as_f64(), Some(25.0));
    assert!(eventually(Duration::from_secs(2), || get(&connects) == 2).await);
    c.close().await;
    second.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_inflight_calls_finish() {
    let served = serve(math_kite()).await;
    let k = client_kite(Transport::WebSocket);
    let c = k.new_client(&served.url);
    c.dial().await.unwrap();
    let pending = c.go("slow", &(300,));
    tokio::time::sleep(Duration::from_millis(50)).await;
    served.handle.shutdown();
    assert_eq!(pending.await.unwrap().as_i64(), Some(300));
    served.handle.stopped().await;
    assert!(eventually(Duration::from_secs(5), || !c.is_connected()).await);
    let c2 = k.new_client(&served.url);
    assert!(c2.dial_timeout(Duration::from_secs(2)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_pings_first_then_periodically() {
    let served = serve(math_kite()).await;
    let k = client_kite(Transport::WebSocket);
    let c = k.new_client(&served.url);
    c.dial().await.unwrap();
    let pings = counter();
    let p = pings.clone();
    let ping = Function::new(move |_| {
        p.fetch_add(1, Ordering::SeqCst);
    });
    let r = c.tell("kite.heartbeat", &(0.1, ping)).await.unwrap();
    assert!(r.is_null());
    // The first ping was delivered before the response.
    assert_eq!(get(&pings), 1);
    assert!(eventually(Duration::from_secs(5), || get(&pings) >= 4).await);
    let e = c.tell("kite.heartbeat", &(1,)).await.unwrap_err();
    assert_eq!(e.kind, "argumentError");
    served.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_methods_and_hidden_ones() {
    let served = serve(math_kite()).await;
    let k = client_kite(Transport::XhrPolling);
    let c = k.new_client(&served.url);
    c.dial().await.unwrap();
    let info = c.tell("kite.systemInfo", &()).await.unwrap();
    assert_eq!(info.value()["state"], "RUNNING", "{info}");
    assert!(c.tell("kite.log", &("hello",)).await.unwrap().is_null());
    assert_eq!(
        c.tell("kite.print", &("",)).await.unwrap().as_i64(),
        Some(0)
    );
    for m in ["kite.prompt", "kite.getPass", "kite.tunnel"] {
        assert_eq!(c.tell(m, &("x",)).await.unwrap_err().kind, "methodNotFound");
    }
    served.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_and_hooks_wrap_every_method() {
    let server = math_kite();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    server.final_func(move |r, res| {
        s.lock()
            .unwrap()
            .push(format!("{}:{}", r.method(), res.is_ok()));
    });
    server.pre_handle(|r| {
        if r.method() == "echo" && r.args().raw().first() == Some(&json!("forbidden")) {
            return Err(KiteError::new("forbidden", "no"));
        }
        Ok(())
    });
    // A tower layer added after the methods: a timeout for every method.
    server.layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(
        200,
    )));
    // A method added after the layer is wrapped too.
    server.handle_func("slowLater", |_r: Request| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(0)
    });
    let served = serve(server).await;
    let k = client_kite(Transport::WebSocket);
    let c = k.new_client(&served.url);
    c.dial().await.unwrap();
    let e = c.tell("slow", &(1000,)).await.unwrap_err();
    assert_eq!(e.kind, "genericError");
    assert!(e.message.contains("timed out"), "{e}");
    let e = c.tell("slowLater", &()).await.unwrap_err();
    assert!(e.message.contains("timed out"), "{e}");
    assert_eq!(
        c.tell("echo", &("forbidden",)).await.unwrap_err().kind,
        "forbidden"
    );
    assert_eq!(c.tell("square", &(2,)).await.unwrap().as_f64(), Some(4.0));
    assert!(
        eventually(Duration::from_secs(2), || seen.lock().unwrap().len() == 4).await,
        "{:?}",
        seen.lock().unwrap()
    );
    served.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_end_to_end() {
    use kite::auth::{issue_kite_key, issue_token, KeyPair, DEFAULT_TOKEN_TTL};
    use std::time::SystemTime;
    let kontrol = KeyPair::generate(1024).unwrap();
    let mut server = Kite::new("math", "1.0.0").unwrap();
    math_methods(&server);
    server.config.username = "alice".into();
    server.config.kontrol_user = "kontrol".into();
    server.config.kontrol_key = kontrol.public_pem().to_string();
    let served = serve(server).await;

    let k = client_kite(Transport::WebSocket);
    let c = k.new_client(&served.url);
    c.dial().await.unwrap();
    // No credential: only kite.ping works.
    assert_eq!(
        c.tell("kite.ping", &()).await.unwrap().as_str(),
        Some("pong")
    );
    let e = c.tell("square", &(2,)).await.unwrap_err();
    assert_eq!(e.kind, "authenticationError");
    assert_eq!(e.message, "No authentication information is provided");
    assert_eq!(e.id.len(), 16);

    let now = SystemTime::now();
    let key = issue_kite_key(&kontrol, "kontrol", "bob", "http://127.0.0.1:1/kite", now).unwrap();
    c.set_auth(Some(kite::Auth::kite_key(key)));
    assert_eq!(c.tell("square", &(3,)).await.unwrap().as_f64(), Some(9.0));

    let token = issue_token(
        &kontrol,
        "/alice/unknown/math",
        "carol",
        "kontrol",
        DEFAULT_TOKEN_TTL,
        now,
        true,
    )
    .unwrap();
    c.set_auth(Some(kite::Auth::token(token)));
    assert_eq!(c.tell("square", &(4,)).await.unwrap().as_f64(), Some(16.0));

    let wrong = issue_token(
        &kontrol,
        "/bob/unknown/math",
        "carol",
        "kontrol",
        DEFAULT_TOKEN_TTL,
        now,
        true,
    )
    .unwrap();
    c.set_auth(Some(kite::Auth::token(wrong)));
    let e = c.tell("square", &(4,)).await.unwrap_err();
    assert_eq!(e.kind, "authenticationError");
    assert!(e.message.starts_with("token: audience"), "{e}");

    c.set_auth(Some(kite::Auth::new("password", "x")));
    let e = c.tell("square", &(4,)).await.unwrap_err();
    assert_eq!(e.message, "Unknown authentication type: password");
    served.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kite_new_validates() {
    assert!(Kite::new("", "1.0.0").is_err());
    assert!(Kite::new("x", "1.0").is_err());
    assert!(Kite::new("x", "1.0.0.0").is_err());
    let k = Kite::new("x", "1.0.0").unwrap();
    assert_eq!(k.identity().username, "unknown");
    assert_eq!(k.identity().id.len(), 36);
    let _ = Value::Null;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_requests_but_inflight_handlers_can_call_back() {
    let server = math_kite();
    server.handle_func("slowAskBack", |r: Request| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let who = r.connection().tell("whoami", &()).await?;
        Ok(who.into_value())
    });
    let served = serve(server).await;
    let k = client_kite(Transport::WebSocket);
    k.handle_func("whoami", |_r: Request| async move { Ok("the client") });
    let c = k.new_client(&served.url);
    c.dial().await.unwrap();
    let pending = c.go("slowAskBack", &());
    tokio::time::sleep(Duration::from_millis(50)).await;
    served.handle.shutdown();
    // Wait until the server is draining: new requests are refused.
    let mut refused = None;
    for _ in 0..100 {
        match c.tell("square", &(2,)).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("refused during shutdown");
    assert_eq!(e.message, "kite is shutting down");
    assert_eq!(pending.await.unwrap().as_str(), Some("the client"));
    served.handle.stopped().await;
}
