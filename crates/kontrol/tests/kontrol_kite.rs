//! The `kontrol` kite end to end over real sockets: Rust kites register (kite.heartbeat
//! liveness), discover each other with tokens, watch, and get Go's errors; plus the wire
//! order of register_kontrol.txt on a hand-driven SockJS WebSocket.
#![allow(clippy::unwrap_used)]

#[allow(unused_macros, unused_imports)]
mod kontrol_common;
#[allow(unused_macros, unused_imports)]
mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kite::{Auth, Function};
use kontrol::kite_service::KontrolKite;
use kontrol::{Kontrol, KontrolConfig};
use kontrol_common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// `getKites` arguments with a watch function (a kite `Function` serializes only inside a
/// call's arguments, so no `json!` here).
#[derive(serde::Serialize)]
struct WatchArgs {
    query: Value,
    #[serde(rename = "watchHandler", skip_serializing_if = "Option::is_none")]
    watch_handler: Option<Function>,
    #[serde(rename = "watchCallback", skip_serializing_if = "Option::is_none")]
    watch_callback: Option<Function>,
}

struct Setup {
    server: Arc<KontrolKite>,
    url: String,
    _env: support::TestEnv,
}

impl Setup {
    fn kontrol(&self) -> &Kontrol {
        self.server.kontrol()
    }
}

/// A Kontrol kite on 127.0.0.1:<ephemeral> over embedded storage, 1 s heartbeats.
async fn kontrol_kite(config: KontrolConfig) -> Setup {
    let env = support::embedded_env().await;
    let storage = Arc::new(env.connect().await);
    let mut kite = KontrolKite::new_kite("0.0.1").unwrap();
    kite.config.ip = "127.0.0.1".into();
    kite.config.port = 0;
    let server = Arc::new(KontrolKite::start(kite, config, storage).await.unwrap());
    let url = server.url().unwrap();
    let s = Arc::clone(&server);
    tokio::spawn(async move { s.serve().await });
    Setup {
        server,
        url,
        _env: env,
    }
}

fn config() -> KontrolConfig {
    let mut c = test_config();
    c.kontrol_url = String::new(); // the kite's own URL
    c
}

/// A Rust kite owned by `user`, trusting this Kontrol, with a kite key from it.
fn user_kite(setup: &Setup, name: &str, user: &str) -> kite::Kite {
    let mut k = kite::Kite::new(name, "1.0.0").unwrap();
    k.config.username = user.into();
    k.config.ip = "127.0.0.1".into();
    k.config.kite_key = key_for(setup.kontrol(), user);
    k.config.kontrol_user = "kontrol".into();
    k.config.kontrol_key = setup.kontrol().public_key();
    k.config.kontrol_url.clone_from(&setup.url);
    k
}

