//! Child-process helpers: free ports, polling with a deadline, and a guardian process that
//! stops a server and removes its directory when the test binary exits (statics are never
//! dropped, and a killed test binary runs no destructors at all).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Polls `ready` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn poll_until<T>(what: &str, timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A guardian shell that lives as long as this process and cleans up after it: it reads
/// commands from its stdin, a pipe whose only writer is this process. When the process exits
/// (however it ends, SIGKILL included) the pipe closes and the guardian stops the watched
/// server (the given signal, then SIGKILL after 5 s) and removes the directory.
pub struct Guardian {
    stdin: ChildStdin,
    child: Child,
}

impl Guardian {
    /// Guards `dir`; `signal` (e.g. `TERM`) is what stops the server set by [`Guardian::watch_pid`].
    pub fn new(dir: &Path, signal: &str) -> Guardian {
        let script = r#"
            pid=
            while read -r cmd arg; do
                case "$cmd" in
                    pid) pid=$arg ;;
                    nopid) pid= ;;
                    disarm) exit 0 ;;
                esac
            done
            if [ -n "$pid" ]; then
                kill -"$2" "$pid" 2>/dev/null
                i=0
                while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i+1)); done
                kill -KILL "$pid" 2>/dev/null
            fi
            rm -rf "$1"
        "#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("guardian")
            .arg(dir)
            .arg(signal)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C on the test run must not kill the guardian first.
            .process_group(0)
            .spawn()
            .expect("spawn guardian shell");
        let stdin = child.stdin.take().expect("guardian stdin");
        Guardian { stdin, child }
    }

    fn send(&mut self, line: &str) {
        self.stdin
            .write_all(line.as_bytes())
            .and_then(|()| self.stdin.flush())
            .expect("talk to guardian");
    }

    /// The server to stop at exit.
    pub fn watch_pid(&mut self, pid: u32) {
        self.send(&format!("pid {pid}\n"));
    }

    /// The watched server exited (and was reaped): leave its pid alone.
    pub fn forget_pid(&mut self) {
        self.send("nopid\n");
    }

    /// Cleanup is done already: exit without doing anything.
    pub fn disarm(mut self) {
        let _ = self.stdin.write_all(b"disarm\n");
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

/// A fresh directory for a shared server, removed by its guardian.
pub fn server_dir(prefix: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir")
        .keep()
}

/// Reads a log file for a failure message.
pub fn read_log(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Runs `cmd` to completion, panicking with its output on failure.
pub fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops `child`: `signal` (e.g. `TERM`), then SIGKILL if it is still running after `grace`;
/// waits for it (no zombie).
pub fn stop_child(child: &mut Child, signal: &str, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
