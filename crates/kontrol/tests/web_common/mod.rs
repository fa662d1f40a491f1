//! Helpers of the web page tests: a `kontrol` kite serving HTTP on 127.0.0.1:0 over an
//! embedded store, kite registration, and a streaming Server-Sent Events client over a raw
//! socket (chunked transfer decoding included).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kite_protocol::Kite;
use kontrol::kite_service::KontrolKite;
use kontrol::storage::{Storage, StorageConfig};
use kontrol::{Kontrol, KontrolConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::kontrol_common::{key_for, kite_key_auth, test_config};
use crate::support::{self, TestEnv};

/// A running `kontrol` kite (SockJS + HTTP routes, web page included).
pub struct Server {
    pub server: Arc<KontrolKite>,
    pub storage: Arc<Storage>,
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`
    pub origin: String,
    serving: tokio::task::JoinHandle<()>,
    env: TestEnv,
}

impl Server {
    pub fn kontrol(&self) -> &Kontrol {
        self.server.kontrol()
    }

    pub async fn shutdown(&self) {
        self.server.shutdown().await;
    }

    /// Shuts Kontrol and its server down, waits until the store is released and closed, and
    /// hands the store back (to restart on it).
    pub async fn stop(self) -> TestEnv {
        let Server {
            server,
            storage,
            serving,
            env,
            ..
        } = self;
        server.shutdown().await;
        tokio::time::timeout(Duration::from_secs(20), serving)
            .await
            .expect("the server stops")
            .unwrap();
        drop(server);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut storage = storage;
        loop {
            match Arc::try_unwrap(storage) {
                Ok(s) => {
                    s.close().await.unwrap();
                    return env;
                }
                Err(s) => {
                    assert!(
                        Instant::now() < deadline,
                        "kontrol did not release its store"
                    );
                    storage = s;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Starts Kontrol on `env`'s store, listening on 127.0.0.1:`port` (0: any), with the test
/// timings and `tweak` applied.
pub async fn start_in(env: TestEnv, port: u16, tweak: impl FnOnce(&mut KontrolConfig)) -> Server {
    let storage = Arc::new(env.connect().await);
    let mut kite = KontrolKite::new_kite("0.0.1").unwrap();
    kite.config.ip = "127.0.0.1".into();
    kite.config.port = port;
    let mut config = test_config();
    config.kontrol_url = String::new();
    tweak(&mut config);
    let server = Arc::new(
        KontrolKite::start(kite, config, Arc::clone(&storage))
            .await
            .unwrap(),
    );
    let addr = server.kite().local_addr().unwrap();
    let s = Arc::clone(&server);
    let serving = tokio::spawn(async move {
        s.serve().await.unwrap();
    });
    Server {
        server,
        storage,
        addr,
        origin: format!("http://{addr}"),
        serving,
        env,
    }
}

/// Starts Kontrol (heartbeat 1 s + grace 1 s, expiry sweep 200 ms) with `tweak` applied to
/// its configuration and `tweak_store` to the embedded store's.
pub async fn start_with(
    tweak: impl FnOnce(&mut KontrolConfig),
    tweak_store: impl FnOnce(&mut kontrol::storage::EmbeddedConfig),
) -> Server {
    let mut env = support::embedded_env().await;
    if let StorageConfig::Embedded(c) = &mut env.config {
        tweak_store(c);
    }
    start_in(env, 0, tweak).await
}

pub async fn start() -> Server {
    start_with(|_| {}, |_| {}).await
}

/// Registers `kite` (username = its kite key's) at `url` through the Kontrol core.
pub async fn register(kontrol: &Kontrol, kite: &Kite, url: &str) {
    let key = key_for(kontrol, &kite.username);
    kontrol
        .register(kite, Some(&kite_key_auth(&key)), Some(&json!(url)))
        .await
        .unwrap();
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: Value,
    pub retry: Option<u64>,
}

/// A client reading a `text/event-stream` response as it arrives.
pub struct SseClient {
    stream: TcpStream,
    raw: Vec<u8>,
    text: String,
    ended: bool,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl SseClient {
    /// `GET path` with `Accept: text/event-stream`; reads the response head.
    pub async fn connect(addr: SocketAddr, path: &str) -> SseClient {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut c = SseClient {
            stream,
            raw: Vec::new(),
            text: String::new(),
            ended: false,
            status: 0,
            headers: Vec::new(),
        };
        let split = loop {
            if let Some(i) = c.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(
                c.read_more(Duration::from_secs(10)).await,
                "no response head"
            );
        };
        let head = String::from_utf8(c.raw[..split].to_vec()).unwrap();
        c.raw.drain(..split + 4);
        let mut lines = head.split("\r\n");
        c.status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        c.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        c
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads more bytes; false at end of stream.
    async fn read_more(&mut self, deadline: Duration) -> bool {
        let mut buf = [0u8; 16 * 1024];
        let n = tokio::time::timeout(deadline, self.stream.read(&mut buf))
            .await
            .expect("SSE data in time")
            .unwrap_or(0);
        self.raw.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// Moves complete chunks from `raw` to `text`.
    fn dechunk(&mut self) {
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.raw[..eol]).unwrap().trim(), 16)
                    .unwrap();
            if size == 0 {
                self.ended = true;
                return;
            }
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            self.text
                .push_str(std::str::from_utf8(&self.raw[eol + 2..eol + 2 + size]).unwrap());
            self.raw.drain(..eol + 2 + size + 2);
        }
    }

    /// The next event (comments, i.e. keep-alives, skipped) within `deadline`; `None` when
    /// the server ended the stream.
    pub async fn next_event(&mut self, deadline: Duration) -> Option<SseEvent> {
        let start = std::time::Instant::now();
        loop {
            self.dechunk();
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                let mut retry = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    } else if let Some(v) = line.strip_prefix("retry:") {
                        retry = Some(v.trim().parse().unwrap());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(SseEvent {
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                    retry,
                });
            }
            if self.ended {
                return None;
            }
            let left = deadline.saturating_sub(start.elapsed());
            assert!(!left.is_zero(), "no SSE event within {deadline:?}");
            if !self.read_more(left).await {
                return None;
            }
        }
    }

    /// The next event, which must exist.
    pub async fn expect_event(&mut self, deadline: Duration) -> SseEvent {
        self.next_event(deadline)
            .await
            .expect("the SSE stream ended early")
    }
}

/// The ids of a snapshot's kites.
pub fn snapshot_ids(snapshot: &Value) -> Vec<String> {
    snapshot["kites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kite"]["id"].as_str().unwrap().to_owned())
        .collect()
}