/// A token for calling Kontrol itself, from its own getKites entry (asked over `client`,
/// which authenticates with a kite key).
async fn kontrol_token(client: &kite::Client) -> String {
    let res = client
        .tell(
            "getKites",
            &(json!({"query": {"username": "kontrol", "name": "kontrol"}}),),
        )
        .await
        .unwrap();
    res.value()["kites"][0]["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Two connections of `kite` to Kontrol: one with its kite key, and one that sends instead
/// the token Kontrol issues for itself (fetched over the first).
async fn dial_with_kontrol_token(kite: &kite::Kite, url: &str) -> (kite::Client, kite::Client) {
    let with_key = kite.new_client(url);
    with_key.dial().await.unwrap();
    let token = kontrol_token(&with_key).await;
    let with_token = kite.new_client(url);
    with_token.set_auth(Some(Auth::token(token)));
    with_token.dial().await.unwrap();
    (with_key, with_token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_discover_call_and_expire() {
    let setup = kontrol_kite(config()).await;
    let ttl = setup.kontrol().config().record_ttl();

    // alice's math kite serves `square` and registers to Kontrol.
    let math = user_kite(&setup, "math", "alice");
    math.handle_func("square", |r: kite::Request| async move {
        let x: f64 = r.args().one()?;
        Ok(x * x)
    });
    math.listen().await.unwrap();
    let math_url = math.url().unwrap();
    let math = Arc::new(math);
    let m = Arc::clone(&math);
    tokio::spawn(async move { m.serve().await });
    let to_kontrol = math.new_client(&setup.url);
    to_kontrol.dial().await.unwrap();
    let res = to_kontrol
        .tell("register", &(json!({ "url": math_url }),))
        .await
        .unwrap();
    assert_eq!(
        res.value(),
        &json!({"url": math_url, "heartbeatInterval": 0})
    );

    // bob finds it with a token and calls it with that token.
    let bob = user_kite(&setup, "client", "bob");
    let to_kontrol_bob = bob.new_client(&setup.url);
    to_kontrol_bob.dial().await.unwrap();
    let res = to_kontrol_bob
        .tell(
            "getKites",
            &(
                json!({"query": {"username": "alice", "environment": "", "name": "math",
                               "version": "", "region": "", "hostname": "", "id": ""},
                     "watchCallback": null, "who": null}),
            ),
        )
        .await
        .unwrap();
    let kites = res.value()["kites"].as_array().unwrap().clone();
    assert_eq!(kites.len(), 1);
    assert_eq!(kites[0]["url"], json!(math_url));
    assert_eq!(kites[0]["kite"]["id"], json!(math.id()));
    let token = kites[0]["token"].as_str().unwrap().to_owned();
    let to_math = bob.new_client(&math_url);
    to_math.set_auth(Some(Auth::token(token)));
    to_math.dial().await.unwrap();
    let sq = to_math.tell("square", &(7,)).await.unwrap();
    assert_eq!(sq.as_f64(), Some(49.0));

    // getToken over the wire, id-only (Go's renewer): the same cached token.
    let t = to_kontrol_bob
        .tell("getToken", &(json!({"id": math.id()}),))
        .await
        .unwrap();
    let claims = kite::auth::Claims::decode_unverified(t.as_str().unwrap()).unwrap();
    assert_eq!(claims.aud.as_deref(), Some("/alice/unknown/math"));

    // The math kite answers Kontrol's kite.heartbeat: it outlives its TTL.
    let q = kite_protocol::KontrolQuery {
        id: math.id().to_owned(),
        ..Default::default()
    };
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    assert_eq!(setup.kontrol().get_kites(&q, "bob").await.unwrap().len(), 1);

    // Its connection to Kontrol goes away: gone within interval + grace.
    to_kontrol.close().await;
    wait_for(
        "the math kite to expire",
        ttl + Duration::from_secs(3),
        || async {
            setup
                .kontrol()
                .get_kites(&q, "bob")
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    setup.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_over_the_wire() {
    let setup = kontrol_kite(config()).await;
    let bob = user_kite(&setup, "client", "bob");
    let c = bob.new_client(&setup.url);
    c.dial().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Value>(16);
    let handler = Function::new(move |args: kite::Args| {
        let _ = tx.try_send(args.raw().first().cloned().unwrap_or(Value::Null));
    });
    let res = c
        .tell(
            "getKites",
            &(WatchArgs {
                query: json!({"username": "alice"}),
                watch_handler: Some(handler),
                watch_callback: None,
            },),
        )
        .await
        .unwrap();
    assert_eq!(res.value()["kites"], json!([]));
    let watcher_id = res.value()["watcherID"].as_str().unwrap().to_owned();

    // A kite registers through the core: the event reaches bob's handler.
    let k = kite("alice", "math");
    let key = key_for(setup.kontrol(), "alice");
    setup
        .kontrol()
        .register(
            &k,
            Some(&kite_key_auth(&key)),
            Some(&json!("http://127.0.0.1:9/kite")),
        )
        .await
        .unwrap();
    let ev = next_event(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(ev["result"]["action"], "REGISTER");
    assert_eq!(ev["result"]["kite"]["id"], json!(k.id));
    assert!(ev["result"]["token"].is_string());
    assert!(ev.get("err").is_some_and(Value::is_null));

    // cancelWatcher: a stranger cannot, the owner can.
    let other = bob.new_client(&setup.url);
    other.dial().await.unwrap();
    let err = other
        .tell("cancelWatcher", &(watcher_id.as_str(),))
        .await
        .unwrap_err();
    assert_eq!(err.message, format!("watcher not found: {watcher_id}"));
    c.tell("cancelWatcher", &(watcher_id.as_str(),))
        .await
        .unwrap();
    assert_eq!(setup.kontrol().watcher_count(), 0);

    // Disconnecting stops the watchers of a connection.
    let handler = Function::new(|_args: kite::Args| {});
    other
        .tell(
            "getKites",
            &(WatchArgs {
                query: json!({"username": "alice"}),
                watch_handler: None,
                watch_callback: Some(handler),
            },),
        )
        .await
        .unwrap();
    assert_eq!(setup.kontrol().watcher_count(), 1);
    other.close().await;
    wait_for(
        "watchers of a closed connection to stop",
        Duration::from_secs(10),
        || async { (setup.kontrol().watcher_count() == 0).then_some(()) },
    )
    .await;
    setup.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_over_the_wire() {
    let setup = kontrol_kite(config()).await;
    // No credentials at all.
    let anon = kite::Kite::new("anon", "1.0.0").unwrap();
    let c = anon.new_client(&setup.url);
    c.dial().await.unwrap();
    let e = c
        .tell("getKites", &(json!({"query": {"username": "a"}}),))
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind.as_str(), e.message.as_str()),
        (
            "authenticationError",
            "No authentication information is provided"
        )
    );
    // registerMachine needs none; disabled like stock Go (kitectl's string form, Q15).
    let e = c.tell("registerMachine", &("bob",)).await.unwrap_err();
    assert_eq!(
        (e.kind.as_str(), e.message.as_str()),
        ("genericError", "no valid authentication key found")
    );
    assert_eq!(e.id.len(), 16);

    // A kite key of another Kontrol.
    let foreign = kite::auth::KeyPair::generate(1024).unwrap();
    let stranger = kite::Kite::new("stranger", "1.0.0").unwrap();
    let s = stranger.new_client(&setup.url);
    s.set_auth(Some(Auth::kite_key(kite_key(&foreign, "alice"))));
    s.dial().await.unwrap();
    let e = s
        .tell("register", &("http://127.0.0.1:1/kite",))
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind.as_str(), e.message.as_str()),
        ("authenticationError", "kiteKey: kontrol key is not trusted")
    );

    // A token (valid for Kontrol itself) is not accepted by register.
    let bob = user_kite(&setup, "client", "bob");
    let (b, t) = dial_with_kontrol_token(&bob, &setup.url).await;
    let e = t
        .tell("register", &("http://127.0.0.1:1/kite",))
        .await
        .unwrap_err();
    assert_eq!(e.message, "Unexpected authentication type: token");
    // ... but works for getKites (token auth) and getKey refuses it.
    t.tell("getKites", &(json!({"query": {"username": "alice"}}),))
        .await
        .unwrap();
    let e = t.tell("getKey", &()).await.unwrap_err();
    assert_eq!(e.message, "Unexpected authentication type: token");
    // getKey with a kite key: Kontrol's public key.
    let key = b.tell("getKey", &()).await.unwrap();
    assert_eq!(key.as_str(), Some(setup.kontrol().public_key().as_str()));
    // getToken errors.
    let e = b
        .tell("getToken", &(json!({"username": "nobody"}),))
        .await
        .unwrap_err();
    assert_eq!(e.message, "no kites found");
    let e = b.tell("getToken", &("x",)).await.unwrap_err();
    assert!(e.message.starts_with("invalid query: "), "{e}");
    // register: another user's name (bob's key, kite claims alice).
    let mut as_alice = user_kite(&setup, "math", "alice");
    as_alice.config.kite_key = key_for(setup.kontrol(), "bob");
    let a = as_alice.new_client(&setup.url);
    a.dial().await.unwrap();
    let e = a
        .tell("register", &("http://127.0.0.1:1/kite",))
        .await
        .unwrap_err();
    assert_eq!(
        e.message,
        "kite username \"alice\" does not match the kite key's username \"bob\""
    );
    setup.server.shutdown().await;
}

/// register_kontrol.txt: on a SockJS WebSocket, Kontrol's `kite.heartbeat [interval, fn]`
/// request comes before the register response; the kite's pings keep it registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_wire_order_like_go() {
    let setup = kontrol_kite(config()).await;
    let key = key_for(setup.kontrol(), "alice");
    let ws_url = format!(
        "{}/810/4e8f00430e38b6e169d1/websocket",
        setup.url.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let request = json!({
        "method": "register",
        "arguments": [{
            "kite": {"name": "math", "username": "alice", "id": id, "environment": "capture",
                     "region": "unknown", "version": "1.0.0", "hostname": "vm"},
            "authentication": {"type": "kiteKey", "key": key},
            "responseCallback": "[Function]",
            "withArgs": [{"url": "http://127.0.0.1:3638/kite"}]
        }],
        "callbacks": {"0": [0, "responseCallback"]}
    });
    ws.send(WsMessage::text(json!([request.to_string()]).to_string()))
        .await
        .unwrap();

    // Collect dnode messages until the register response arrived.
    let mut messages: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !messages.iter().any(|m| m["method"] == json!(0)) {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("frames in time")
            .unwrap()
            .unwrap();
        let WsMessage::Text(text) = frame else {
            continue;
        };
        if let Some(array) = text.as_str().strip_prefix('a') {
            for m in serde_json::from_str::<Vec<String>>(array).unwrap() {
                messages.push(serde_json::from_str(&m).unwrap());
            }
        }
    }
    assert_eq!(messages.len(), 2, "{messages:?}");
    let hb = &messages[0];
    assert_eq!(hb["method"], "kite.heartbeat");
    let opts = &hb["arguments"][0];
    assert_eq!(opts["authentication"], Value::Null);
    assert_eq!(opts["kite"]["name"], "kontrol");
    assert_eq!(opts["withArgs"][0], json!(1));
    assert_eq!(opts["withArgs"][1], "[Function]");
    let callbacks = hb["callbacks"].as_object().unwrap();
    let ping_id = callbacks
        .iter()
        .find(|(_, path)| **path == json!([0, "withArgs", 1]))
        .map(|(id, _)| id.parse::<u64>().unwrap())
        .expect("a callback at withArgs[1]");
    let response_id = callbacks
        .iter()
        .find(|(_, path)| **path == json!([0, "responseCallback"]))
        .map(|(id, _)| id.parse::<u64>().unwrap())
        .unwrap();
    assert_eq!(
        messages[1],
        json!({"method": 0, "arguments": [{"error": null,
              "result": {"url": "http://127.0.0.1:3638/kite", "heartbeatInterval": 0}}],
              "callbacks": {}})
    );

    // Answer like Go: the first ping, then the response to kite.heartbeat; then ping every
    // interval, outliving the TTL.
    let send = |m: Value| WsMessage::text(json!([m.to_string()]).to_string());
    ws.send(send(
        json!({"method": ping_id, "arguments": [], "callbacks": {}}),
    ))
    .await
    .unwrap();
    ws.send(send(json!({"method": response_id,
                        "arguments": [{"error": null, "result": null}], "callbacks": {}})))
        .await
        .unwrap();
    let q = kite_protocol::KontrolQuery {
        id: id.clone(),
        ..Default::default()
    };
    let ttl = setup.kontrol().config().record_ttl();
    let start = std::time::Instant::now();
    while start.elapsed() < ttl * 2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ws.send(send(
            json!({"method": ping_id, "arguments": [], "callbacks": {}}),
        ))
        .await
        .unwrap();
        assert_eq!(setup.kontrol().get_kites(&q, "bob").await.unwrap().len(), 1);
    }
    let found = setup.kontrol().get_kites(&q, "bob").await.unwrap();
    assert_eq!(found[0].kite.environment, "capture");
    assert_eq!(found[0].url, "http://127.0.0.1:3638/kite");
    setup.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_authentication_ends_with_a_key_rotation() {
    let setup = kontrol_kite(config()).await;
    let bob = user_kite(&setup, "client", "bob");
    // The token works on its connection, call after call (reused after the first).
    let (b, t) = dial_with_kontrol_token(&bob, &setup.url).await;
    let query = (json!({"query": {"username": "alice"}}),);
    for _ in 0..3 {
        t.tell("getKites", &query).await.unwrap();
    }
    // A rotation: tokens of the old pair are no longer accepted, on this very connection
    // too (its reused success ends with the authenticator's epoch).
    setup.kontrol().rotate_keys().await.unwrap();
    let e = t.tell("getKites", &query).await.unwrap_err();
    assert_eq!(e.kind, "authenticationError", "{e}");
    // Kite keys of the old pair are still trusted (PROTOCOL.md 8.4).
    b.tell("getKites", &query).await.unwrap();
}
