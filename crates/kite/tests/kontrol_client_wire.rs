//! The kite side of Kontrol against scripted Kontrol servers: what our kite sends equals what
//! the Go kite sent in the captures (/work/shared/vectors, copied to crates/kite-testkit/vectors/), modulo
//! ids, host names and credentials; and our kite handles what Go Kontrol answers
//! (RegisterResult, `kite.heartbeat`, getKites results, tokens, HTTP registration,
//! `registeragain`, watch events, key adoption, token renewal).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use kite::auth::{issue_kite_key, issue_token, KeyPair};
use kite::protocol::KontrolQuery;
use kite::{Kite, KontrolSettings, Transport, WatchAction};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Captures

use kite_testkit::vectors::capture as load;

/// WebSocket frames of a capture, in order: (from client?, payload).
fn ws_frames(capture: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut lines = capture.lines();
    while let Some(line) = lines.next() {
        if !line.contains("WS-FRAME text") || line.ends_with("(0 bytes)") {
            continue;
        }
        out.push((
            line.contains("C->S"),
            lines.next().unwrap_or("").to_string(),
        ));
    }
    out
}

/// The dnode messages of a SockJS frame (`a[...]` from servers, `[...]` from clients).
fn messages(frame: &str) -> Vec<Value> {
    let array = frame.strip_prefix('a').unwrap_or(frame);
    let texts: Vec<String> = serde_json::from_str(array).unwrap_or_default();
    texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect()
}

fn client_messages(capture: &str) -> Vec<Value> {
    ws_frames(capture)
        .into_iter()
        .filter(|(c, _)| *c)
        .flat_map(|(_, p)| messages(&p))
        .collect()
}

fn server_messages(capture: &str) -> Vec<Value> {
    ws_frames(capture)
        .into_iter()
        .filter(|(c, p)| !*c && p.starts_with('a'))
        .flat_map(|(_, p)| messages(&p))
        .collect()
}

/// Blanks what differs between runs: the caller's id and host name, credentials.
fn normalize(mut v: Value) -> Value {
    if let Some(args) = v.get_mut("arguments").and_then(Value::as_array_mut) {
        for a in args {
            if let Some(k) = a.get_mut("kite").filter(|k| k.is_object()) {
                k["id"] = json!("<kite id>");
                k["hostname"] = json!("<hostname>");
            }
            if let Some(key) = a.pointer_mut("/authentication/key") {
                *key = json!("<credential>");
            }
        }
    }
    v
}

// ---------------------------------------------------------------------------------------
// A scripted Kontrol on the SockJS router

type Script = Arc<dyn Fn(&Value) -> Vec<Value> + Send + Sync>;

