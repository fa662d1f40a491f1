//! Child processes for tests: killed (and reaped) when dropped, their standard output read
//! line by line on a thread so that a test waits on a readiness line instead of sleeping.
//!
//! Both synchronous tests ([`TestProcess::wait_line`]) and async ones
//! ([`TestProcess::line`], [`TestProcess::json`]) can wait; the async waits never block the
//! runtime's thread.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::paths::interop_dir;

/// How many of the last output lines a failure message shows.
const SHOWN_LINES: usize = 30;

/// A child process; see the [module docs](self).
pub struct TestProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `node interop/<script>`, run in `interop/` (where its `node_modules` are).
pub fn node(script: impl AsRef<Path>) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(interop_dir().join(script))
        .current_dir(interop_dir());
    cmd
}

impl TestProcess {
    /// Starts `cmd` with piped stdin and stdout (stderr as `cmd` says; inherited by
    /// default). `name` appears in failure messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> TestProcess {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("can't start {name} ({cmd:?}): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name(format!("{name} stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn a reader thread");
        TestProcess {
            name: name.to_string(),
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Every output line so far (consumed or not), in order.
    pub fn output(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Lines not consumed by a wait yet, without waiting.
    pub fn drain_lines(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line.clone());
            out.push(line);
        }
        out
    }

    fn failure(&mut self, what: &str) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!("exited with {status}"),
            _ => "still running".into(),
        };
        let tail = self.seen.len().saturating_sub(SHOWN_LINES);
        format!(
            "{}: {what} ({status}); last output lines:\n{}",
            self.name,
            self.seen[tail..].join("\n")
        )
    }

    /// Blocks this thread until a line satisfies `pred` (earlier lines are consumed) and
    /// returns it; panics with the output seen after `within` or when the output ends.
    /// For synchronous tests; async tests use [`TestProcess::line`].
    pub fn wait_line(&mut self, within: Duration, mut pred: impl FnMut(&str) -> bool) -> String {
        self.wait_for(within, |line| pred(line).then(|| line.to_owned()))
    }

    /// Blocks this thread until `f` returns `Some` for a line (earlier lines are consumed)
    /// and returns that value; panics like [`TestProcess::wait_line`].
    pub fn wait_for<T>(&mut self, within: Duration, mut f: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        loop {
            match self.lines.try_recv() {
                Ok(line) => {
                    let found = f(&line);
                    self.seen.push(line);
                    if let Some(v) = found {
                        return v;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    let msg = self.failure(&format!("no expected line within {within:?}"));
                    panic!("{msg}");
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    let msg = self.failure("output ended before the expected line");
                    panic!("{msg}");
                }
            }
        }
    }

    /// The next line, or `None` after `within` or at the end of the output.
    pub async fn next_line(&mut self, within: Duration) -> Option<String> {
        let line = tokio::time::timeout(within, self.lines.recv())
            .await
            .ok()
            .flatten()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Waits for a line satisfying `pred` (earlier lines are consumed); panics with the
    /// output seen after `within` or when the output ends.
    pub async fn line(&mut self, within: Duration, mut pred: impl FnMut(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Ok(None) => {
                    let msg = self.failure("output ended before the expected line");
                    panic!("{msg}");
                }
                Err(_) => {
                    let msg = self.failure(&format!("no expected line within {within:?}"));
                    panic!("{msg}");
                }
            }
        }
    }

    /// Like [`TestProcess::line`] for processes printing one JSON document per line:
    /// waits for a JSON line satisfying `pred` (lines that are not JSON are skipped).
    pub async fn json(&mut self, within: Duration, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let mut found = None;
        self.line(within, |line| match serde_json::from_str::<Value>(line) {
            Ok(v) if pred(&v) => {
                found = Some(v);
                true
            }
            _ => false,
        })
        .await;
        found.expect("the matched line was parsed")
    }

    /// Writes `line` and a newline to the process's standard input.
    pub fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.write_all(b"\n"))
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: write to stdin: {e}", self.name));
    }

    /// Closes the process's standard input (many test peers exit then).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends `signal` (a name such as `TERM`, `INT`, `KILL`, `STOP`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("run kill: {e}"));
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }

    /// Blocks until the process exits; panics (after killing it) if it is still running
    /// after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let msg = self.failure(&format!("did not exit within {within:?}"));
                panic!("{msg}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Async [`TestProcess::wait_exit`].
    pub async fn exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let msg = self.failure(&format!("did not exit within {within:?}"));
                panic!("{msg}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the process: `signal`, then SIGKILL if it still runs after `grace`; reaps it.
    pub fn stop(&mut self, signal: &str, grace: Duration) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.child.wait().expect("reap the child")
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child.wait().expect("reap the child")
    }
}

/// Runs `cmd` to completion and returns its standard output; panics with both outputs
/// when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("can't run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
