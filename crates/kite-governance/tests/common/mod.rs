//! Test helpers: kites on 127.0.0.1:0, child processes killed on drop, `/metrics` scraping.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kite::protocol::Kite as KiteIdentity;
use kite::{Kite, ShutdownHandle};
use kite_testkit::paths;
use kite_testkit::process::TestProcess;

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

/// Starts the `worker` example (answering after `delay_ms`); returns it, its URL and its
/// identity.
pub fn spawn_worker(delay_ms: u64) -> (TestProcess, String, KiteIdentity) {
    spawn_worker_env(delay_ms, &[], &[])
}

/// [`spawn_worker`] with environment variables `set` and `remove`d.
pub fn spawn_worker_env(
    delay_ms: u64,
    set: &[(&str, &str)],
    remove: &[&str],
) -> (TestProcess, String, KiteIdentity) {
    let mut cmd = Command::new(paths::example("worker"));
    for var in remove {
        cmd.env_remove(var);
    }
    cmd.envs(set.iter().copied());
    cmd.env("KITE_PORT", "0")
        .env("WORKER_DELAY_MS", delay_ms.to_string())
        .stderr(Stdio::null());
    let mut proc = TestProcess::spawn("worker", &mut cmd);
    let line = proc.wait_line(Duration::from_secs(30), |l| {
        l.starts_with("worker ready on ")
    });
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

/// GET `/metrics` of the kite at `url` (its SockJS URL): the OpenMetrics text.
pub async fn scrape(url: &str) -> String {
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    let r = kite_testkit::http::get(host.parse().unwrap(), "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let content_type = r.header("content-type").unwrap_or_default();
    assert!(
        content_type.contains("application/openmetrics-text"),
        "{content_type}"
    );
    r.text()
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

pub use kite_testkit::wait::eventually;