struct FakeKontrol {
    url: String,
    seen: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKontrol {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeKontrol {
    /// Every message received is recorded; `script` answers it with messages to send.
    async fn start(script: Script) -> FakeKontrol {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let app = kite_sockjs::server::router(
            kite_sockjs::server::ServerConfig::default(),
            move |session| {
                let script = script.clone();
                let seen = recorded.clone();
                tokio::spawn(async move {
                    let (tx, mut rx) = session.split();
                    while let Some(text) = rx.recv().await {
                        let msg: Value = serde_json::from_str(&text).unwrap();
                        seen.lock().unwrap().push(msg.clone());
                        for reply in script(&msg) {
                            if tx.send(reply.to_string()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeKontrol {
            url: format!("http://{addr}/kite"),
            seen,
            task,
        }
    }

    fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    fn requests(&self, method: &str) -> Vec<Value> {
        self.seen()
            .into_iter()
            .filter(|m| m["method"] == method)
            .collect()
    }
}

/// The callback id of `path` in a request's `callbacks` map.
fn callback_id(msg: &Value, path: &[Value]) -> Option<u64> {
    msg["callbacks"]
        .as_object()?
        .iter()
        .find(|(_, p)| p.as_array().map(|a| a.as_slice()) == Some(path))
        .and_then(|(id, _)| id.parse().ok())
}

fn response_to(msg: &Value, result: Value) -> Value {
    let id = callback_id(msg, &[json!(0), json!("responseCallback")]).unwrap();
    json!({"method": id, "arguments": [{"error": null, "result": result}], "callbacks": {}})
}

fn error_to(msg: &Value, kind: &str, message: &str) -> Value {
    let id = callback_id(msg, &[json!(0), json!("responseCallback")]).unwrap();
    json!({"method": id, "arguments": [{"error": {"type": kind, "message": message, "code": "", "id": ""}, "result": null}], "callbacks": {}})
}

struct Keys {
    kontrol: KeyPair,
}

fn keys() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| Keys {
        kontrol: KeyPair::generate(1024).unwrap(),
    })
}

/// A kite configured like the Go capture kites: the given identity, a kite key for
/// `username` from our test Kontrol key, Kontrol at `kontrol_url`.
fn kite_for(name: &str, username: &str, environment: &str, kontrol_url: &str) -> Kite {
    let key = issue_kite_key(
        &keys().kontrol,
        "kontrol",
        username,
        kontrol_url,
        SystemTime::now(),
    )
    .unwrap();
    let mut k = Kite::new(name, "1.0.0").unwrap();
    k.config.username = username.into();
    k.config.environment = environment.into();
    k.config.kite_key = key;
    k.config.kontrol_url = kontrol_url.into();
    k.config.kontrol_user = "kontrol".into();
    k.config.kontrol_key = keys().kontrol.public_pem().into();
    k.config.timeout = Duration::from_secs(5);
    k
}

// ---------------------------------------------------------------------------------------
// register over the kite connection (register_kontrol.txt, heartbeat_ws.txt)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_sends_like_go_and_answers_kontrols_heartbeat() {
    let capture = load("register_kontrol");
    let go_client = client_messages(&capture);
    let go_server = server_messages(&capture);
    // [0] kite.heartbeat request, [1] the RegisterResult.
    let replies = go_server[..2].to_vec();
    for transport in [Transport::WebSocket, Transport::XhrPolling] {
        let replies = replies.clone();
        let kontrol = FakeKontrol::start(Arc::new(move |m: &Value| {
            if m["method"] == "register" {
                replies.clone()
            } else {
                vec![]
            }
        }))
        .await;
        let mut k = kite_for("math", "alice", "capture", &kontrol.url);
        k.config.transport = transport;
        let result = k.register("http://127.0.0.1:3638/kite").await.unwrap();
        assert_eq!(result.url, "http://127.0.0.1:3638/kite");
        assert_eq!(result.heartbeat_interval, 0);
        assert_eq!(result.public_key, None);

        // The register request equals Go's.
        let sent = kontrol.seen();
        assert_eq!(normalize(sent[0].clone()), normalize(go_client[0].clone()));
        // Then the first heartbeat ping and the reply to kite.heartbeat, as Go sends them.
        assert!(
            eventually(Duration::from_secs(5), || kontrol.seen().len() >= 3).await,
            "{:?}",
            kontrol.seen()
        );
        let sent = kontrol.seen();
        assert_eq!(sent[1], go_client[1], "first ping over {transport:?}");
        assert_eq!(
            sent[2], go_client[2],
            "kite.heartbeat reply over {transport:?}"
        );
        k.kontrol().close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_pings_repeat_at_kontrols_interval() {
    // Kontrol asks for a ping every second (the capture's 10 s, shortened).
    let kontrol = FakeKontrol::start(Arc::new(|m: &Value| {
        if m["method"] == "register" {
            vec![
                json!({"method":"kite.heartbeat","arguments":[{"kite":{"name":"kontrol","username":"kontrol","id":"k","environment":"unknown","region":"unknown","version":"0.0.1","hostname":"vm"},"authentication":null,"responseCallback":"[Function]","withArgs":[1,"[Function]"]}],"callbacks":{"0":[0,"responseCallback"],"1":[0,"withArgs",1]}}),
                response_to(m, json!({"url": "http://127.0.0.1:1/kite", "heartbeatInterval": 0})),
            ]
        } else {
            vec![]
        }
    }))
    .await;
    let k = kite_for("math", "alice", "capture", &kontrol.url);
    k.register("http://127.0.0.1:1/kite").await.unwrap();
    let pings = || {
        kontrol
            .seen()
            .iter()
            .filter(|m| m["method"] == 1 && m["arguments"] == json!([]))
            .count()
    };
    assert!(eventually(Duration::from_secs(6), || pings() >= 3).await);
    k.kontrol().close().await;
}

// ---------------------------------------------------------------------------------------
// getKites / getToken (getkites.txt, gettoken.txt)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_kites_sends_like_go_and_builds_token_clients() {
    let capture = load("getkites");
    let go_request = client_messages(&capture).remove(0);
    let go_reply = server_messages(&capture).remove(0);
    let reply = go_reply.clone();
    let kontrol = FakeKontrol::start(Arc::new(move |m: &Value| {
        if m["method"] == "getKites" {
            // The captured reply, addressed to this request's response callback.
            vec![response_to(m, reply["arguments"][0]["result"].clone())]
        } else {
            vec![]
        }
    }))
    .await;
    let k = kite_for("gokite-client", "bob", "unknown", &kontrol.url);
    let query = KontrolQuery {
        username: "alice".into(),
        environment: "unknown".into(),
        name: "math".into(),
        ..Default::default()
    };
    let clients = k.get_kites(&query).await.unwrap();
    assert_eq!(
        normalize(kontrol.seen()[0].clone()),
        normalize(go_request.clone())
    );
    assert_eq!(clients.len(), 1);
    let expected = &go_reply["arguments"][0]["result"]["kites"][0];
    let c = &clients[0];
    assert_eq!(c.url(), expected["url"].as_str().unwrap());
    let auth = c.auth().unwrap();
    assert_eq!(auth.kind, "token");
    assert_eq!(auth.key, expected["token"].as_str().unwrap());
    let remote = c.remote_kite().unwrap();
    assert_eq!(remote.id, expected["kite"]["id"].as_str().unwrap());
    assert_eq!(remote.name, "math");
    assert!(!c.is_connected(), "ready to dial, not dialed");

    // The raw result keeps keyId.
    let raw = k.kontrol().get_kites_raw(&query).await.unwrap();
    assert_eq!(raw[0].key_id, expected["keyId"].as_str().unwrap());
    k.kontrol().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_token_sends_like_go() {
    let capture = load("gettoken");
    let go_request = client_messages(&capture).remove(0);
    let go_reply = server_messages(&capture).remove(0);
    let reply = go_reply.clone();
    let kontrol = FakeKontrol::start(Arc::new(move |m: &Value| {
        if m["method"] == "getToken" {
            vec![response_to(m, reply["arguments"][0]["result"].clone())]
        } else {
            vec![]
        }
    }))
    .await;
    let k = kite_for("gokite-client", "bob", "unknown", &kontrol.url);
    let query = KontrolQuery {
        username: "alice".into(),
        environment: "unknown".into(),
        name: "math".into(),
        ..Default::default()
    };
    let token = k.get_token(&query).await.unwrap();
    assert_eq!(token, go_reply["arguments"][0]["result"].as_str().unwrap());
    assert_eq!(normalize(kontrol.seen()[0].clone()), normalize(go_request));
    // force: true is added to the same object.
    k.kontrol().get_token_force(&query).await.unwrap();
    let forced = &kontrol.requests("getToken")[1]["arguments"][0]["withArgs"][0];
    assert_eq!(forced["force"], json!(true));
    assert_eq!(forced["name"], json!("math"));
    k.kontrol().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_kite_round_robin_and_errors() {
    let kites: Vec<Value> = (0..3)
        .map(|i| json!({"kite": {"username":"alice","environment":"e","name":"math","version":"1.0.0","region":"r","hostname":"h","id":format!("id-{i}")}, "url": format!("http://127.0.0.1:{}/kite", 5000 + i), "token": "t"}))
        .collect();
    let kontrol = FakeKontrol::start(Arc::new(move |m: &Value| {
        let query = &m["arguments"][0]["withArgs"][0]["query"];
        match m["method"].as_str() {
            Some("getKites") if query["name"] == "math" => {
                // Kontrol shuffles; give them in a changing order.
                let mut k = kites.clone();
                k.reverse();
                vec![response_to(m, json!({ "kites": k }))]
            }
            Some("getKites") => vec![response_to(m, json!({ "kites": [] }))],
            Some("getToken") => vec![error_to(m, "genericError", "no kites found")],
            _ => vec![],
        }
    }))
    .await;
    let k = kite_for("client", "bob", "unknown", &kontrol.url);
    let q = KontrolQuery {
        username: "alice".into(),
        name: "math".into(),
        ..Default::default()
    };
    let mut ports = Vec::new();
    for _ in 0..6 {
        ports.push(k.get_kite(&q).await.unwrap().url().to_string());
    }
    assert_eq!(ports[0..3], ports[3..6]);
    let mut distinct = ports[0..3].to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ports:?}");

    let none = KontrolQuery {
        username: "alice".into(),
        name: "nothing".into(),
        ..Default::default()
    };
    assert!(k.get_kites(&none).await.unwrap().is_empty());
    let e = k.get_kite(&none).await.unwrap_err();
    assert!(e.message.contains("no kites available"), "{e}");
    let e = k.get_token(&none).await.unwrap_err();
    assert_eq!(e.message, "no kites found");
    k.kontrol().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_kontrol_names_the_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/kite", listener.local_addr().unwrap());
    drop(listener);
    let k = kite_for("client", "bob", "unknown", &url);
    let e = k.get_kites(&KontrolQuery::default()).await.unwrap_err();
    assert!(e.message.contains(&url), "{e}");
    let mut k = Kite::new("client", "1.0.0").unwrap();
    k.config.kontrol_url.clear();
    let e = k.get_key().await.unwrap_err();
    assert!(e.message.contains("no Kontrol URL"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Keys from Kontrol

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_result_keys_are_adopted() {
    let new_pair = KeyPair::generate(1024).unwrap();
    let new_pem = new_pair.public_pem().to_string();
    let resigned = issue_kite_key(
        &new_pair,
        "kontrol",
        "alice",
        "http://127.0.0.1:1/kite",
        SystemTime::now(),
    )
    .unwrap();
    let (pem, key) = (new_pem.clone(), resigned.clone());
    let kontrol = FakeKontrol::start(Arc::new(move |m: &Value| match m["method"].as_str() {
        Some("register") => vec![response_to(
            m,
            json!({"url": "http://127.0.0.1:2/kite", "heartbeatInterval": 0, "publicKey": pem, "kiteKey": key}),
        )],
        Some("getKites") => vec![response_to(m, json!({"kites": []}))],
        _ => vec![],
    }))
    .await;
    let k = kite_for("math", "alice", "prod", &kontrol.url);
    let before = k.config.kite_key.clone();
    let r = k.register("http://127.0.0.1:2/kite").await.unwrap();
    assert_eq!(r.public_key.as_deref(), Some(new_pem.as_str()));
    // The kite now trusts the new Kontrol key for tokens...
    assert_eq!(k.authenticator().kontrol_key(), new_pem.trim());
    // ...and authenticates with the re-signed kite key, also after a configuration push
    // (new_client syncs `k.config`, which still holds the old key).
    let c = k.new_client("http://127.0.0.1:3/kite");
    assert_eq!(c.auth().unwrap().key, resigned);
    assert_eq!(k.authenticator().kontrol_key(), new_pem.trim());
    // The Kontrol connection uses it for later calls.
    k.get_kites(&KontrolQuery {
        username: "x".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let last = kontrol.requests("getKites").pop().unwrap();
    assert_eq!(
        last["arguments"][0]["authentication"]["key"],
        json!(resigned)
    );
    assert_ne!(before, resigned);
    k.kontrol().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_key_is_adopted() {
    let other = KeyPair::generate(1024).unwrap();
    let pem = other.public_pem().to_string();
    let answer = pem.clone();
    let kontrol = FakeKontrol::start(Arc::new(move |m: &Value| {
        if m["method"] == "getKey" {
            vec![response_to(m, json!(answer))]
        } else {
            vec![]
        }
    }))
    .await;
    let k = kite_for("math", "alice", "prod", &kontrol.url);
    assert_eq!(k.get_key().await.unwrap(), pem);
    assert_eq!(k.authenticator().kontrol_key(), pem.trim());
    assert_eq!(
        kontrol.requests("getKey")[0]["arguments"][0]["withArgs"],
        json!([])
    );
    k.kontrol().close().await;
}

// ---------------------------------------------------------------------------------------
// Token renewal

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_renewed_before_exp_and_after_token_is_expired() {
    let pair = &keys().kontrol;
    // The target: a real kite trusting our Kontrol key, authentication on.
    let mut target = Kite::new("math", "1.0.0").unwrap();
    math_methods(&target);
    target.config.username = "alice".into();
    target.config.environment = "prod".into();
    target.config.kontrol_user = "kontrol".into();
    target.config.kontrol_key = pair.public_pem().into();
    let target_id = target.id().to_string();
    let target_identity = target.identity();
    let served = serve(target).await;

    // A token that expires in 3 s, a good one, and one signed by another key (rejected by
    // the target as "token is expired").
    let now = SystemTime::now();
    let lifetime = kite::auth::DEFAULT_TOKEN_TTL + kite::auth::TOKEN_LEEWAY;
    let short = issue_token(
        pair,
        "/alice/prod/math",
        "bob",
        "kontrol",
        kite::auth::DEFAULT_TOKEN_TTL,
        now - lifetime + Duration::from_secs(3),
        true,
    )
    .unwrap();
    let good = issue_token(
        pair,
        "/alice/prod/math",
        "bob",
        "kontrol",
        kite::auth::DEFAULT_TOKEN_TTL,
        now,
        true,
    )
    .unwrap();
    let other = KeyPair::generate(1024).unwrap();
    let foreign = issue_token(
        &other,
        "/alice/prod/math",
        "bob",
        "kontrol",
        kite::auth::DEFAULT_TOKEN_TTL,
        now,
        true,
    )
    .unwrap();

    let first_token = Arc::new(Mutex::new(short.clone()));
    let identity = serde_json::to_value(&target_identity).unwrap();
    let url = served.url.clone();
    let (ft, good2) = (first_token.clone(), good.clone());
    let kontrol = FakeKontrol::start(Arc::new(move |m: &Value| match m["method"].as_str() {
        Some("getKites") => vec![response_to(
            m,
            json!({"kites": [{"kite": identity, "url": url, "token": ft.lock().unwrap().clone()}]}),
        )],
        Some("getToken") => vec![response_to(m, json!(good2))],
        _ => vec![],
    }))
    .await;
    let k = kite_for("client", "bob", "unknown", &kontrol.url);
    let renewed = Arc::new(Mutex::new(Vec::<String>::new()));

    // 1. Renewal before exp.
    let q = KontrolQuery {
        username: "alice".into(),
        environment: "prod".into(),
        name: "math".into(),
        ..Default::default()
    };
    let c = k.get_kite(&q).await.unwrap();
    let r = renewed.clone();
    c.on_token_renew(move |t| r.lock().unwrap().push(t.to_string()));
    c.dial().await.unwrap();
    assert_eq!(c.tell("square", &(3,)).await.unwrap().as_f64(), Some(9.0));
    assert!(
        eventually(Duration::from_secs(10), || c.auth().unwrap().key == good).await,
        "token renewed before exp"
    );
    assert_eq!(*renewed.lock().unwrap(), vec![good.clone()]);
    // getToken carried the target's full identity.
    let req = kontrol.requests("getToken").remove(0);
    let arg = &req["arguments"][0]["withArgs"][0];
    for key in [
        "username",
        "environment",
        "name",
        "version",
        "region",
        "hostname",
        "id",
    ] {
        assert_eq!(
            arg[key],
            serde_json::to_value(&target_identity).unwrap()[key],
            "{key}"
        );
    }
    assert_eq!(arg["id"], json!(target_id));
    c.close().await;

    // 2. Renewal after "token is expired".
    *first_token.lock().unwrap() = foreign;
    let c = k.get_kite(&q).await.unwrap();
    c.dial().await.unwrap();
    let e = c.tell("square", &(3,)).await.unwrap_err();
    assert!(e.is_token_expired(), "{e}");
    assert!(
        eventually(Duration::from_secs(5), || c.auth().unwrap().key == good).await,
        "token renewed after the failure"
    );
    assert_eq!(c.tell("square", &(4,)).await.unwrap().as_f64(), Some(16.0));
    c.close().await;
    k.kontrol().close().await;
    served.handle.shutdown();
}

// ---------------------------------------------------------------------------------------
// Watching

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_in_both_shapes_and_cancel() {
    let kite = json!({"username":"alice","environment":"e","name":"math","version":"1.0.0","region":"r","hostname":"h","id":"id-1"});
    let k2 = kite.clone();
    let kontrol = FakeKontrol::start(Arc::new(move |m: &Value| match m["method"].as_str() {
        Some("getKites") => {
            let watch = callback_id(
                m,
                &[json!(0), json!("withArgs"), json!(0), json!("watchCallback")],
            )
            .expect("a watchCallback function");
            vec![
                response_to(m, json!({"kites": [], "watcherID": "w-1"})),
                json!({"method": watch, "arguments": [{"error": null, "result": {"action": "REGISTER", "kite": k2, "url": "http://127.0.0.1:9/kite", "token": "tok"}}], "callbacks": {}}),
                json!({"method": watch, "arguments": [{"err": null, "result": {"action": "DEREGISTER", "kite": k2, "url": "http://127.0.0.1:9/kite"}}], "callbacks": {}}),
                json!({"method": watch, "arguments": [null, {"action": "REGISTER", "kite": k2, "url": "http://127.0.0.1:10/kite"}], "callbacks": {}}),
                json!({"method": watch, "arguments": [{"err": {"type": "genericError", "message": "events lost"}}], "callbacks": {}}),
            ]
        }
        Some("cancelWatcher") => vec![response_to(m, Value::Null)],
        _ => vec![],
    }))
    .await;
    let k = kite_for("client", "bob", "unknown", &kontrol.url);
    let q = KontrolQuery {
        username: "alice".into(),
        ..Default::default()
    };
    let mut w = k.watch_kites(&q).await.unwrap();
    assert_eq!(w.id().as_deref(), Some("w-1"));
    assert!(w.kites().is_empty());
    let req = kontrol.requests("getKites").remove(0);
    let arg = &req["arguments"][0]["withArgs"][0];
    assert_eq!(arg["query"]["username"], json!("alice"));
    assert_eq!(arg["query"]["id"], json!(""));
    assert_eq!(arg["watchCallback"], json!("[Function]"));

    use futures_util::StreamExt;
    let e = w.next().await.unwrap().unwrap();
    assert_eq!(e.action, WatchAction::Register);
    assert_eq!(e.kite.id, "id-1");
    assert_eq!(e.token.as_deref(), Some("tok"));
    let e = w.next().await.unwrap().unwrap();
    assert_eq!(e.action, WatchAction::Deregister);
    let e = w.next_event().await.unwrap().unwrap();
    assert_eq!(e.url, "http://127.0.0.1:10/kite");
    let e = w.next().await.unwrap().unwrap_err();
    assert_eq!(e.message, "events lost");
    drop(w);
    assert!(
        eventually(Duration::from_secs(5), || !kontrol
            .requests("cancelWatcher")
            .is_empty())
        .await
    );
    assert_eq!(
        kontrol.requests("cancelWatcher")[0]["arguments"][0]["withArgs"],
        json!(["w-1"])
    );
    k.kontrol().close().await;
}

// ---------------------------------------------------------------------------------------
// register_forever: retries, and re-registers after a reconnect

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_forever_retries_and_reregisters_after_reconnect() {
    let attempts = Arc::new(Mutex::new(0usize));
    let a = attempts.clone();
    let kontrol = FakeKontrol::start(Arc::new(move |m: &Value| {
        if m["method"] != "register" {
            return vec![];
        }
        let mut n = a.lock().unwrap();
        *n += 1;
        if *n == 1 {
            vec![error_to(m, "genericError", "try again")]
        } else {
            vec![response_to(
                m,
                json!({"url": "http://127.0.0.1:4/kite", "heartbeatInterval": 0}),
            )]
        }
    }))
    .await;
    let k = kite_for("math", "alice", "prod", &kontrol.url);
    let kc = k.kontrol();
    kc.set_settings(KontrolSettings {
        register_retry: Duration::from_millis(100),
        ..KontrolSettings::default()
    });
    let registrations = counter();
    let r2 = registrations.clone();
    kc.on_register(move |_| {
        r2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        k.register_forever("http://127.0.0.1:4/kite"),
    )
    .await
    .unwrap();
    assert_eq!(r.url, "http://127.0.0.1:4/kite");
    assert_eq!(*attempts.lock().unwrap(), 2);
    // Drop the connection from our side's transport: the client reconnects and registers
    // again with the same URL.
    let conn = kc.client().unwrap().connection().unwrap();
    conn.close().await;
    assert!(
        eventually(Duration::from_secs(10), || get(&registrations) >= 2).await,
        "registered again after the reconnect"
    );
    let regs = kontrol.requests("register");
    assert_eq!(
        regs.last().unwrap()["arguments"][0]["withArgs"],
        json!([{"url": "http://127.0.0.1:4/kite"}])
    );
    kc.close().await;
}

// ---------------------------------------------------------------------------------------
// HTTP registration (heartbeat_http.txt, heartbeat_http_registeragain.txt)

/// The body of the captured `POST /register` and Kontrol's answer.
fn http_capture() -> (Value, String) {
    let capture = load("heartbeat_http");
    let mut lines = capture.lines();
    let mut request = None;
    let mut answer = None;
    while let Some(line) = lines.next() {
        if line.contains("C->S HTTP-BODY") && request.is_none() {
            request = Some(serde_json::from_str(lines.next().unwrap()).unwrap());
        } else if line.contains("S->C HTTP-BODY") && answer.is_none() {
            answer = Some(lines.next().unwrap().to_string());
        }
    }
    (request.unwrap(), answer.unwrap())
}

#[derive(Default)]
struct HttpSeen {
    registers: Vec<Value>,
    heartbeats: Vec<String>,
}

struct FakeHttpKontrol {
    url: String,
    seen: Arc<Mutex<HttpSeen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHttpKontrol {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `register(n)` answers the n-th POST /register (from 1); `heartbeat(n)` the n-th GET.
async fn fake_http_kontrol(
    register: impl Fn(usize) -> String + Send + Sync + 'static,
    heartbeat: impl Fn(usize) -> String + Send + Sync + 'static,
) -> FakeHttpKontrol {
    use axum::routing::{any, post};
    let seen = Arc::new(Mutex::new(HttpSeen::default()));
    let (s1, s2) = (seen.clone(), seen.clone());
    let register = Arc::new(register);
    let heartbeat = Arc::new(heartbeat);
    let app = axum::Router::new()
        .route(
            "/register",
            post(move |body: String| {
                let seen = s1.clone();
                let register = register.clone();
                async move {
                    let n = {
                        let mut s = seen.lock().unwrap();
                        s.registers.push(serde_json::from_str(&body).unwrap());
                        s.registers.len()
                    };
                    register(n)
                }
            }),
        )
        .route(
            "/heartbeat",
            any(move |uri: axum::http::Uri| {
                let seen = s2.clone();
                let heartbeat = heartbeat.clone();
                async move {
                    let n = {
                        let mut s = seen.lock().unwrap();
                        s.heartbeats.push(uri.to_string());
                        s.heartbeats.len()
                    };
                    heartbeat(n)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    FakeHttpKontrol {
        url: format!("http://{addr}/kite"),
        seen,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_register_sends_like_go_then_heartbeats() {
    let (go_body, go_answer) = http_capture();
    // Same answer shape, but a 1 s interval instead of 10 s.
    let answer = go_answer.replace("\"heartbeatInterval\":10", "\"heartbeatInterval\":1");
    let kontrol = fake_http_kontrol(move |_| answer.clone(), |_| "pong".into()).await;
    let k = kite_for("math", "alice", "capturehttp", &kontrol.url);
    let r = k.register_http("http://127.0.0.1:3639/kite").await.unwrap();
    assert_eq!(r.url, "http://127.0.0.1:3639/kite");
    assert_eq!(r.heartbeat_interval, 1);
    let mut sent = kontrol.seen.lock().unwrap().registers[0].clone();
    let mut expected = go_body;
    for v in [&mut sent, &mut expected] {
        v["kite"]["id"] = json!("<id>");
        v["kite"]["hostname"] = json!("<hostname>");
        v["auth"]["key"] = json!("<kite key>");
    }
    assert_eq!(sent, expected);
    // The captured answer decodes as Go's does.
    let go: kite::RegisterResult = serde_json::from_str(&go_answer).unwrap();
    assert_eq!(go.heartbeat_interval, 10);

    assert!(
        eventually(Duration::from_secs(5), || kontrol
            .seen
            .lock()
            .unwrap()
            .heartbeats
            .len()
            >= 2)
        .await
    );
    let hb = kontrol.seen.lock().unwrap().heartbeats[0].clone();
    assert_eq!(hb, format!("/heartbeat?id={}", k.id()));
    k.kontrol().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_registeragain_registers_again_with_backoff() {
    let registeragain = {
        let capture = load("heartbeat_http_registeragain");
        capture
            .lines()
            .skip_while(|l| !l.contains("S->C HTTP-BODY"))
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(registeragain, "registeragain");
    // POST #2 fails (Kontrol down for a moment); #1 and #3 work. Heartbeat #1 answers
    // registeragain, later ones pong.
    let kontrol = fake_http_kontrol(
        |n| {
            if n == 2 {
                r#"{"err":"internal error - register"}"#.into()
            } else {
                r#"{"url":"http://127.0.0.1:5/kite","heartbeatInterval":1}"#.into()
            }
        },
        move |n| {
            if n == 1 {
                registeragain.clone()
            } else {
                "pong".into()
            }
        },
    )
    .await;
    let k = kite_for("math", "alice", "prod", &kontrol.url);
    k.kontrol().set_settings(KontrolSettings {
        http_backoff_initial: Duration::from_millis(200),
        http_backoff_max: Duration::from_millis(500),
        ..KontrolSettings::default()
    });
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        k.register_http_forever("http://127.0.0.1:5/kite"),
    )
    .await
    .unwrap();
    assert_eq!(r.heartbeat_interval, 1);
    assert!(
        eventually(Duration::from_secs(10), || kontrol
            .seen
            .lock()
            .unwrap()
            .registers
            .len()
            >= 3)
        .await,
        "registered again after registeragain, retrying the failure"
    );
    assert!(
        eventually(Duration::from_secs(5), || kontrol
            .seen
            .lock()
            .unwrap()
            .heartbeats
            .len()
            >= 2)
        .await,
        "heartbeats resumed"
    );
    k.kontrol().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_register_errors_are_reported() {
    let kontrol = fake_http_kontrol(
        |n| match n {
            1 => r#"{"err":"unexpected authentication type: token"}"#.into(),
            _ => r#"{"url":"http://127.0.0.1:5/kite","heartbeatInterval":0}"#.into(),
        },
        |_| "pong".into(),
    )
    .await;
    let k = kite_for("math", "alice", "prod", &kontrol.url);
    let e = k
        .register_http("http://127.0.0.1:5/kite")
        .await
        .unwrap_err();
    assert_eq!(e.message, "unexpected authentication type: token");
    let e = k
        .register_http("http://127.0.0.1:5/kite")
        .await
        .unwrap_err();
    assert_eq!(e.message, "heartbeat interval cannot be zero");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_clients_leave_no_renewer_behind() {
    let token = issue_token(
        &keys().kontrol,
        "/alice/prod/math",
        "bob",
        "kontrol",
        kite::auth::DEFAULT_TOKEN_TTL,
        SystemTime::now(),
        true,
    )
    .unwrap();
    let kontrol = FakeKontrol::start(Arc::new(move |m: &Value| {
        if m["method"] == "getKites" {
            vec![response_to(
                m,
                json!({"kites": [{"kite": {"username":"alice","environment":"prod","name":"math","version":"1.0.0","region":"r","hostname":"h","id":"i"}, "url": "http://127.0.0.1:1/kite", "token": token}]}),
            )]
        } else {
            vec![]
        }
    }))
    .await;
    let k = kite_for("client", "bob", "unknown", &kontrol.url);
    let q = KontrolQuery {
        username: "alice".into(),
        ..Default::default()
    };
    drop(k.get_kites(&q).await.unwrap());
    let metrics = tokio::runtime::Handle::current().metrics();
    assert!(eventually(Duration::from_secs(5), || metrics.num_alive_tasks() < 100).await);
    let baseline = metrics.num_alive_tasks();
    for _ in 0..50 {
        drop(k.get_kites(&q).await.unwrap());
    }
    assert!(
        eventually(Duration::from_secs(5), || metrics.num_alive_tasks()
            <= baseline + 5)
        .await,
        "{} tasks alive, {baseline} before",
        metrics.num_alive_tasks()
    );
    // A kept client keeps its renewer.
    let kept = k.get_kites(&q).await.unwrap();
    assert_eq!(kept.len(), 1);
    k.kontrol().close().await;
}
