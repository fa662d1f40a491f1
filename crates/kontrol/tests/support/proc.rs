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

/// Keeps a guardian shell alive as long as this process: it blocks reading its stdin, a pipe
/// whose only writer is this process. When the process exits (however it ends) the pipe
/// closes and the guardian stops `pid` (SIGTERM, then SIGKILL after 5 s) and removes `dir`.
/// [`Guardian::disarm`] makes it exit without doing anything.
pub struct Guardian {
    stdin: ChildStdin,
    child: Child,
}

impl Guardian {
    pub fn watch(pid: u32, dir: &Path) -> Guardian {
        let script = r#"
            if read -r line; then exit 0; fi
            kill -TERM "$1" 2>/dev/null
            i=0
            while kill -0 "$1" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i+1)); done
            kill -KILL "$1" 2>/dev/null
            rm -rf "$2"
        "#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("guardian")
            .arg(pid.to_string())
            .arg(dir)
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

    /// For a server that already exited (and was reaped): leave the pid alone.
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
