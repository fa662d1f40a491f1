//! Runs the example programs (built by `cargo test`) and drives the `math` example with
//! real peers: our own example clients and kite.js 1.0.13 in Node over SockJS WebSocket,
//! XHR polling and raw WebSocket.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples").join(name)
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Starts an example kite on an ephemeral port; returns it and its URL (from its ready
/// line).
fn start_kite(name: &str) -> (Proc, String) {
    let mut child = Command::new(example(name))
        .env("KITE_PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start example {name}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("ready line in time");
    let prefix = format!("{name} kite ready on ");
    let url = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_string();
    (proc, url)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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
    let script = repo_root().join("interop/kite/node_client.js");
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
    let pid = math.0.id().to_string();
    run(Command::new("kill").arg("-TERM").arg(&pid));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = math.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "math did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
