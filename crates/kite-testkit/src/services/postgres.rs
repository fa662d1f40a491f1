//! A PostgreSQL server on loopback; see the [parent module](super).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use rustix::process::Signal;

use super::{
    is_root, log_tail, run, stop_child, wait_ready, ServerDir, ServiceError, ATTEMPTS,
    READY_WITHIN, STOP_GRACE,
};
use crate::net::try_free_port;

/// The uid and gid PostgreSQL runs as when we are root (it refuses to run as root).
const NOBODY: u32 = 65534;

/// Environment variables naming PostgreSQL's `bin` directory; the first one set wins.
pub const BIN_DIR_VARS: [&str; 2] = ["KONTROL_TEST_PG_BIN", "KITE_BENCH_PG_BIN"];

/// How much PostgreSQL may trade durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// For tests: `initdb --no-sync`, `fsync=off` (`-F`), `synchronous_commit=off`,
    /// `full_page_writes=off`. A crash may lose data; nobody cares.
    Fast,
    /// The server's own durable defaults (the bench measures them).
    ServerDefaults,
}

/// How to start a [`Postgres`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Fast test settings or the server's defaults. Default: [`Durability::Fast`].
    pub durability: Durability,
    /// `max_connections`. Default: 400 (a test binary runs many pools at once).
    pub max_connections: u32,
    /// The directory holding `initdb`, `postgres` and `pg_isready`. Default: `None`, found
    /// by [`find_bin_dir`].
    pub bin_dir: Option<PathBuf>,
}

impl Default for PostgresOptions {
    fn default() -> PostgresOptions {
        PostgresOptions {
            durability: Durability::Fast,
            max_connections: 400,
            bin_dir: None,
        }
    }
}

/// PostgreSQL's `bin` directory: the first of [`BIN_DIR_VARS`] that is set, else the newest
/// `/usr/lib/postgresql/<version>/bin` holding `postgres`, else `/usr/bin` when `postgres` is
/// there.
pub fn find_bin_dir() -> Result<PathBuf, ServiceError> {
    if let Some(dir) = BIN_DIR_VARS.iter().find_map(std::env::var_os) {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    let usr_bin = PathBuf::from("/usr/bin");
    if usr_bin.join("postgres").exists() {
        return Ok(usr_bin);
    }
    Err(ServiceError::NotInstalled(format!(
        "PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/postgres nor \
         /usr/bin/postgres (set {} to its bin directory)",
        BIN_DIR_VARS.join(" or ")
    )))
}

/// A PostgreSQL server on 127.0.0.1 (user `postgres`, trust authentication), stopped and
/// its directory removed when dropped.
pub struct Postgres {
    port: u16,
    child: Child,
    // After `child`: dropped (the directory removed) once the server has stopped.
    _dir: ServerDir,
}

impl Drop for Postgres {
    /// Stops the server (SIGQUIT: immediate shutdown); then its directory goes.
    fn drop(&mut self) {
        stop_child(&mut self.child, Signal::QUIT, STOP_GRACE);
    }
}

/// `program` run as `nobody` when `as_nobody`.
fn pg_command(program: &Path, as_nobody: bool) -> Command {
    if as_nobody {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// The server shared by every test of this process, with the default (fast) options,
    /// started on first use. Panics when it can't start.
    pub fn shared() -> &'static Postgres {
        static SERVER: OnceLock<Postgres> = OnceLock::new();
        SERVER.get_or_init(Postgres::start)
    }

    /// A server of its own with the default (fast) options. Panics when it can't start.
    pub fn start() -> Postgres {
        Postgres::try_start(&PostgresOptions::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `initdb` into a fresh temporary directory, start `postgres` on a free loopback port
    /// (another one if that was taken meanwhile) and wait until it accepts connections.
    /// Blocks; call it from `spawn_blocking` in async code.
    pub fn try_start(options: &PostgresOptions) -> Result<Postgres, ServiceError> {
        let bin = match &options.bin_dir {
            Some(dir) => dir.clone(),
            None => find_bin_dir()?,
        };
        let mut dir = ServerDir::new("kite-testkit-pg-", "QUIT")?;
        let (port, child) = launch(&bin, &mut dir, options)?;
        Ok(Postgres {
            port,
            child,
            _dir: dir,
        })
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq-style connection string for database `dbname` as user `postgres`.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    /// Creates a fresh, empty database no other caller gets and returns its connection
    /// string. Panics on failure.
    pub async fn new_database(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kt_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let (client, conn) =
            tokio_postgres::connect(&self.conninfo("postgres"), tokio_postgres::NoTls)
                .await
                .expect("admin connection");
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        drop(client);
        let _ = driver.await;
        self.conninfo(&name)
    }
}

/// `initdb`, then starts the server on a free port: the port and the running server.
fn launch(
    bin: &Path,
    dir: &mut ServerDir,
    options: &PostgresOptions,
) -> Result<(u16, Child), ServiceError> {
    let root = dir.path.clone();
    let root = root.as_path();
    let as_nobody = is_root();
    if as_nobody {
        std::os::unix::fs::chown(root, Some(NOBODY), Some(NOBODY))
            .map_err(ServiceError::io("chown the PostgreSQL directory to nobody"))?;
    }
    let fast = options.durability == Durability::Fast;
    let data = root.join("data");
    let mut initdb = pg_command(&bin.join("initdb"), as_nobody);
    initdb
        .current_dir(root)
        .stdin(Stdio::null())
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"]);
    if fast {
        initdb.arg("--no-sync");
    }
    run(&mut initdb, "initdb")?;

    let mut last = None;
    for _attempt in 0..ATTEMPTS {
        let port = try_free_port().map_err(ServiceError::io("find a free port"))?;
        let log_path = root.join(format!("postgres-{port}.log"));
        let log = File::create(&log_path).map_err(ServiceError::io("create the postgres log"))?;
        let log_err = log
            .try_clone()
            .map_err(ServiceError::io("clone the log's descriptor"))?;
        let mut cmd = pg_command(&bin.join("postgres"), as_nobody);
        cmd.current_dir(root)
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(root)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .arg("-c")
            .arg(format!("max_connections={}", options.max_connections));
        if fast {
            cmd.arg("-F")
                .args(["-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(ServiceError::io(format!(
                "spawn {}",
                bin.join("postgres").display()
            )))?;
        dir.watch(&mut child, Signal::QUIT)?;
        let isready = bin.join("pg_isready");
        let ready = wait_ready(&mut child, READY_WITHIN, || {
            Command::new(&isready)
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .args(["-d", "postgres", "-t", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        match ready {
            Ok(()) => return Ok((port, child)),
            Err(reason) => {
                // Most likely the port was taken meanwhile: try another one.
                stop_child(&mut child, Signal::QUIT, STOP_GRACE);
                dir.forget();
                last = Some((reason, log_tail(&log_path)));
            }
        }
    }
    let (reason, log) = last.unwrap_or_default();
    Err(ServiceError::NotStarted {
        what: "postgres",
        reason,
        log,
    })
}
