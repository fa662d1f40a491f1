//! Helpers shared by the SockJS client tests: a Node.js child process that prints JSON
//! lines (the first one carrying its port), and receive-with-deadline helpers.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use kite_sockjs::SessionReceiver;
use kite_testkit::process::{node, TestProcess};
use serde_json::Value;

/// Generous upper bound for anything that should happen "now".
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A Node.js script run as a child process; killed when dropped. Its stdout is read as
/// JSON lines (other lines are skipped); it exits when its stdin closes.
pub struct NodeProcess {
    process: TestProcess,
    /// The `port` of the first line, when there was one.
    pub port: u16,
}

impl NodeProcess {
    /// Starts `node interop/<script> <args>` and waits for its first JSON line with a
    /// `port` field (the readiness signal).
    pub async fn start(script: &str, args: &[&str], env: &[(&str, &str)]) -> NodeProcess {
        let mut command = node(script);
        command.args(args);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut process = TestProcess::spawn(script, &mut command);
        let first = process
            .json(Duration::from_secs(30), |v| v.get("port").is_some())
            .await;
        let port = first["port"].as_u64().unwrap_or(0) as u16;
        NodeProcess { process, port }
    }

    /// Waits for a JSON line matching `pred` (skipping the others); panics after
    /// [`DEADLINE`].
    pub async fn wait_line(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        self.process.json(DEADLINE, pred).await
    }

    /// Every JSON line already printed and not consumed, without waiting.
    pub fn drain_lines(&mut self) -> Vec<Value> {
        self.process
            .drain_lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// The next message, panicking if none arrives within [`DEADLINE`].
pub async fn recv(rx: &mut SessionReceiver) -> Option<String> {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no message (nor end of session) within {DEADLINE:?}"))
}
