//! Real PostgreSQL and etcd servers on loopback, started in their own temporary directories:
//! for the Kontrol storage tests and for the bench, which measures them.
//!
//! * [`postgres::Postgres`]: `initdb` + `postgres` on a free port, trust authentication for
//!   user `postgres`. PostgreSQL refuses to run as root, so as root (CI) both run as
//!   `nobody` through `setpriv`, in a directory owned by `nobody`.
//!   [`postgres::Durability`] picks fast test settings or the server's durable defaults.
//! * [`etcd::Etcd`]: a single-member etcd cluster, which a test can restart on the same
//!   ports and data.
//!
//! Each type has a fallible constructor (`try_start`, returning a [`ServiceError`] a caller
//! can report, e.g. the bench printing `skipped`), a panicking one for tests (`start`), and a
//! `shared()` server started on first use and shared by every test of a test binary.
//!
//! A server stops (and its directory is removed) when dropped. Statics are never dropped and
//! a killed process runs no destructors, so each server also has a [`guardian::Guardian`]: a
//! shell that does the same cleanup when the process that started the server exits, however
//! it exits.
//!
//! Startup retries on another port when the chosen one was taken meanwhile, and waits for
//! readiness by polling with a deadline.
//!
//! Binaries (environment variables, the first one set wins):
//!
//! * PostgreSQL: `KONTROL_TEST_PG_BIN` or `KITE_BENCH_PG_BIN` (the directory holding
//!   `initdb`, `postgres` and `pg_isready`); otherwise the newest `/usr/lib/postgresql/*/bin`
//!   (Debian's layout), otherwise `/usr/bin` when `postgres` is there.
//! * etcd: `KONTROL_TEST_ETCD` or `KITE_BENCH_ETCD` (the program); otherwise `etcd` on
//!   `PATH`.

pub mod etcd;
pub mod guardian;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use guardian::Guardian;

pub use etcd::{Etcd, EtcdOptions};
pub use postgres::{Durability, Postgres, PostgresOptions};

/// How many startup attempts (each on fresh ports) before giving up.
const ATTEMPTS: u32 = 5;
/// How long a server gets to become ready.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long a server gets to stop before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How many of the last log lines an error shows.
const LOG_LINES: usize = 30;

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The server's binaries were not found.
    #[error("{0}")]
    NotInstalled(String),
    /// An operating-system call failed.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure (shown in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// A setup command (e.g. `initdb`) failed.
    #[error("{what} failed ({status}):\n{output}")]
    Command {
        /// The command.
        what: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its standard output and error.
        output: String,
    },
    /// The server exited or did not become ready in time, on every attempt.
    #[error("{what} did not start: {reason}\n{log}")]
    NotStarted {
        /// The server.
        what: &'static str,
        /// What happened on the last attempt.
        reason: String,
        /// The last lines of the server's log on the last attempt.
        log: String,
    },
}

impl ServiceError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
        let what = what.into();
        move |error| ServiceError::Io { what, error }
    }
}

/// Whether this process runs as root (then PostgreSQL runs as `nobody`).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A server's fresh temporary directory and its [`Guardian`]: removed (the guardian
/// disarmed) when dropped, so a server stops its process in its own `drop` and leaves the
/// rest to this.
struct ServerDir {
    path: PathBuf,
    guardian: Option<Guardian>,
}

impl ServerDir {
    /// Creates the directory (`prefix` + random) and its guardian, which stops the server
    /// with `signal` (a name such as `TERM`).
    fn new(prefix: &str, signal: &str) -> Result<ServerDir, ServiceError> {
        let path = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map(tempfile::TempDir::keep)
            .map_err(ServiceError::io("create a temporary directory"))?;
        match Guardian::new(&path, signal) {
            Ok(g) => Ok(ServerDir {
                path,
                guardian: Some(g),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&path);
                Err(ServiceError::io("start a guardian shell")(e))
            }
        }
    }

    /// Has the guardian stop `child` at exit; if it can't, stops `child` with `signal`.
    fn watch(&mut self, child: &mut Child, signal: Signal) -> Result<(), ServiceError> {
        let told = match self.guardian.as_mut() {
            Some(g) => g.watch_pid(child.id()),
            None => Ok(()),
        };
        told.map_err(|e| {
            stop_child(child, signal, STOP_GRACE);
            ServiceError::io("talk to the guardian")(e)
        })
    }

    /// The watched server exited (and was reaped).
    fn forget(&mut self) {
        if let Some(g) = self.guardian.as_mut() {
            let _ = g.forget_pid();
        }
    }
}

impl Drop for ServerDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        if let Some(g) = self.guardian.take() {
            g.disarm();
        }
    }
}

/// The last lines of a log file, for a failure message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_LINES)..].join("\n")
}

/// Runs `cmd` to completion; an error with its output when it fails.
fn run(cmd: &mut Command, what: &str) -> Result<(), ServiceError> {
    let out = cmd
        .output()
        .map_err(ServiceError::io(format!("run {what}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ServiceError::Command {
        what: what.to_owned(),
        status: out.status,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// Polls `ready` until it is true (`Ok`), `child` exits or `within` passes (`Err` saying
/// which).
fn wait_ready(
    child: &mut Child,
    within: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    crate::wait::poll_for(within, || match child.try_wait() {
        Ok(Some(status)) => Some(Err(format!("exited with {status}"))),
        Err(e) => Some(Err(format!("can't check the process: {e}"))),
        Ok(None) => ready().then_some(Ok(())),
    })
    .unwrap_or_else(|| Err(format!("not ready after {within:?}")))
}

/// Stops `child`: `signal`, then SIGKILL if it is still running after `grace`; waits for it
/// (no zombie).
fn stop_child(child: &mut Child, signal: Signal, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
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
