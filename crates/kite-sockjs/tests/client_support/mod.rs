//! Helpers shared by the SockJS client tests: a Node.js child process that prints JSON
//! lines (the first one carrying its port), and receive-with-deadline helpers.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use kite_sockjs::SessionReceiver;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// Generous upper bound for anything that should happen "now".
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The repository's `interop/` directory.
pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop")
}

/// A Node.js script run as a child process; killed when dropped. Its stdout is read as
/// JSON lines.
pub struct NodeProcess {
    child: Child,
    _stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<serde_json::Value>,
    /// The `port` of the first line, when there was one.
    pub port: u16,
}

impl NodeProcess {
    /// Starts `node interop/<script> <args>` and waits for its first JSON line with a
    /// `port` field (the readiness signal).
    pub async fn start(script: &str, args: &[&str], env: &[(&str, &str)]) -> NodeProcess {
        let mut command = Command::new("node");
        command
            .arg(interop_dir().join(script))
            .args(args)
            .current_dir(interop_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("can't start `node {script}` (is Node.js installed?): {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("[node stdout] {line}"),
                }
            }
        });
        let mut process = NodeProcess {
            child,
            _stdin: stdin,
            lines,
            port: 0,
        };
        let first = process
            .next_line(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("`node {script}` printed no JSON line within 30 s"));
        process.port = first["port"].as_u64().unwrap_or(0) as u16;
        process
    }

    /// The next JSON line, or `None` after `within` or at end of output.
    pub async fn next_line(&mut self, within: Duration) -> Option<serde_json::Value> {
        tokio::time::timeout(within, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for a line matching `pred` (skipping the others); panics after [`DEADLINE`].
    pub async fn wait_line(
        &mut self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_line(left).await {
                Some(v) if pred(&v) => return v,
                Some(_) => continue,
                None => panic!("no {what} event from the Node process within {DEADLINE:?}"),
            }
        }
    }

    /// Every line already printed, without waiting.
    pub fn drain_lines(&mut self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(v) = self.lines.try_recv() {
            out.push(v);
        }
        out
    }

    /// Waits for the process to exit (after [`DEADLINE`] it is killed and this panics).
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        match tokio::time::timeout(DEADLINE, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = self.child.start_kill();
                panic!("the Node process did not exit within {DEADLINE:?}")
            }
        }
    }
}

/// The next message, panicking if none arrives within [`DEADLINE`].
pub async fn recv(rx: &mut SessionReceiver) -> Option<String> {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no message (nor end of session) within {DEADLINE:?}"))
}
