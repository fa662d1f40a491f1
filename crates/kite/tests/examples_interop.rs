//! Runs the example programs (built by `cargo test`) and drives the `math` example with
//! real peers: our own example clients and kite.js 1.0.13 in Node over SockJS WebSocket,
//! XHR polling and raw WebSocket.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::process::Command;
use std::time::Duration;

use kite_testkit::paths::{example, interop_dir};
use kite_testkit::process::{run_ok as run, TestProcess};

/// Starts an example kite on an ephemeral port; returns it and its URL (from its ready
/// line).
fn start_kite(name: &str) -> (TestProcess, String) {
    let mut kite = TestProcess::spawn(
        name,
        Command::new(example(name))
            .env("KITE_PORT", "0")
            .stderr(std::process::Stdio::null()),
    );
    let prefix = format!("{name} kite ready on ");
    let line = kite.wait_line(Duration::from_secs(20), |l| l.starts_with(&prefix));
    let url = line[prefix.len()..].to_string();
    (kite, url)
}

#[test]
fn example_clients_call_math() {
    let (_math, url) = start_kite("math");
    let out = run(Command::new(example("square_client")).arg(&url));
    assert_eq!(out.trim(), "16");
    let out = run(Command::new(example("callback_client")).arg(&url));
    assert_eq!(out, "tick 3\ntick 2\ntick 1\ndone\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_answers_ping() {
    let (_first, url) = start_kite("first");
    let k = kite::Kite::new("pinger", "1.0.0").unwrap();
    let c = k.new_client(&url);
    c.dial().await.unwrap();
    assert_eq!(
        c.tell("kite.ping", &()).await.unwrap().as_str(),
        Some("pong")
    );
}

#[test]
fn kitejs_in_node_calls_math() {
    let (_math, url) = start_kite("math");
    let script = interop_dir().join("kite/node_client.js");
    for transport in ["sockjs-websocket", "xhr-polling", "raw-websocket"] {
        let out = run(Command::new("node").arg(&script).arg(&url).arg(transport));
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            vec![
                serde_json::json!({"square": 16}),
                serde_json::json!({"countdown": "done", "ticks": [3, 2, 1]}),
                serde_json::json!({"ping": "pong"}),
                serde_json::json!({"error": {"type": "methodNotFound", "message": "Method not found: nosuchmethod"}}),
            ],
            "{transport}"
        );
    }
}

#[test]
fn math_exits_cleanly_on_sigterm() {
    let (mut math, url) = start_kite("math");
    let out = run(Command::new(example("square_client")).arg(&url));
    assert_eq!(out.trim(), "16");
    math.signal("TERM");
    let status = math.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}
