//! The `kontrol` binary as a user runs it: first start with nothing configured, `/healthz`,
//! graceful shutdown on SIGTERM, `--initial` writing a kite key that the started Kontrol
//! accepts, Go-style single-dash flags, `--help`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use kite_testkit::net::free_port;
use kite_testkit::process::TestProcess;

const KONTROL: &str = env!("CARGO_BIN_EXE_kontrol");

/// Starts the kontrol binary with `args`, `home` as its home directory.
fn start(args: &[&str], home: &Path) -> TestProcess {
    TestProcess::spawn(
        "kontrol",
        Command::new(KONTROL)
            .args(args)
            .env("HOME", home)
            .env("KITE_HOME", home.join(".kite"))
            .env("RUST_LOG", "warn")
            .env_remove("KONTROL_PORT")
            .env_remove("KONTROL_DATADIR"),
    )
}

/// Waits for the `KITE_KONTROL_URL=` line of the banner; returns the URL.
fn kontrol_url(k: &mut TestProcess) -> String {
    let line = k.wait_line(Duration::from_secs(60), |l| {
        l.starts_with("KITE_KONTROL_URL=")
    });
    line["KITE_KONTROL_URL=".len()..].to_string()
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

#[test]
fn first_start_with_nothing_configured() {
    let home = tempfile::tempdir().unwrap();
    let mut k = start(&["--port", "0"], home.path());
    let url = kontrol_url(&mut k);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.ends_with("/kite"), "{url}");
    // The rest of the banner tells how to get a kite key.
    k.wait_line(Duration::from_secs(10), |l| {
        l.contains("kitectl register --kontrol-url")
    });
    k.wait_line(Duration::from_secs(10), |l| {
        l.contains("kontrol --initial --username")
    });
    // Its data directory was created in the home directory.
    assert!(home.path().join(".kontrol").is_dir());
    // Ready.
    let (status, _) = http_get(&url, "/healthz");
    assert_eq!(status, 200);
    let (status, body) = http_get(&url, "/kite");
    assert_eq!((status, body.trim()), (200, "Welcome to SockJS!"));
    // Graceful shutdown.
    k.signal("TERM");
    let status = k.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
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
    let mut k = start(
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        home.path(),
    );
    let served = kontrol_url(&mut k);
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
