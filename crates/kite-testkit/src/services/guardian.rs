//! A guardian shell that cleans up after the process that started a server.
//!
//! It reads commands from its stdin, a pipe whose only writer is this process. When this
//! process exits (however it ends, SIGKILL included) the pipe closes and the guardian stops
//! the watched server (the given signal, then SIGKILL after 5 s) and removes the server's
//! directory. A server dropped normally does its own cleanup and [disarms](Guardian::disarm)
//! its guardian.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// The guardian of one server directory; see the [module docs](self).
pub struct Guardian {
    stdin: ChildStdin,
    child: Child,
}

const SCRIPT: &str = r#"
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

impl Guardian {
    /// Guards `dir`; `signal` (a name such as `TERM` or `QUIT`) is what stops the server set
    /// by [`Guardian::watch_pid`].
    pub fn new(dir: &Path, signal: &str) -> std::io::Result<Guardian> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("guardian")
            .arg(dir)
            .arg(signal)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C on the test run must not kill the guardian first.
            .process_group(0)
            .spawn()?;
        match child.stdin.take() {
            Some(stdin) => Ok(Guardian { stdin, child }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(std::io::Error::other("guardian without stdin"))
            }
        }
    }

    fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.stdin.write_all(line.as_bytes())?;
        self.stdin.flush()
    }

    /// The server to stop at exit.
    pub fn watch_pid(&mut self, pid: u32) -> std::io::Result<()> {
        self.send(&format!("pid {pid}\n"))
    }

    /// The watched server exited (and was reaped): leave its pid alone.
    pub fn forget_pid(&mut self) -> std::io::Result<()> {
        self.send("nopid\n")
    }

    /// Cleanup is done already: exit without doing anything.
    pub fn disarm(mut self) {
        let _ = self.stdin.write_all(b"disarm\n");
        drop(self.stdin);
        let _ = self.child.wait();
    }
}
