//! The extra envelope fields (`deadline`, `traceparent`) do not disturb Go or kite.js
//! peers: Go-captured requests with the fields added get the same replies from our
//! governed server; our governed client's request equals Go's but for the fields and it
//! accepts Go's captured reply; kite.js in Node calls a governed server, and a kite.js
//! server answers a governed client that sends the fields.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use kite::{Kite, KiteError, RemoteFunction, Request};
use kite_governance::{ClientConfig, GovernedClient, ServerConfig, ServerGovernance, TraceContext};
use kite_testkit::peers::node_module;
use kite_testkit::process::{node, run_ok, TestProcess};
use kite_testkit::vectors::{capture as load, sockjs_messages as messages, ws_frames as frames};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Replaces request ids and the caller's random identity fields.
fn normalize(mut v: Value) -> Value {
    if let Some(args) = v.get_mut("arguments").and_then(Value::as_array_mut) {
        for a in args {
            if let Some(id) = a.pointer_mut("/error/id") {
                let s = id.as_str().unwrap_or("");
                if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    *id = Value::String("<request id>".into());
                }
            }
            if let Some(k) = a.get_mut("kite") {
                k["id"] = Value::String("<kite id>".into());
                k["hostname"] = Value::String("<hostname>".into());
            }
        }
    }
    v
}

/// A client frame with `deadline` and `traceparent` added to every request's options.
fn with_fields(frame: &str) -> String {
    let texts: Vec<String> = serde_json::from_str(frame).unwrap();
    let texts: Vec<String> = texts
        .iter()
        .map(|t| {
            let mut m: Value = serde_json::from_str(t).unwrap();
            if let Some(Value::Object(o)) = m.pointer_mut("/arguments/0") {
                if o.contains_key("withArgs") {
                    o.insert("deadline".into(), json!(5000));
                    o.insert("traceparent".into(), json!(TRACEPARENT));
                }
            }
            m.to_string()
        })
        .collect();
    serde_json::to_string(&texts).unwrap()
}

async fn replay(url: &str, capture: &str, add_fields: bool) {
    let ws_url = url.replace("http://", "ws://") + "/000/replaysession/websocket";
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let mut expected = Vec::new();
    for (client, payload) in frames(capture) {
        if client {
            let p = if add_fields {
                with_fields(&payload)
            } else {
                payload
            };
            ws.send(WsMessage::Text(p.into())).await.unwrap();
        } else if payload.starts_with('a') {
            expected.extend(messages(&payload).into_iter().map(normalize));
        }
    }
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("reply in time")
            .expect("open")
            .unwrap();
        if let WsMessage::Text(t) = msg {
            if t.starts_with('a') {
                got.extend(messages(&t).into_iter().map(normalize));
            }
        }
    }
    assert_eq!(got, expected);
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Countdown {
    from: u32,
    on_tick: RemoteFunction,
}

