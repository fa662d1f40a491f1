//! kite.js 1.0.13's Kontrol helper (in Node) against the Rust `kontrol` kite: `register`
//! with a bare URL string (Q16) answered by kite.js's own `kite.heartbeat` pings,
//! `watchKites` with `watchHandler`/`watcherID`/`cancelWatcher` (Q22), `fetchKites`.
#![allow(clippy::unwrap_used)]

#[allow(unused_macros, unused_imports)]
mod kontrol_common;
#[allow(unused_macros, unused_imports)]
mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use kontrol::kite_service::KontrolKite;
use kontrol_common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const SCRIPT: &str = r#"
'use strict'
const [modules, base, key, kiteUrl] = process.argv.slice(2)
const { Kite, Kontrol } = require(modules + '/kite.js')
const out = (o) => console.log(JSON.stringify(o))
const timer = setTimeout(() => { console.error('timed out'); process.exit(1) }, 60000)
const kontrol = new Kontrol({
  url: base,
  auth: { type: 'kiteKey', key },
  name: 'jskite', username: 'alice', environment: 'js', region: 'node', hostname: 'node',
  transportClass: Kite.transport.SockJS,
  transportOptions: { transports: ['websocket'] },
  autoReconnect: false, logLevel: 0,
})
async function main() {
  out({ register: await kontrol.register(kiteUrl) })
  const { changes, watcherID } = await kontrol.watchKites({ query: { username: 'alice', name: 'math' } })
  let seen = 0
  const done = new Promise((resolve) => {
    const on = (action) => (k) => {
      out({ event: action, url: k.options.url, token: k.options.auth && k.options.auth.key })
      if (++seen === 2) resolve()
    }
    changes.on('register', on('register'))
    changes.on('deregister', on('deregister'))
    changes.on('error', (e) => out({ watchError: String(e && e.message) }))
  })
  out({ watching: watcherID })
  await done
  await kontrol.cancelWatcher(watcherID)
  out({ cancelled: true })
  // Outlive the registration's TTL on kite.js's own heartbeats, then look ourselves up.
  await new Promise((r) => setTimeout(r, 3000))
  const kites = await kontrol.fetchKites({ query: { username: 'alice', name: 'jskite' } })
  out({ fetched: kites.map((k) => k.options.url) })
  clearTimeout(timer)
  process.exit(0)
}
main().catch((e) => { console.error('failed:', e && (e.stack || e.message || e)); process.exit(1) })
"#;

/// The next JSON line the script printed.
async fn next(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("node output in time")
        .unwrap()
        .expect("node ended early");
    serde_json::from_str(&line).unwrap()
}

fn node_modules() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop/node_modules")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kitejs_kontrol_helper() {
    let modules = node_modules();
    assert!(
        modules.join("kite.js").exists(),
        "kite.js is not installed in {}",
        modules.display()
    );
    let env = support::embedded_env().await;
    let storage = Arc::new(env.connect().await);
    let mut kontrol_kite = KontrolKite::new_kite("0.0.1").unwrap();
    kontrol_kite.config.ip = "127.0.0.1".into();
    kontrol_kite.config.port = 0;
    let mut config = test_config();
    config.kontrol_url = String::new();
    let server = Arc::new(
        KontrolKite::start(kontrol_kite, config, storage)
            .await
            .unwrap(),
    );
    let base = server.url().unwrap();
    let s = Arc::clone(&server);
    tokio::spawn(async move { s.serve().await });
    let kontrol = server.kontrol().clone();
    let ttl = kontrol.config().record_ttl();

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("kontrol_client.js");
    std::fs::write(&script, SCRIPT).unwrap();
    let js_url = "http://127.0.0.1:9999/jskite";
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .arg(modules.canonicalize().unwrap())
        .arg(&base)
        .arg(key_for(&kontrol, "alice"))
        .arg(js_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    // register with a bare string: heartbeatInterval 0 (the interval comes with
    // kite.heartbeat, Q8).
    assert_eq!(
        next(&mut lines).await,
        json!({"register": {"url": js_url, "heartbeatInterval": 0}})
    );
    let watching = next(&mut lines).await;
    assert!(watching["watching"].is_string(), "{watching}");

    // A math kite comes and goes; kite.js sees both.
    let math = kite("alice", "math");
    let key = key_for(&kontrol, "alice");
    kontrol
        .register(
            &math,
            Some(&kite_key_auth(&key)),
            Some(&json!("http://127.0.0.1:7777/kite")),
        )
        .await
        .unwrap();
    let ev = next(&mut lines).await;
    assert_eq!(ev["event"], "register", "{ev}");
    assert_eq!(ev["url"], "http://127.0.0.1:7777/kite");
    let token = ev["token"].as_str().unwrap();
    assert_eq!(
        verifier(&kontrol)
            .authenticate("token", token, &math)
            .await
            .unwrap()
            .username,
        "alice"
    );
    kontrol.deregister(&math.id).await.unwrap();
    let ev = next(&mut lines).await;
    assert_eq!(ev["event"], "deregister", "{ev}");
    assert_eq!(next(&mut lines).await, json!({"cancelled": true}));
    assert_eq!(next(&mut lines).await, json!({"fetched": [js_url]}));
    assert!(child.wait().await.unwrap().success());
    assert_eq!(kontrol.watcher_count(), 0);

    // kite.js is gone: its registration expires.
    let q = kite_protocol::KontrolQuery {
        username: "alice".into(),
        name: "jskite".into(),
        ..Default::default()
    };
    wait_for(
        "the kite.js registration to expire",
        ttl + Duration::from_secs(3),
        || async {
            kontrol
                .get_kites(&q, "bob")
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    server.shutdown().await;
}
