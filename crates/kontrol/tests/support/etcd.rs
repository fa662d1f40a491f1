//! A real etcd server on loopback, one per test binary, with a key prefix per test.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::proc::{free_port, poll_until, read_log, server_dir, stop_child, Guardian};

pub struct EtcdServer {
    pub client_port: u16,
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

impl EtcdServer {
    /// The server shared by every test of this binary (started on first use).
    pub fn shared() -> &'static EtcdServer {
        static SERVER: OnceLock<EtcdServer> = OnceLock::new();
        SERVER.get_or_init(EtcdServer::start)
    }

    pub fn start() -> EtcdServer {
        let program = std::env::var("KONTROL_TEST_ETCD").unwrap_or_else(|_| "etcd".into());
        let mut last_log = String::new();
        for attempt in 0..5 {
            let root = server_dir("kontrol-etcd-");
            let mut guardian = Guardian::new(&root, "TERM");
            let (cport, pport) = (free_port(), free_port());
            let client_url = format!("http://127.0.0.1:{cport}");
            let peer_url = format!("http://127.0.0.1:{pport}");
            let log_path = root.join("etcd.log");
            let log = File::create(&log_path).expect("create etcd log");
            let mut child = Command::new(&program)
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
                .current_dir(&root)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log fd"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("spawn etcd");
            guardian.watch_pid(child.id());
            let ready = poll_until("etcd to become healthy", Duration::from_secs(60), || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                healthy(cport).then_some(true)
            });
            if ready {
                return EtcdServer {
                    client_port: cport,
                    child,
                    root,
                    guardian: Some(guardian),
                };
            }
            last_log = read_log(&log_path);
            guardian.disarm();
            let _ = std::fs::remove_dir_all(&root);
        }
        panic!("etcd did not start:\n{last_log}");
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