fn math_methods(k: &Kite, seen: Arc<Mutex<Vec<Value>>>) {
    k.handle_func("square", move |r: Request| {
        seen.lock().unwrap().push(json!({
            "deadline": r.envelope_field("deadline"),
            "traceparent": r.envelope_field("traceparent"),
        }));
        async move {
            let a: f64 = r.args().one()?;
            Ok(a * a)
        }
    });
    k.handle_func("echo", |r: Request| async move {
        Ok(Value::Array(r.args().raw().to_vec()))
    });
    k.handle_func("countdown", |r: Request| async move {
        let c: Countdown = r.args().one()?;
        for n in (1..=c.from).rev() {
            c.on_tick.call(&(n,)).await?;
        }
        Ok("done")
    });
    k.handle_func("fail", |r: Request| async move {
        let m: String = r.args().one()?;
        Err::<(), _>(KiteError::generic(m))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_captures_replayed_with_extra_fields_against_a_governed_server() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let math = start("math", move |k| {
        ServerGovernance::install(k, ServerConfig::default());
        math_methods(k, s);
    })
    .await;
    for name in [
        "kite_ping",
        "square_noauth",
        "echo_args",
        "countdown_callbacks",
        "fail_error",
        "missing_method",
    ] {
        let capture = load(name);
        replay(&math.url, &capture, false).await;
        replay(&math.url, &capture, true).await;
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            json!({"deadline": null, "traceparent": null}),
            json!({"deadline": 5000, "traceparent": TRACEPARENT}),
        ]
    );
}

/// A fake Go server: records the client's first message, answers the captured frames.
async fn fake_go_server(capture: String, seen: Arc<Mutex<Vec<Value>>>) -> String {
    let replies: Vec<String> = frames(&capture)
        .into_iter()
        .filter(|(c, p)| !*c && p.starts_with('a'))
        .flat_map(|(_, p)| serde_json::from_str::<Vec<String>>(&p[1..]).unwrap())
        .collect();
    let app = kite_sockjs::server::router(
        kite_sockjs::server::ServerConfig::default(),
        move |session| {
            let replies = replies.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let (tx, mut rx) = session.split();
                if let Some(first) = rx.recv().await {
                    seen.lock()
                        .unwrap()
                        .push(serde_json::from_str(&first).unwrap());
                    for r in replies {
                        tx.send(r).await.unwrap();
                    }
                }
                while rx.recv().await.is_some() {}
            });
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/kite")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governed_client_request_is_gos_plus_the_fields() {
    let capture = load("square_noauth");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = fake_go_server(capture.clone(), seen.clone()).await;
    let k = Kite::new("gokite-client", "1.0.0").unwrap();
    let c = k.new_client(&url);
    c.dial().await.unwrap();
    let client = GovernedClient::single(&k, c, &ClientConfig::default());
    assert_eq!(client.call("square", &(7,)).await.unwrap(), json!(49));
    let mut sent = seen.lock().unwrap()[0].clone();
    let options = sent["arguments"][0].as_object_mut().unwrap();
    let deadline = options.remove("deadline").unwrap().as_u64().unwrap();
    assert!(deadline > 0 && deadline <= 30_000, "{deadline}");
    let tp = options.remove("traceparent").unwrap();
    assert!(TraceContext::parse(tp.as_str().unwrap()).is_some(), "{tp}");
    let (_, payload) = frames(&capture).into_iter().find(|(c, _)| *c).unwrap();
    let expected = normalize(messages(&payload).remove(0));
    assert_eq!(normalize(sent), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kitejs_in_node_calls_a_governed_server() {
    let math = start("math", move |k| {
        ServerGovernance::install(k, ServerConfig::default());
        math_methods(k, Arc::default());
    })
    .await;
    for transport in ["sockjs-websocket", "xhr-polling", "raw-websocket"] {
        let url = math.url.clone();
        let out = tokio::task::spawn_blocking(move || {
            run_ok(node("kite/node_client.js").arg(&url).arg(transport))
        })
        .await
        .unwrap();
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            vec![
                json!({"square": 16}),
                json!({"countdown": "done", "ticks": [3, 2, 1]}),
                json!({"ping": "pong"}),
                json!({"error": {"type": "methodNotFound", "message": "Method not found: nosuchmethod"}}),
            ],
            "{transport}"
        );
    }
    let text = scrape(&math.url).await;
    assert!(
        metric(
            &text,
            "kite_server_calls_total",
            &[("from", "node-client"), ("method", "square")]
        ) >= 3.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governed_client_calls_a_kitejs_server() {
    let mut kitejs = TestProcess::spawn(
        "kitejs_server.js",
        Command::new("node")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node/kitejs_server.js"))
            .arg(node_module("kite.js"))
            .stderr(Stdio::null()),
    );
    let line = kitejs
        .line(Duration::from_secs(20), |l| l.starts_with("ready "))
        .await;
    let port = line.strip_prefix("ready ").unwrap();
    let k = Kite::new("rust-caller", "1.0.0").unwrap();
    let c = k.new_client(&format!("http://127.0.0.1:{port}/kite"));
    c.dial().await.unwrap();
    let client = GovernedClient::single(&k, c, &ClientConfig::default());
    assert_eq!(client.call("square", &(5,)).await.unwrap(), json!(25));
    assert_eq!(
        client.call("echo", &json!({"a": [1, 2]})).await.unwrap(),
        json!({"a": [1, 2]})
    );
    // With an explicit deadline and trace too.
    let call = client
        .new_call("square", json!([6]))
        .with_timeout(Duration::from_secs(5));
    assert_eq!(client.send(call).await.unwrap(), json!(36));
}
