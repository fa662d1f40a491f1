//! A real etcd server on loopback, one per test binary, with a key prefix per test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::proc::{free_port, poll_until, read_log, server_dir, stop_child, Guardian};

pub struct EtcdServer {
    pub client_port: u16,
    pub peer_port: u16,
    child: Child,
    root: PathBuf,
    guardian: Option<Guardian>,
}

impl Drop for EtcdServer {
    /// Stops the server and removes its directory. (The shared server lives in a static and
    /// is never dropped: its guardian cleans up when the test binary exits.)
    fn drop(&mut self) {
        stop_child(&mut self.child, "TERM", Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.root);
        if let Some(g) = self.guardian.take() {
            g.disarm();
        }
    }
}

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

/// Starts etcd in `root` and waits until it is healthy; on failure returns its log.
fn launch(root: &Path, cport: u16, pport: u16, attempt: u32) -> Result<Child, String> {
    let program = std::env::var("KONTROL_TEST_ETCD").unwrap_or_else(|_| "etcd".into());
    let client_url = format!("http://127.0.0.1:{cport}");
    let peer_url = format!("http://127.0.0.1:{pport}");
    let log_path = root.join(format!("etcd-{cport}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("create etcd log");
    let mut child = Command::new(program)
        .arg("--name")
        .arg("kontrol-test")
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
        .arg(format!("kontrol-test={peer_url}"))
        .arg("--initial-cluster-token")
        .arg(format!("kontrol-test-{}-{attempt}", std::process::id()))
        .args(["--logger", "zap", "--log-level", "warn"])
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log fd"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("spawn etcd");
    let ready = poll_until("etcd to become healthy", Duration::from_secs(60), || {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(false);
        }
        healthy(cport).then_some(true)
    });
    if ready {
        Ok(child)
    } else {
        stop_child(&mut child, "KILL", Duration::from_secs(1));
        Err(read_log(&log_path))
    }
}

impl EtcdServer {
    /// The server shared by every test of this binary (started on first use).
    pub fn shared() -> &'static EtcdServer {
        static SERVER: OnceLock<EtcdServer> = OnceLock::new();
        SERVER.get_or_init(EtcdServer::start)
    }

    pub fn start() -> EtcdServer {
        let mut last_log = String::new();
        for attempt in 0..5 {
            let root = server_dir("kontrol-etcd-");
            let mut guardian = Guardian::new(&root, "TERM");
            let (cport, pport) = (free_port(), free_port());
            match launch(&root, cport, pport, attempt) {
                Ok(child) => {
                    guardian.watch_pid(child.id());
                    return EtcdServer {
                        client_port: cport,
                        peer_port: pport,
                        child,
                        root,
                        guardian: Some(guardian),
                    };
                }
                Err(log) => {
                    // Most likely a port was taken meanwhile: try others.
                    last_log = log;
                    guardian.disarm();
                    let _ = std::fs::remove_dir_all(&root);
                }
            }
        }
        panic!("etcd did not start:\n{last_log}");
    }

    /// Stops the server and starts it again on the same ports and data.
    pub fn restart(&mut self) {
        stop_child(&mut self.child, "TERM", Duration::from_secs(10));
        if let Some(g) = self.guardian.as_mut() {
            g.forget_pid();
        }
        self.child = launch(&self.root, self.client_port, self.peer_port, 0)
            .unwrap_or_else(|log| panic!("etcd did not restart:\n{log}"));
        if let Some(g) = self.guardian.as_mut() {
            g.watch_pid(self.child.id());
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A key prefix no other test uses.
    pub fn new_prefix(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "/kt/{}/{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }
}
