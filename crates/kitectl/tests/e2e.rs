//! End to end with the real binaries: `kontrol` on a temporary data directory and an
//! ephemeral port, `kitectl register` for a kite key, a `math` kite (started by the test)
//! that registers, then `kitectl showkey`, `query`, `tell`, `ping`, `watch` — and the kite
//! vanishing (DEREGISTER) once it stops.
//!
//! The `kontrol` binary is taken from the target directory next to this test
//! (`cargo test --workspace` builds it); when it is missing, the test builds it with
//! `cargo build -p kontrol --bin kontrol`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kite::{Config, Kite, KiteError, Request};
use kite_testkit::paths;
use kite_testkit::process::TestProcess;

const KITECTL: &str = env!("CARGO_BIN_EXE_kitectl");

struct Env {
    _dir: tempfile::TempDir,
    home: PathBuf,
    kite_home: PathBuf,
}

fn kitectl(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new(KITECTL);
    c.args(args)
        .env("HOME", &env.home)
        .env("KITE_HOME", &env.kite_home)
        .env_remove("KITE_KONTROL_URL")
        .env_remove("KITECTL_SECRET")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn math_kite(kite_home: &Path) -> Kite {
    let mut config = Config::load_from(Some(kite_home), &Default::default()).unwrap();
    config.ip = "127.0.0.1".into();
    config.environment = "e2e".into();
    let k = Kite::with_config("math", "1.0.0", config).unwrap();
    k.handle_func("square", |r: Request| async move {
        let a: f64 = r.args().one()?;
        Ok(a * a)
    });
    k.handle_func("fail", |r: Request| async move {
        let m: String = r.args().one()?;
        Err::<(), _>(KiteError::generic(m))
    });
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kontrol_kitectl_and_a_kite() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env {
        home: dir.path().join("home"),
        kite_home: dir.path().join("home/.kite"),
        _dir: dir,
    };
    std::fs::create_dir_all(&env.home).unwrap();
    let kontrol_bin = tokio::task::spawn_blocking(|| paths::binary("kontrol", "kontrol"))
        .await
        .unwrap();

    // Kontrol: temporary data directory, ephemeral port, 1 s heartbeats.
    let mut kontrol = TestProcess::spawn(
        "kontrol",
        Command::new(kontrol_bin)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--machine-secret",
                "s3cret",
                "--heartbeat-interval",
                "1s",
                "--heartbeat-grace",
                "1s",
                "--data-dir",
            ])
            .arg(env.home.join("kontrol-data"))
            .env("HOME", &env.home)
            .env("RUST_LOG", "warn"),
    );
    let url = kontrol
        .line(Duration::from_secs(60), |l| {
            l.starts_with("KITE_KONTROL_URL=")
        })
        .await
        .trim_start_matches("KITE_KONTROL_URL=")
        .to_string();

    // No kite key yet: kitectl says how to get one.
    let out = run(kitectl(&env, &["query", "--name", "math"])).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("kitectl register"),
        "{}",
        text(&out.stderr)
    );

    // A wrong secret, then the right one.
    let out = run(kitectl(
        &env,
        &[
            "register",
            "--kontrol-url",
            &url,
            "--username",
            "alice",
            "--secret",
            "nope",
        ],
    ))
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--secret"),
        "{}",
        text(&out.stderr)
    );
    let out = run(kitectl(
        &env,
        &[
            "register",
            "--kontrol-url",
            &url,
            "--username",
            "alice",
            "--secret",
            "s3cret",
        ],
    ))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(env.kite_home.join("kite.key").exists());
    // Not twice without --force.
    let out = run(kitectl(
        &env,
        &["register", "--kontrol-url", &url, "--username", "alice"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("--force"));

    let out = run(kitectl(&env, &["showkey"])).await;
    assert!(out.status.success());
    let shown = text(&out.stdout);
    assert!(shown.contains("sub:") && shown.contains("alice"), "{shown}");
    assert!(shown.contains(&url), "{shown}");
    let out = run(kitectl(&env, &["showkey", "--json"])).await;
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["kontrolURL"], url.as_str());

    // The math kite registers with the key kitectl obtained.
    let math = math_kite(&env.kite_home);
    math.listen().await.unwrap();
    let math_url = math.url().unwrap();
    math.register(&math_url).await.unwrap();
    let math_id = math.id().to_string();
    let math_kontrol = math.kontrol();
    let handle = math.shutdown_handle();
    tokio::spawn(async move { math.serve().await });

    // query: table and JSON.
    let out = run(kitectl(&env, &["query", "--name", "math"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("USERNAME"), "{table}");
    assert!(
        table.contains(&math_id) && table.contains(&math_url),
        "{table}"
    );
    let out = run(kitectl(&env, &["query", "--name", "math", "--json"])).await;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["kite"]["id"], math_id.as_str());
    assert_eq!(list[0]["url"], math_url.as_str());

    // tell through Kontrol (token) and directly (kite key).
    let out = run(kitectl(&env, &["tell", "--name", "math", "square", "4"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "16");
    let out = run(kitectl(&env, &["tell", "--url", &math_url, "square", "5"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "25");
    // A kite error: exit 1 with its type and message.
    let out = run(kitectl(&env, &["tell", "--name", "math", "fail", "boom"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr).trim(), "genericError: boom");
    let out = run(kitectl(&env, &["tell", "--name", "math", "nosuch"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("methodNotFound: "));
    // ping.
    let out = run(kitectl(&env, &["ping", "--name", "math"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("pong from /alice/e2e/math/"));

    // watch: the kite is present; once it stops heartbeating, DEREGISTER arrives.
    let mut watch = TestProcess::spawn(
        "kitectl watch",
        &mut kitectl(&env, &["watch", "--name", "math", "--json"]),
    );
    let present = watch
        .line(Duration::from_secs(30), |l| l.contains("PRESENT"))
        .await;
    assert!(present.contains(&math_id), "{present}");
    math_kontrol.close().await;
    handle.shutdown();
    let gone = watch
        .line(Duration::from_secs(30), |l| l.contains("DEREGISTER"))
        .await;
    drop(watch);
    let event: serde_json::Value = serde_json::from_str(&gone).unwrap();
    assert_eq!(event["kite"]["id"], math_id.as_str());
    let out = run(kitectl(&env, &["query", "--name", "math", "--json"])).await;
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list, serde_json::json!([]));

    // An unreachable Kontrol: exit 3 and the URL in the message.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/kite", l.local_addr().unwrap())
    };
    let out = run(kitectl(
        &env,
        &["--kontrol-url", &dead, "query", "--name", "math"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains(&dead), "{}", text(&out.stderr));
    drop(kontrol);
}

#[test]
fn completions_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(KITECTL)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("kitectl"));
    }
    let out = Command::new(KITECTL)
        .args(["completions", "nosh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
