//! The bench binary still works: a tiny run of every part (`all --quick --smoke`). Figures
//! are printed, never asserted: performance is measured, not tested.

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the bench (and, through its kill-on-drop handles, its children) if the test fails.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_part_runs_and_prints_its_table() {
    let child = Command::new(env!("CARGO_BIN_EXE_kite-bench"))
        .args(["all", "--quick", "--smoke"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let mut stdout = guard.0.stdout.take().unwrap();
    let mut stderr = guard.0.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "kite-bench --smoke ran for more than 300 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    assert!(
        status.success(),
        "kite-bench failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for heading in [
        "### Ceiling: WebSocket echo",
        "### RPC: `square` on a kite",
        "### Authentication cost",
        "### Memory per idle connection",
        "### Kontrol storage",
        "### Balanced client: three instances behind Kontrol",
        "### Targets",
    ] {
        assert!(
            stdout.contains(heading),
            "missing {heading:?} in:\n{stdout}"
        );
    }
    // Every transport produced a row, and the embedded store always runs.
    for row in [
        "| SockJS WebSocket ",
        "| raw WebSocket ",
        "| raw WebSocket, bare dnode caller ",
        "| SockJS XHR polling ",
        "| embedded ",
        "| direct `Client`, 1 instance ",
        "| balanced p2c, 3 instances ",
        "| balanced round robin, 3 instances ",
    ] {
        assert!(stdout.contains(row), "missing row {row:?} in:\n{stdout}");
    }
}
