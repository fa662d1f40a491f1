//! PostgreSQL and etcd servers started by the bench on loopback, in temporary directories,
//! stopped (and their directories removed) when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rustix::process::{kill_process, Pid, Signal};
use tempfile::TempDir;

/// The uid PostgreSQL runs as when we are root (it refuses to run as root): `nobody`.
const NOBODY: u32 = 65534;

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `ready` every 50 ms for up to `limit`; fails early when `child` exits.
fn wait_ready(
    child: &mut Child,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("exited with {status}");
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not ready after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops `child` with `signal`, then SIGKILL after 5 s.
fn stop(child: &mut Child, signal: Signal) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// A PostgreSQL server (default settings, trust authentication on 127.0.0.1).
pub(crate) struct Postgres {
    pub port: u16,
    child: Child,
    _dir: TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown.
        stop(&mut self.child, Signal::QUIT);
    }
}

fn pg_bin() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("KITE_BENCH_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context(
            "PostgreSQL is not installed (/usr/lib/postgresql missing; set KITE_BENCH_PG_BIN)",
        )?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

impl Postgres {
    /// `initdb` and start a server; blocks until it accepts connections.
    pub fn start() -> anyhow::Result<Postgres> {
        let bin = pg_bin()?;
        let as_root = rustix::process::geteuid().is_root();
        let dir = tempfile::Builder::new()
            .prefix("kite-bench-pg-")
            .tempdir()?;
        if as_root {
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY))?;
        }
        let command = |program: &str| {
            let path = bin.join(program);
            let mut c = if as_root {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={NOBODY}"))
                    .arg(format!("--regid={NOBODY}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(path);
                c
            } else {
                Command::new(path)
            };
            c.current_dir(dir.path()).stdin(Stdio::null());
            c
        };
        let data = dir.path().join("data");
        let out = command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .output()
            .context("run initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let log_path = dir.path().join(format!("postgres-{port}.log"));
            let log = std::fs::File::create(&log_path)?;
            if as_root {
                std::os::unix::fs::chown(&log_path, Some(NOBODY), Some(NOBODY))?;
            }
            let mut child = command("postgres")
                .arg("-D")
                .arg(&data)
                .arg("-k")
                .arg(dir.path())
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["-c", "max_connections=200"])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("spawn postgres")?;
            let isready = bin.join("pg_isready");
            let r = wait_ready(&mut child, Duration::from_secs(60), || {
                Command::new(&isready)
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port.to_string(),
                        "-U",
                        "postgres",
                        "-t",
                        "1",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
            match r {
                Ok(()) => {
                    return Ok(Postgres {
                        port,
                        child,
                        _dir: dir,
                    })
                }
                Err(e) => {
                    stop(&mut child, Signal::QUIT);
                    last = format!("{e}: {}", log_tail(&log_path));
                }
            }
        }
        bail!("postgres did not start: {last}")
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

/// A single-member etcd cluster (default settings).
pub(crate) struct Etcd {
    pub client_port: u16,
    child: Child,
    _dir: TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        stop(&mut self.child, Signal::TERM);
    }
}

fn etcd_healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl Etcd {
    /// Starts etcd; blocks until it is healthy.
    pub fn start() -> anyhow::Result<Etcd> {
        let program = std::env::var("KITE_BENCH_ETCD").unwrap_or_else(|_| "etcd".into());
        let dir = tempfile::Builder::new()
            .prefix("kite-bench-etcd-")
            .tempdir()?;
        let mut last = String::new();
        for attempt in 0..3 {
            let (cport, pport) = (free_port()?, free_port()?);
            let client = format!("http://127.0.0.1:{cport}");
            let peer = format!("http://127.0.0.1:{pport}");
            let log_path = dir.path().join(format!("etcd-{cport}.log"));
            let log = std::fs::File::create(&log_path)?;
            let mut child = Command::new(&program)
                .args(["--name", "bench", "--data-dir"])
                .arg(dir.path().join(format!("data-{attempt}")))
                .args([
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                ])
                .arg("--initial-cluster")
                .arg(format!("bench={peer}"))
                .args(["--log-level", "warn"])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawn {program}"))?;
            match wait_ready(&mut child, Duration::from_secs(60), || etcd_healthy(cport)) {
                Ok(()) => {
                    return Ok(Etcd {
                        client_port: cport,
                        child,
                        _dir: dir,
                    })
                }
                Err(e) => {
                    stop(&mut child, Signal::KILL);
                    last = format!("{e}: {}", log_tail(&log_path));
                }
            }
        }
        bail!("etcd did not start: {last}")
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}
