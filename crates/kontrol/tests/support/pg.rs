//! A real PostgreSQL server on loopback, one per test binary, with a database per test.
//!
//! PostgreSQL refuses to run as root, so as root (CI) `initdb` and `postgres` run as `nobody`
//! through `setpriv`, in a directory owned by `nobody`.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::proc::{
    free_port, is_root, poll_until, read_log, run, server_dir, stop_child, Guardian,
};

const NOBODY: u32 = 65534;

pub struct PgServer {
    pub port: u16,
    child: Child,
    root: PathBuf,
    guardian: Option<Guardian>,
}

impl Drop for PgServer {
    /// Stops the server and removes its directory. (The shared server lives in a static and
    /// is never dropped: its guardian cleans up when the test binary exits.)
    fn drop(&mut self) {
        stop_child(&mut self.child, "QUIT", Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.root);
        if let Some(g) = self.guardian.take() {
            g.disarm();
        }
    }
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("KONTROL_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => PathBuf::from("/usr/bin"), // rely on PATH-style install
    }
}

/// `cmd` run as `nobody` when we are root.
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

impl PgServer {
    /// The server shared by every test of this binary (started on first use).
    pub fn shared() -> &'static PgServer {
        static SERVER: OnceLock<PgServer> = OnceLock::new();
        SERVER.get_or_init(PgServer::start)
    }

    /// initdb into a temp dir, start `postgres` on a free loopback port, wait until it
    /// accepts connections.
    pub fn start() -> PgServer {
        let bin = bin_dir();
        let as_nobody = is_root();
        let root = server_dir("kontrol-pg-");
        let mut guardian = Guardian::new(&root, "QUIT");
        if as_nobody {
            std::os::unix::fs::chown(&root, Some(NOBODY), Some(NOBODY)).expect("chown pg dir");
        }
        let data = root.join("data");
        run(
            pg_command(&bin.join("initdb"), as_nobody)
                .current_dir(&root)
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
                .arg("--no-sync"),
            "initdb",
        );
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let log_path = root.join(format!("postgres-{port}.log"));
            let log = File::create(&log_path).expect("create pg log");
            let mut child = pg_command(&bin.join("postgres"), as_nobody)
                .current_dir(&root)
                .arg("-D")
                .arg(&data)
                .arg("-k")
                .arg(&root)
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-F"])
                .args(["-c", "max_connections=400"])
                .args(["-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log fd"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("spawn postgres");
            guardian.watch_pid(child.id());
            let ready = poll_until(
                "postgres to accept connections",
                Duration::from_secs(60),
                || {
                    if let Ok(Some(_status)) = child.try_wait() {
                        return Some(false);
                    }
                    let ok = Command::new(bin.join("pg_isready"))
                        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                        .args(["-d", "postgres", "-t", "1"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false);
                    ok.then_some(true)
                },
            );
            if ready {
                return PgServer {
                    port,
                    child,
                    root,
                    guardian: Some(guardian),
                };
            }
            // Exited early, most likely the port was taken meanwhile: try another one.
            last_log = read_log(&log_path);
            guardian.forget_pid();
        }
        let _ = std::fs::remove_dir_all(&root);
        guardian.disarm();
        panic!("postgres did not start:\n{last_log}");
    }

    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    /// Creates a fresh, empty database and returns its connection string.
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
