//! An etcd server on loopback; see the [parent module](super).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use rustix::process::Signal;

use super::{
    log_tail, stop_child, wait_ready, ServerDir, ServiceError, ATTEMPTS, READY_WITHIN, STOP_GRACE,
};
use crate::net::try_free_port;

/// Environment variables naming the etcd program; the first one set wins.
pub const PROGRAM_VARS: [&str; 2] = ["KONTROL_TEST_ETCD", "KITE_BENCH_ETCD"];

/// How to start an [`Etcd`].
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// The etcd program. Default: `None`, found by [`find_program`].
    pub program: Option<PathBuf>,
}

/// The etcd program: the first of [`PROGRAM_VARS`] that is set, else `etcd` (on `PATH`).
pub fn find_program() -> OsString {
    PROGRAM_VARS
        .iter()
        .find_map(std::env::var_os)
        .unwrap_or_else(|| "etcd".into())
}

/// A single-member etcd cluster on 127.0.0.1 (default settings), stopped and its directory
/// removed when dropped.
pub struct Etcd {
    client_port: u16,
    peer_port: u16,
    program: OsString,
    child: Child,
    // After `child`: dropped (the directory removed) once the server has stopped.
    dir: ServerDir,
}

impl Drop for Etcd {
    /// Stops the server (SIGTERM); then its directory goes.
    fn drop(&mut self) {
        stop_child(&mut self.child, Signal::TERM, STOP_GRACE);
    }
}

/// Whether etcd on `port` answers `/health` with `"health":"true"`.
fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

/// Starts etcd with its data in `root` and waits until it is healthy; on failure (the
/// process stopped) why, and the tail of its log.
fn launch(
    program: &OsString,
    root: &Path,
    cport: u16,
    pport: u16,
    attempt: u32,
) -> Result<Child, ServiceError> {
    let client_url = format!("http://127.0.0.1:{cport}");
    let peer_url = format!("http://127.0.0.1:{pport}");
    let log_path = root.join(format!("etcd-{cport}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(ServiceError::io("create the etcd log"))?;
    let log_err = log
        .try_clone()
        .map_err(ServiceError::io("clone the log's descriptor"))?;
    let mut child = Command::new(program)
        .arg("--name")
        .arg("kite-test")
        .arg("--data-dir")
        .arg(root.join("data"))
        .arg("--listen-client-urls")
        .arg(&client_url)
        .arg("--advertise-client-urls")
        .arg(&client_url)
        .arg("--listen-peer-urls")
        .arg(&peer_url)
        .arg("--initial-advertise-peer-urls")
        .arg(&peer_url)
        .arg("--initial-cluster")
        .arg(format!("kite-test={peer_url}"))
        .arg("--initial-cluster-token")
        .arg(format!("kite-test-{}-{attempt}", std::process::id()))
        .args(["--logger", "zap", "--log-level", "warn"])
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(ServiceError::io(format!(
            "spawn {} (set {} to the etcd program)",
            program.to_string_lossy(),
            PROGRAM_VARS.join(" or ")
        )))?;
    match wait_ready(&mut child, READY_WITHIN, || healthy(cport)) {
        Ok(()) => Ok(child),
        Err(reason) => {
            stop_child(&mut child, Signal::KILL, Duration::from_secs(1));
            Err(ServiceError::NotStarted {
                what: "etcd",
                reason,
                log: log_tail(&log_path),
            })
        }
    }
}

impl Etcd {
    /// The server shared by every test of this process, started on first use. Panics when
    /// it can't start.
    pub fn shared() -> &'static Etcd {
        static SERVER: OnceLock<Etcd> = OnceLock::new();
        SERVER.get_or_init(Etcd::start)
    }

    /// A server of its own. Panics when it can't start.
    pub fn start() -> Etcd {
        Etcd::try_start(&EtcdOptions::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts etcd in a fresh temporary directory on free loopback ports (others if those
    /// were taken meanwhile) and waits until it is healthy. Blocks; call it from
    /// `spawn_blocking` in async code.
    pub fn try_start(options: &EtcdOptions) -> Result<Etcd, ServiceError> {
        let program = match &options.program {
            Some(p) => p.clone().into_os_string(),
            None => find_program(),
        };
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            let mut dir = ServerDir::new("kite-testkit-etcd-", "TERM")?;
            let (cport, pport) = try_free_port()
                .and_then(|c| Ok((c, try_free_port()?)))
                .map_err(ServiceError::io("find a free port"))?;
            match launch(&program, &dir.path, cport, pport, attempt) {
                Ok(mut child) => {
                    dir.watch(&mut child, Signal::TERM)?;
                    return Ok(Etcd {
                        client_port: cport,
                        peer_port: pport,
                        program,
                        child,
                        dir,
                    });
                }
                // Most likely a port was taken meanwhile: try others.
                Err(e @ ServiceError::NotStarted { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ServiceError::NotStarted {
            what: "etcd",
            reason: "no attempt".into(),
            log: String::new(),
        }))
    }

    /// Stops the server and starts it again on the same ports and data. Panics when it can't.
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops the server and starts it again on the same ports and data; blocks until it is
    /// healthy.
    pub fn try_restart(&mut self) -> Result<(), ServiceError> {
        stop_child(&mut self.child, Signal::TERM, STOP_GRACE);
        self.dir.forget();
        self.child = launch(
            &self.program,
            &self.dir.path,
            self.client_port,
            self.peer_port,
            0,
        )?;
        self.dir.watch(&mut self.child, Signal::TERM)
    }

    /// The client port on 127.0.0.1.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The peer port on 127.0.0.1.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The client URL, `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A key prefix no other caller of this process gets.
    pub fn new_prefix(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "/kt/{}/{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }
}
