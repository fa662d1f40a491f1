//! Hand-written wire input against a Rust kite (raw WebSocket and SockJS WebSocket), TLS,
//! and client-side details (token-expiry hook, user error types, callback bounds).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use kite::{Function, Kite, KiteError, RemoteFunction, Request, Transport};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(url: &str) -> Ws {
    let ws_url = url.replace("http://", "ws://") + "/websocket";
    tokio_tungstenite::connect_async(&ws_url).await.unwrap().0
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(WsMessage::Text(text.to_string().into()))
        .await
        .unwrap();
}

/// Next dnode message on a raw WebSocket.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("message in time")
            .expect("open")
            .unwrap();
        if let WsMessage::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

fn request(method: &str, rc: u64, with_args: Value) -> String {
    json!({
        "method": method,
        "arguments": [{"kite": {"name": "raw", "username": "raw"}, "authentication": null,
                       "responseCallback": "[Function]", "withArgs": with_args}],
        "callbacks": {rc.to_string(): [0, "responseCallback"]}
    })
    .to_string()
}

/// Sends `text`, then a ping probe with callback id 999; returns every reply received up
/// to and including the probe's.
async fn replies_to(ws: &mut Ws, text: &str) -> Vec<Value> {
    send(ws, text).await;
    send(ws, &request("kite.ping", 999, json!([]))).await;
    let mut out = Vec::new();
    loop {
        let m = next(ws).await;
        let done = m["method"] == 999;
        out.push(m);
        if done {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_odd_input_over_raw_websocket() {
    let k = math_kite();
    k.handle_func("whoami", |r: Request| async move {
        Ok(r.connection().remote_kite().map(|k| k.name.clone()))
    });
    let served = serve(k).await;
    let mut ws = raw(&served.url).await;

    // Q1 inputs: no reply, no crash.
    for text in [
        r#"{"method":"kite.ping","arguments":[],"callbacks":{}}"#,
        r#"{"method":"kite.ping","arguments":null,"callbacks":{}}"#,
        r#"{"method":"nosuch","arguments":[],"callbacks":{}}"#,
        r#"{"method":99,"arguments":[1],"callbacks":{}}"#,
        r#"{"method":-1,"arguments":[],"callbacks":{}}"#,
        r#"{"method":true}"#,
        r#"not json"#,
        r#"{"method":"square","arguments":[{"responseCallback":"[Function]"}],"callbacks":{"x":[0,"responseCallback"]}}"#,
        r#"{"method":"square","arguments":[7],"callbacks":{"0":[5]}}"#,
        "",
    ] {
        let r = replies_to(&mut ws, text).await;
        assert_eq!(r.len(), 1, "{text}: {r:?}");
    }

    // Bad option fields with a response callback → argumentError, connection lives.
    let bad = r#"{"method":"square","arguments":[{"kite":5,"responseCallback":"[Function]","withArgs":[2]}],"callbacks":{"3":[0,"responseCallback"]}}"#;
    let r = replies_to(&mut ws, bad).await;
    let reply = r.iter().find(|m| m["method"] == 3).unwrap();
    assert_eq!(reply["arguments"][0]["error"]["type"], "argumentError");
    let two = r#"{"method":"kite.ping","arguments":[{"responseCallback":"[Function]"},{}],"callbacks":{"4":["0","responseCallback"]}}"#;
    let r = replies_to(&mut ws, two).await;
    let reply = r.iter().find(|m| m["method"] == 4).unwrap();
    assert_eq!(reply["arguments"][0]["error"]["type"], "argumentError");

    // kite.js style: withArgs a scalar, string path elements, links, method last.
    send(&mut ws, r#"{"arguments":[{"withArgs":5,"responseCallback":"[Function]"}],"callbacks":{"5":["0","responseCallback"]},"links":[],"method":"square"}"#).await;
    let m = next(&mut ws).await;
    assert_eq!(
        (m["method"].clone(), m["arguments"][0]["result"].as_f64()),
        (json!(5), Some(25.0))
    );
    // Go style: withArgs null → argumentError for a method reading its argument.
    send(&mut ws, &request("square", 6, Value::Null)).await;
    let m = next(&mut ws).await;
    assert_eq!(
        m["arguments"][0]["error"]["message"],
        "Invalid array length"
    );

    // Several requests: identity of the first request is remembered.
    send(&mut ws, &request("whoami", 7, json!([]))).await;
    let m = next(&mut ws).await;
    assert_eq!(m["arguments"][0]["result"], "raw");
    send(&mut ws, r#"{"method":"whoami","arguments":[{"kite":{"name":"other"},"responseCallback":"[Function]"}],"callbacks":{"8":[0,"responseCallback"]}}"#).await;
    let m = next(&mut ws).await;
    assert_eq!(m["arguments"][0]["result"], "raw");
    served.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sockjs_sessions_with_3000() {
    let served = serve(math_kite()).await;
    let url = served.url.replace("http://", "ws://") + "/000/shutdowntest/websocket";
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let frame = |text: String| WsMessage::Text(serde_json::to_string(&[text]).unwrap().into());
    ws.send(frame(request("square", 0, json!([3]))))
        .await
        .unwrap();
    let mut frames = Vec::new();
    // o, then the reply.
    while frames.len() < 2 {
        if let Some(Ok(WsMessage::Text(t))) = ws.next().await {
            frames.push(t.to_string());
        }
    }
    assert_eq!(frames[0], "o");
    assert!(frames[1].contains("\\\"result\\\":9"), "{}", frames[1]);
    served.handle.shutdown();
    let mut closing = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        match m {
            Ok(WsMessage::Text(t)) if t.starts_with('c') => {
                closing = Some(t.to_string());
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(closing.as_deref(), Some(r#"c[3000,"Go away!"]"#));
}

#[derive(Debug)]
enum MathError {
    Negative(f64),
}

impl From<MathError> for KiteError {
    fn from(e: MathError) -> KiteError {
        match e {
            MathError::Negative(x) => {
                KiteError::new("mathError", format!("negative argument {x}")).with_code("NEG")
            }
        }
    }
}

fn checked_sqrt(x: f64) -> Result<f64, MathError> {
    if x < 0.0 {
        Err(MathError::Negative(x))
    } else {
        Ok(x.sqrt())
    }
}

struct ExpiredTokens;

impl kite::Authenticate for ExpiredTokens {
    fn authenticate<'a>(
        &'a self,
        auth: &'a kite::Auth,
        _local: &'a kite::protocol::Kite,
    ) -> kite::handler::AuthFuture<'a> {
        Box::pin(async move {
            if auth.key == "good" {
                Ok("tester".to_string())
            } else {
                Err(KiteError::authentication("token: token is expired"))
            }
        })
    }
}

/// Maps `key-<name>` to the username `<name>`; anything else is rejected.
struct NamedKeys;

impl kite::Authenticate for NamedKeys {
    fn authenticate<'a>(
        &'a self,
        auth: &'a kite::Auth,
        _local: &'a kite::protocol::Kite,
    ) -> kite::handler::AuthFuture<'a> {
        Box::pin(async move {
            match auth.key.strip_prefix("key-") {
                Some(name) => Ok(name.to_string()),
                None => Err(KiteError::authentication("unknown key")),
            }
        })
    }
}

/// The server reuses the identity and credentials of a connection's previous request
/// while they stay the same; every change must still be seen.
/// A hand-written dnode peer on raw WebSocket, or on SockJS WebSocket (where messages
/// travel escaped inside frames, and the kite reads them in that form).
struct Peer {
    ws: Ws,
    sockjs: bool,
    /// Messages of the last `a[...]` frame not yet returned.
    pending: std::collections::VecDeque<Value>,
}

impl Peer {
    async fn connect(url: &str, sockjs: bool) -> Peer {
        if !sockjs {
            return Peer {
                ws: raw(url).await,
                sockjs,
                pending: Default::default(),
            };
        }
        let url = url.replace("http://", "ws://") + "/000/peertest/websocket";
        let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let mut peer = Peer {
            ws,
            sockjs,
            pending: Default::default(),
        };
        assert_eq!(peer.frame().await, "o");
        peer
    }

    async fn frame(&mut self) -> String {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("frame in time")
                .expect("open")
                .unwrap();
            if let WsMessage::Text(t) = m {
                return t.to_string();
            }
        }
    }

    async fn send(&mut self, text: &str) {
        if self.sockjs {
            send(&mut self.ws, &serde_json::to_string(&[text]).unwrap()).await;
        } else {
            send(&mut self.ws, text).await;
        }
    }

    async fn next(&mut self) -> Value {
        if !self.sockjs {
            return next(&mut self.ws).await;
        }
        loop {
            if let Some(m) = self.pending.pop_front() {
                return m;
            }
            let frame = self.frame().await;
            if let Some(array) = frame.strip_prefix('a') {
                let texts: Vec<String> = serde_json::from_str(array).unwrap();
                for t in texts {
                    self.pending.push_back(serde_json::from_str(&t).unwrap());
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_identity_and_credentials_follow_each_request() {
    caller_identity_and_credentials(false).await;
}

/// Over SockJS the kite reads the usual requests in the escaped form, and passes over a
/// `kite` object that repeats the previous one byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_identity_and_credentials_follow_each_request_over_sockjs() {
    caller_identity_and_credentials(true).await;
}

async fn caller_identity_and_credentials(sockjs: bool) {
    let mut k = math_kite();
    k.config.disable_authentication = false;
    k.set_authenticator(NamedKeys);
    let who = |r: Request| async move {
        Ok(json!([
            r.username(),
            r.caller().name,
            r.caller().username,
            r.caller().id,
            r.auth().map(|a| a.key.clone())
        ]))
    };
    k.handle_func("who", who);
    k.handle_func("whoOpen", who).disable_authentication();
    let served = serve(k).await;
    let mut peer = Peer::connect(&served.url, sockjs).await;
    let call = |rc: u64, method: &str, kite: Value, key: Option<&str>| {
        json!({
            "method": method,
            "arguments": [{"kite": kite,
                           "authentication": key.map(|k| json!({"type": "token", "key": k})),
                           "responseCallback": "[Function]", "withArgs": []}],
            "callbacks": {rc.to_string(): [0, "responseCallback"]}
        })
        .to_string()
    };
    let cases = [
        (
            "who",
            json!({"name": "a", "username": "claimed", "id": "1"}),
            Some("key-alice"),
            json!(["alice", "a", "alice", "1", "key-alice"]),
        ),
        (
            "who",
            json!({"name": "a", "username": "claimed", "id": "1"}),
            Some("key-alice"),
            json!(["alice", "a", "alice", "1", "key-alice"]),
        ),
        (
            "who",
            json!({"name": "a", "username": "claimed", "id": "1"}),
            Some("key-bob"),
            json!(["bob", "a", "bob", "1", "key-bob"]),
        ),
        (
            "who",
            json!({"name": "b", "username": "claimed", "id": "1"}),
            Some("key-bob"),
            json!(["bob", "b", "bob", "1", "key-bob"]),
        ),
        (
            "who",
            json!({"name": "b", "username": "claimed", "id": "2"}),
            Some("key-bob"),
            json!(["bob", "b", "bob", "2", "key-bob"]),
        ),
        (
            "whoOpen",
            json!({"name": "b", "username": "claimed", "id": "2"}),
            Some("key-bob"),
            json!(["claimed", "b", "claimed", "2", "key-bob"]),
        ),
        (
            "whoOpen",
            json!({"name": "b\"q", "username": "esc\tped", "id": "2"}),
            None,
            json!(["esc\tped", "b\"q", "esc\tped", "2", null]),
        ),
        (
            "who",
            json!({"name": "b", "username": "claimed", "id": "2"}),
            Some("key-alice"),
            json!(["alice", "b", "alice", "2", "key-alice"]),
        ),
        (
            "who",
            json!({"name": "b", "username": "claimed", "id": "2"}),
            Some("key-bob"),
            json!(["bob", "b", "bob", "2", "key-bob"]),
        ),
        // The same identity once more (over SockJS: passed over, not read again).
        (
            "who",
            json!({"name": "b", "username": "claimed", "id": "2"}),
            Some("key-alice"),
            json!(["alice", "b", "alice", "2", "key-alice"]),
        ),
        // Another that shares its first bytes.
        (
            "who",
            json!({"name": "b", "username": "claimed", "id": "3"}),
            Some("key-bob"),
            json!(["bob", "b", "bob", "3", "key-bob"]),
        ),
        (
            "who",
            json!({"name": "b", "username": "claimed", "id": "2"}),
            Some("key-bob"),
            json!(["bob", "b", "bob", "2", "key-bob"]),
        ),
        // The same credential again (over SockJS: passed over, not read again), across a
        // request without one.
        (
            "who",
            json!({"name": "b", "username": "claimed", "id": "2"}),
            Some("key-bob"),
            json!(["bob", "b", "bob", "2", "key-bob"]),
        ),
        (
            "whoOpen",
            json!({"name": "b", "username": "claimed", "id": "2"}),
            None,
            json!(["claimed", "b", "claimed", "2", null]),
        ),
        (
            "who",
            json!({"name": "b", "username": "claimed", "id": "2"}),
            Some("key-bob"),
            json!(["bob", "b", "bob", "2", "key-bob"]),
        ),
        // A credential that shares the known one's first bytes is another.
        (
            "who",
            json!({"name": "b", "username": "claimed", "id": "2"}),
            Some("key-bobby"),
            json!(["bobby", "b", "bobby", "2", "key-bobby"]),
        ),
        (
            "who",
            json!({"name": "b", "username": "claimed", "id": "2"}),
            Some("key-bob"),
            json!(["bob", "b", "bob", "2", "key-bob"]),
        ),
    ];
    for (i, (method, kite, key, want)) in cases.into_iter().enumerate() {
        let rc = i as u64;
        peer.send(&call(rc, method, kite, key)).await;
        let m = peer.next().await;
        assert_eq!(m["method"], json!(rc));
        assert_eq!(m["arguments"][0]["result"], want, "case {i}");
    }
    // A rejected key after accepted ones is rejected.
    peer.send(&call(50, "who", json!({"name": "b"}), Some("bad")))
        .await;
    let m = peer.next().await;
    assert_eq!(m["arguments"][0]["error"]["type"], "authenticationError");
    // Repeated, the rejected key is still rejected; then a good one is accepted again.
    let bad = || call(51, "who", json!({"name": "b"}), Some("bad"));
    peer.send(&bad()).await;
    let m = peer.next().await;
    assert_eq!(m["arguments"][0]["error"]["type"], "authenticationError");
    peer.send(&bad()).await;
    let m = peer.next().await;
    assert_eq!(m["arguments"][0]["error"]["type"], "authenticationError");
    for rc in [52, 53] {
        peer.send(&call(rc, "who", json!({"name": "b"}), Some("key-carol")))
            .await;
        let m = peer.next().await;
        assert_eq!(m["arguments"][0]["result"][0], "carol", "{m}");
    }
    served.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_errors_typed_args_token_hooks_and_callback_bound() {
    let mut k = Kite::new("math", "1.0.0").unwrap();
    math_methods(&k);
    k.config.disable_authentication = false;
    k.set_authenticator(ExpiredTokens);
    k.handle_func("sqrt", |r: Request| async move {
        let x: f64 = r.args().one()?;
        Ok(checked_sqrt(x)?)
    });
    k.handle_func("repeat", |r: Request| async move {
        let (s, n): (String, u32) = r.args().decode()?;
        Ok(format!("{}:{}", r.username(), s.repeat(n as usize)))
    });
    k.handle_func("callAll", |r: Request| async move {
        let fs: Vec<RemoteFunction> = r.args().decode()?;
        for (i, f) in fs.iter().enumerate() {
            f.call(&(i,)).await?;
        }
        Ok(fs.len())
    });
    let served = serve(k).await;

    let mut ck = client_kite(Transport::WebSocket);
    ck.limits.max_callbacks = 2;
    let c = ck.new_client(&served.url);
    let expired = counter();
    let e2 = expired.clone();
    c.on_token_expire(move || {
        e2.fetch_add(1, Ordering::SeqCst);
    });
    let renewed = Arc::new(Mutex::new(String::new()));
    let r2 = renewed.clone();
    c.on_token_renew(move |t| *r2.lock().unwrap() = t.to_string());
    c.dial().await.unwrap();

    c.set_auth(Some(kite::Auth::token("old")));
    let e = c.tell("sqrt", &(4,)).await.unwrap_err();
    assert!(e.is_token_expired());
    assert_eq!(get(&expired), 1);
    c.renew_token("good");
    assert_eq!(*renewed.lock().unwrap(), "good");

    assert_eq!(c.tell("sqrt", &(16,)).await.unwrap().as_f64(), Some(4.0));
    let e = c.tell("sqrt", &(-1,)).await.unwrap_err();
    assert_eq!((e.kind.as_str(), e.code.as_str()), ("mathError", "NEG"));
    assert_eq!(e.message, "negative argument -1");

    let r = c.tell("repeat", &("ab", 3)).await.unwrap();
    assert_eq!(r.as_str(), Some("tester:ababab"));
    assert_eq!(
        c.tell("repeat", &(3, "ab")).await.unwrap_err().kind,
        "argumentError"
    );

    // Only the two most recent functions are remembered: the first one is forgotten.
    let called = Arc::new(Mutex::new(Vec::new()));
    let f = |n: usize| {
        let called = called.clone();
        Function::new(move |_| called.lock().unwrap().push(n))
    };
    let r = c.tell("callAll", &(f(0), f(1), f(2))).await.unwrap();
    assert_eq!(r.as_i64(), Some(3));
    assert_eq!(*called.lock().unwrap(), vec![1, 2]);
    served.handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_and_dials_over_tls() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    server_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut k = math_kite();
    k.tls = Some(Arc::new(server_tls));
    let served = serve(k).await;
    assert!(
        served.url.starts_with("https://127.0.0.1:"),
        "{}",
        served.url
    );

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client_tls = Arc::new(client_tls);
    for transport in [
        kite_sockjs::client::ClientTransport::WebSocket,
        kite_sockjs::client::ClientTransport::XhrPolling,
    ] {
        let ck = client_kite(Transport::Auto);
        let c = ck.new_client(&served.url);
        c.set_connector(kite::transport::SockJsConnector::new(
            kite_sockjs::client::ClientConfig {
                transport,
                tls: Some(client_tls.clone()),
                ..Default::default()
            },
        ));
        c.dial().await.unwrap();
        assert_eq!(
            c.tell("square", &(6,)).await.unwrap().as_f64(),
            Some(36.0),
            "{transport:?}"
        );
        c.close().await;
    }
    // A plain-HTTP client cannot talk to the TLS listener.
    let ck = client_kite(Transport::WebSocket);
    let plain = ck.new_client(&served.url.replace("https://", "http://"));
    assert!(plain.dial_timeout(Duration::from_secs(3)).await.is_err());
    served.handle.shutdown();
}

/// A peer answering every request with the response shape named by its first argument
/// (kite.js browsers reply `[err, result]`, PROTOCOL.md 11.4).
async fn odd_responder() -> (String, tokio::task::JoinHandle<()>) {
    let app =
        kite_sockjs::server::router(kite_sockjs::server::ServerConfig::default(), |session| {
            tokio::spawn(async move {
                let (tx, mut rx) = session.split();
                while let Some(text) = rx.recv().await {
                    let m: Value = serde_json::from_str(&text).unwrap();
                    let (id, _) = m["callbacks"].as_object().unwrap().iter().next().unwrap();
                    let id: u64 = id.parse().unwrap();
                    let arguments = match m["arguments"][0]["withArgs"][0].as_str().unwrap() {
                        "canonical" => json!([{"error": null, "result": "pong"}]),
                        "pair" => json!([null, "pong"]),
                        "empty" => json!([]),
                        "null" => json!([null]),
                        "pairError" => json!([{"message": "js failure"}, null]),
                        "string" => json!(["plain failure"]),
                        "deep" => {
                            let mut v = json!(1);
                            for _ in 0..200 {
                                v = json!([v]);
                            }
                            json!([{"error": null, "result": v}])
                        }
                        _ => json!([1, 2, 3]),
                    };
                    let reply =
                        json!({"method": id, "arguments": arguments, "callbacks": {}, "links": []});
                    if tx.send(reply.to_string()).await.is_err() {
                        break;
                    }
                }
            });
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}/kite"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liberal_response_decoding() {
    let (url, task) = odd_responder().await;
    let k = client_kite(Transport::WebSocket);
    let c = k.new_client(&url);
    c.dial().await.unwrap();
    for (shape, want) in [
        ("canonical", Ok(json!("pong"))),
        ("pair", Ok(json!("pong"))),
        ("empty", Ok(Value::Null)),
        ("null", Ok(Value::Null)),
        ("pairError", Err(("genericError", "js failure"))),
        ("string", Err(("genericError", "plain failure"))),
        ("three", Err(("invalidResponse", "Invalid array length"))),
    ] {
        let got = c.tell("anything", &(shape,)).await;
        match (got, want) {
            (Ok(r), Ok(v)) => assert_eq!(r.value(), &v, "{shape}"),
            (Err(e), Err((kind, message))) => {
                assert_eq!(
                    (e.kind.as_str(), e.message.as_str()),
                    (kind, message),
                    "{shape}"
                )
            }
            (got, want) => panic!("{shape}: got {got:?}, want {want:?}"),
        }
    }
    // A response nested beyond the decoder's depth limit fails the call at once (it used
    // to be dropped, leaving the call waiting).
    let e = tokio::time::timeout(Duration::from_secs(5), c.tell("anything", &("deep",)))
        .await
        .expect("answered in time")
        .unwrap_err();
    assert_eq!(e.kind, "invalidResponse");
    assert!(e.message.starts_with("malformed response"), "{}", e.message);
    task.abort();
}
