//! Kontrol's web page in a real browser: headless Chromium (Debian's /usr/bin/chromium),
//! driven by playwright-core from `interop/kontrol/web_page.js`, against a `kontrol` kite on
//! an embedded store. Kites registered while the page is open appear, grouped, with URL and
//! a ticking age; deregistered ones disappear; markup in kite fields renders as text; after
//! Kontrol restarts (on the same port) the page reconnects and shows the new state, including
//! a removal it could only learn from the new snapshot.
//!
//! Fails when Chromium is not installed (scripts/install-test-deps installs it).
#![allow(clippy::unwrap_used)]

#[allow(unused_macros, unused_imports)]
mod kontrol_common;
#[allow(unused_macros, unused_imports)]
mod support;
#[allow(unused_imports)]
mod web_common;

use std::process::Stdio;
use std::time::Duration;

use kite_protocol::Kite;
use kontrol::storage::Registration;
use kontrol_common::kite;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use web_common::*;

/// The Node driver, spoken to one JSON line at a time.
struct Driver {
    _child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Driver {
    fn spawn() -> Driver {
        kite_testkit::peers::node_module("playwright-core");
        let interop = kite_testkit::paths::interop_dir();
        let mut child = Command::new("node")
            .arg(interop.join("kontrol/web_page.js"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("run node");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Driver {
            _child: child,
            stdin,
            lines,
        }
    }

    /// Sends a command and returns its answer, which must be `ok`.
    async fn run(&mut self, cmd: Value) -> Value {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no answer to {cmd} in time"))
            .unwrap()
            .unwrap_or_else(|| panic!("the driver ended before answering {cmd}"));
        let answer: Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("bad driver output {answer:?}: {e}"));
        assert_eq!(answer["ok"], true, "{cmd} failed: {answer:#}");
        answer
    }
}

fn rows(state: &Value) -> &Vec<Value> {
    state["rows"].as_array().unwrap()
}

fn row<'a>(state: &'a Value, id: &str) -> &'a Value {
    rows(state)
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no row for {id} in {state:#}"))
}

fn has_row(state: &Value, id: &str) -> bool {
    rows(state).iter().any(|r| r["id"] == id)
}

/// The row shows the kite: the four group levels, the three row fields, the URL.
fn assert_row(state: &Value, k: &Kite, url: &str) {
    let r = row(state, &k.id);
    assert_eq!(
        r["groups"],
        json!([k.username, k.environment, k.name, k.version]),
        "{r:#}"
    );
    assert_eq!(r["cells"]["region"], k.region.as_str(), "{r:#}");
    assert_eq!(r["cells"]["hostname"], k.hostname.as_str(), "{r:#}");
    assert_eq!(r["cells"]["id"], k.id.as_str(), "{r:#}");
    assert_eq!(r["cells"]["url"], url, "{r:#}");
    let age = r["cells"]["age"].as_str().unwrap();
    assert!(age.ends_with('s') || age.ends_with('m'), "age {age:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_shows_kites_live_in_chromium() {
    kite_testkit::peers::require_chromium();
    // Registrations live a minute without heartbeats; removals are explicit.
    let long_lived = |c: &mut kontrol::KontrolConfig| {
        c.heartbeat_grace = Duration::from_secs(60);
    };
    let server = start_with(long_lived, |_| {}).await;
    let kontrol = server.kontrol().clone();
    let self_id = kontrol.identity().id.clone();

    let math = kite("alice", "math");
    let math_url = "http://127.0.0.1:7001/kite";
    register(&kontrol, &math, math_url).await;

    let mut driver = Driver::spawn();
    let opened = driver
        .run(json!({"cmd": "open", "url": format!("{}/", server.origin)}))
        .await;
    let state = &opened["state"];
    assert_eq!(state["status"]["state"], "live", "{state:#}");
    assert_row(state, &math, math_url);
    assert!(
        has_row(state, &self_id),
        "Kontrol itself is listed: {state:#}"
    );
    assert_eq!(rows(state).len(), 2, "{state:#}");

    // Registered while the page is open: shown without reload, in its groups.
    let weather = Kite {
        version: "2.1.0".into(),
        ..kite("alice", "weather")
    };
    let weather_url = "ws://10.0.0.7:4444/kite";
    register(&kontrol, &weather, weather_url).await;
    let state = driver
        .run(json!({"cmd": "waitRow", "id": weather.id, "present": true}))
        .await["state"]
        .clone();
    assert_row(&state, &weather, weather_url);
    assert_eq!(state["counts"]["alice"], "2 kites", "{state:#}");
    assert_eq!(state["counts"]["alice/prod/weather/2.1.0"], "1 kite");
    assert_eq!(state["status"]["text"], "live — 3 kites");
    assert_eq!(state["title"], "Kontrol — 3 kites");

    // Markup in kite-provided strings is text.
    let markup = Kite {
        name: "<script>".into(),
        hostname: "<img src=x onerror=window.pwned=1>".into(),
        region: "<b>bold".into(),
        ..kite("bob", "unused")
    };
    let markup_url = "http://127.0.0.1:7002/<i>x</i>?q=<script>alert(1)</script>";
    register(&kontrol, &markup, markup_url).await;
    let state = driver
        .run(json!({"cmd": "waitRow", "id": markup.id, "present": true}))
        .await["state"]
        .clone();
    assert_row(&state, &markup, markup_url);
    assert!(
        state["listText"]
            .as_str()
            .unwrap()
            .contains("<img src=x onerror=window.pwned=1>"),
        "{state:#}"
    );
    assert_eq!(
        state["elementsInList"],
        json!(["details", "span", "summary", "table", "tbody", "td", "th", "thead", "tr"]),
        "only the page's own elements: {state:#}"
    );
    assert_eq!(state["pwned"], "undefined");
    assert_eq!(state["scripts"], 1, "only /web/app.js");

    // Ages tick in the browser, without server events.
    let ages = driver
        .run(json!({"cmd": "waitAgeChange", "id": math.id}))
        .await;
    assert_ne!(ages["before"], ages["after"], "{ages}");

    // The filter narrows the rows (and markup in it is harmless too).
    let state = driver
        .run(json!({"cmd": "filter", "text": "<SCRIPT>"}))
        .await["state"]
        .clone();
    let ids: Vec<&str> = rows(&state)
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [markup.id.as_str()], "{state:#}");
    assert_eq!(state["status"]["text"], "live — 4 kites (1 shown)");
    let state = driver.run(json!({"cmd": "filter", "text": ""})).await["state"].clone();
    assert_eq!(rows(&state).len(), 4);

    let shot = std::env::temp_dir().join(format!("kontrol-web-page-{}.png", std::process::id()));
    driver
        .run(json!({"cmd": "screenshot", "path": shot.to_str().unwrap()}))
        .await;
    eprintln!("screenshot: {}", shot.display());

    // Deregistered: gone, and empty groups with it.
    kontrol.deregister(&math.id).await.unwrap();
    let state = driver
        .run(json!({"cmd": "waitRow", "id": math.id, "present": false}))
        .await["state"]
        .clone();
    assert!(
        state["counts"].get("alice/prod/math").is_none(),
        "{state:#}"
    );
    assert_eq!(state["counts"]["alice"], "1 kite");
    assert_row(&state, &weather, weather_url);

    // Kontrol goes away: the page notices and keeps the last known list.
    let port = server.addr.port();
    drop(kontrol); // the store is released once the last handle on Kontrol is gone
    let env = server.stop().await;
    let state = driver
        .run(json!({"cmd": "waitStatus", "state": "live", "not": true}))
        .await["state"]
        .clone();
    assert!(has_row(&state, &weather.id), "{state:#}");

    // While it is down, `weather` is removed and `tide` registered directly in the store:
    // the page can only learn both from the snapshot it gets when it reconnects.
    {
        let storage = env.connect().await;
        assert!(storage.delete(&weather.id).await.unwrap());
        let tide = kite("carol", "tide");
        storage
            .upsert(
                &Registration {
                    kite: tide.clone(),
                    url: "https://tide.example.com/kite".into(),
                    key_id: "some-key".into(),
                },
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        storage.close().await.unwrap();
        let server = start_in(env, port, long_lived).await;
        let state = driver
            .run(json!({"cmd": "waitRow", "id": tide.id, "present": true}))
            .await["state"]
            .clone();
        let state = if has_row(&state, &weather.id) {
            driver
                .run(json!({"cmd": "waitRow", "id": weather.id, "present": false}))
                .await["state"]
                .clone()
        } else {
            state
        };
        assert_eq!(state["status"]["state"], "live", "{state:#}");
        assert_row(&state, &tide, "https://tide.example.com/kite");
        assert!(!has_row(&state, &weather.id), "{state:#}");
        assert!(
            !has_row(&state, &self_id),
            "the old Kontrol deregistered itself"
        );
        assert!(has_row(&state, &server.kontrol().identity().id));

        // And it is live again.
        let again = kite("alice", "again");
        register(server.kontrol(), &again, math_url).await;
        driver
            .run(json!({"cmd": "waitRow", "id": again.id, "present": true}))
            .await;

        let closed = driver.run(json!({"cmd": "close"})).await;
        assert_eq!(closed["pageErrors"], json!([]), "{closed:#}");
        server.stop().await;
    }
}
