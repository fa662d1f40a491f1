//! The `kontrol` binary as a user runs it: first start with nothing configured, `/healthz`,
//! graceful shutdown on SIGTERM, `--initial` writing a kite key that the started Kontrol
//! accepts, Go-style single-dash flags, `--help`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

const KONTROL: &str = env!("CARGO_BIN_EXE_kontrol");

/// A running kontrol process, killed on drop; its stdout lines arrive on `lines`.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(args: &[&str], home: &Path) -> Running {
        let mut child = Command::new(KONTROL)
            .args(args)
            .env("HOME", home)
            .env("KITE_HOME", home.join(".kite"))
            .env("RUST_LOG", "warn")
            .env_remove("KONTROL_PORT")
            .env_remove("KONTROL_DATADIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// Waits for the `KITE_KONTROL_URL=` line; returns the URL and every line seen.
    fn url(&self) -> (String, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("KITE_KONTROL_URL=") {
                        let url = url.to_string();
                        seen.push(line);
                        // The remaining lines of the banner.
                        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(300)) {
                            seen.push(l);
                        }
                        return (url, seen);
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no KITE_KONTROL_URL line; output: {seen:?}");
    }
}

/// `GET path` on the Kontrol's host: (status, body).
fn http_get(kontrol_url: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let host = kontrol_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "kontrol did not exit in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn first_start_with_nothing_configured() {
    let home = tempfile::tempdir().unwrap();
    let mut k = Running::start(&["--port", "0"], home.path());
    let (url, banner) = k.url();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.ends_with("/kite"), "{url}");
    let text = banner.join("\n");
    assert!(text.contains("kitectl register --kontrol-url"), "{text}");
    assert!(text.contains("kontrol --initial --username"), "{text}");
    // Its data directory was created in the home directory.
    assert!(home.path().join(".kontrol").is_dir());
    // Ready.
    let (status, _) = http_get(&url, "/healthz");
    assert_eq!(status, 200);
    let (status, body) = http_get(&url, "/kite");
    assert_eq!((status, body.trim()), (200, "Welcome to SockJS!"));
    // Graceful shutdown.
    sigterm(&k.child);
    let status = wait_exit(&mut k.child, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn initial_writes_a_kite_key_the_kontrol_accepts() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/kite");
    // Missing values are explained.
    let out = Command::new(KONTROL)
        .args(["--initial", "--data-dir"])
        .arg(&data)
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--initial needs --username"));

    // Go spelling: single dashes.
    let out = Command::new(KONTROL)
        .args(["-initial", "-username", "alice", "-kontrolurl", &url])
        .arg("--data-dir")
        .arg(&data)
        .env("HOME", home.path())
        .env("KITE_HOME", home.path().join("kh"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = kite::kitekey::read(&home.path().join("kh")).unwrap();
    let key = kite::kitekey::KiteKey::parse(&raw, SystemTime::now()).unwrap();
    assert_eq!(key.username(), "alice");
    assert_eq!(key.kontrol_user(), "kontrol");
    assert_eq!(key.kontrol_url(), url);

    // The Kontrol started on the same data directory accepts it (kiteKey authentication).
    let k = Running::start(
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        home.path(),
    );
    let (served, _) = k.url();
    assert_eq!(served, url);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut config = kite::Config::default();
        config.apply_kite_key(&key);
        let me = kite::Kite::with_config("client", "1.0.0", config).unwrap();
        let pem = me.get_key().await.unwrap();
        assert_eq!(pem.trim(), key.kontrol_key().trim());
        me.kontrol().close().await;
    });
}

#[test]
fn help_explains_the_basics() {
    let out = Command::new(KONTROL).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "KONTROL_PORT",
        "--storage",
        "--data-dir",
        "--initial",
        "--kontrolurl",
        "--machine-secret",
        "embedded",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}
