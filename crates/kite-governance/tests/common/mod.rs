//! Test helpers: kites on 127.0.0.1:0, child processes killed on drop, `/metrics` scraping.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kite::protocol::Kite as KiteIdentity;
use kite::{Kite, ShutdownHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A kite served in a task.
pub struct Node {
    pub kite: Arc<Kite>,
    pub url: String,
    pub identity: KiteIdentity,
    pub handle: ShutdownHandle,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// A kite named `name` (environment `test`, region `local`, no authentication),
/// configured by `setup`, listening on 127.0.0.1:0.
pub async fn start(name: &str, setup: impl FnOnce(&Kite)) -> Node {
    let mut k = Kite::new(name, "1.0.0").unwrap();
    k.config.ip = "127.0.0.1".into();
    k.config.port = 0;
    k.config.disable_authentication = true;
    k.config.environment = "test".into();
    k.config.region = "local".into();
    setup(&k);
    k.listen().await.unwrap();
    let url = k.url().unwrap();
    let identity = k.identity();
    let handle = k.shutdown_handle();
    let kite = Arc::new(k);
    let k2 = kite.clone();
    tokio::spawn(async move {
        let _ = k2.serve().await;
    });
    Node {
        kite,
        url,
        identity,
        handle,
    }
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples").join(name)
}

/// Starts the `worker` example (answering after `delay_ms`); returns it, its URL and its
/// identity.
pub fn spawn_worker(delay_ms: u64) -> (Proc, String, KiteIdentity) {
    spawn_worker_env(delay_ms, &[], &[])
}

/// [`spawn_worker`] with environment variables `set` and `remove`d.
pub fn spawn_worker_env(
    delay_ms: u64,
    set: &[(&str, &str)],
    remove: &[&str],
) -> (Proc, String, KiteIdentity) {
    let mut cmd = Command::new(example("worker"));
    for var in remove {
        cmd.env_remove(var);
    }
    cmd.envs(set.iter().copied());
    let mut child = cmd
        .env("KITE_PORT", "0")
        .env("WORKER_DELAY_MS", delay_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the worker example (built by cargo test)");
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("ready line in time");
    let rest = line.strip_prefix("worker ready on ").unwrap();
    let (url, id) = rest.split_once(" id ").unwrap();
    let identity = KiteIdentity {
        username: "unknown".into(),
        environment: "test".into(),
        name: "worker".into(),
        version: "1.0.0".into(),
        region: "local".into(),
        hostname: "localhost".into(),
        id: id.to_string(),
    };
    (proc, url.to_string(), identity)
}

/// GET `/metrics` of the kite at `url` (its SockJS URL) over plain HTTP/1.0.
pub async fn scrape(url: &str) -> String {
    let base = url.trim_start_matches("http://");
    let host = base.split('/').next().unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("metrics in time")
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_lowercase().contains("application/openmetrics-text"),
        "{head}"
    );
    body.to_string()
}

/// The sum of the samples of `name` whose labels include every pair of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| l.split(',').any(|p| p == format!("{k}=\"{v}\"")))
        {
            sum += value.parse::<f64>().unwrap();
        }
    }
    sum
}

/// Polls `f` every few milliseconds until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
