//! kite.key files (PROTOCOL.md 6.3) and the configuration load (7), with real files in
//! temporary directories and an injected environment.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use kite::auth::{issue_kite_key, sign_claims, Authenticator, Claims, KeyPair, DEFAULT_TOKEN_TTL};
use kite::config::{Config, ConfigError, Transport, DEFAULT_TIMEOUT};
use kite::kitekey::{self, KiteKey, KiteKeyError};
use kite_protocol::Kite;

const URL: &str = "http://kontrol.example.com:4000/kite";

fn kontrol() -> &'static KeyPair {
    static PAIR: OnceLock<KeyPair> = OnceLock::new();
    PAIR.get_or_init(|| KeyPair::generate(2048).unwrap())
}

fn fresh_kite_key(username: &str) -> String {
    issue_kite_key(kontrol(), "kontrol", username, URL, SystemTime::now()).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn write_read_round_trip_with_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("nested").join(".kite");
    let key = fresh_kite_key("devrim");
    kitekey::write(&home, &key).unwrap();
    let path = kitekey::kite_key_path(&home);
    assert_eq!(path, home.join("kite.key"));
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&path), 0o400);
    assert_eq!(fs::read_to_string(&path).unwrap(), key);
    assert_eq!(kitekey::read(&home).unwrap(), key);

    // Overwriting a read-only key works (the old file is deleted first).
    let newer = fresh_kite_key("devrim2");
    kitekey::write(&home, &newer).unwrap();
    assert_eq!(mode(&path), 0o400);
    let loaded = KiteKey::load(&home, SystemTime::now()).unwrap();
    assert_eq!(loaded.raw, newer);
    assert_eq!(loaded.username(), "devrim2");

    // An existing directory keeps its mode.
    let open_dir = tmp.path().join("open");
    fs::create_dir(&open_dir).unwrap();
    fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o755)).unwrap();
    kitekey::write_file(&open_dir.join("other.key"), &key).unwrap();
    assert_eq!(mode(&open_dir), 0o755);
    assert_eq!(mode(&open_dir.join("other.key")), 0o400);
}

#[test]
fn read_trims_whitespace() {
    let tmp = tempfile::tempdir().unwrap();
    let key = fresh_kite_key("devrim");
    let path = tmp.path().join("kite.key");
    fs::write(&path, format!("\n  {key}\r\n\n")).unwrap();
    assert_eq!(kitekey::read_file(&path).unwrap(), key);
    assert_eq!(
        KiteKey::load_file(&path, SystemTime::now()).unwrap().raw,
        key
    );
}

#[test]
fn parse_checks_consistency_and_time() {
    let now = SystemTime::now();
    let key = fresh_kite_key("devrim");
    let parsed = KiteKey::parse(&key, now).unwrap();
    assert_eq!(parsed.kontrol_key(), kontrol().public_pem());
    assert_eq!(parsed.kontrol_user(), "kontrol");
    assert_eq!(parsed.kontrol_url(), URL);
    assert_eq!(parsed.id().len(), 36);

    // Tampered payload: the signature no longer matches its own kontrolKey.
    let parts: Vec<&str> = key.split('.').collect();
    let mut claims = parsed.claims.clone();
    claims.sub = Some("mallory".into());
    let payload = <base64ct::Base64UrlUnpadded as base64ct::Encoding>::encode_string(
        claims.to_json().as_bytes(),
    );
    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    let err = KiteKey::parse(&tampered, now).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid kite key: crypto/rsa: verification error"
    );

    // Not usable before its iat (minus tolerance).
    let before = now - Duration::from_secs(3600);
    assert_eq!(
        KiteKey::parse(&key, before).unwrap_err().to_string(),
        "invalid kite key: Token used before issued"
    );

    // Expired keys (Kontrol never sets exp, but Go checks it).
    let expired = Claims {
        exp: Some(1),
        ..parsed.claims.clone()
    };
    let expired = sign_claims(kontrol(), &expired).unwrap();
    assert!(KiteKey::parse(&expired, now)
        .unwrap_err()
        .to_string()
        .starts_with("invalid kite key: token is expired by "));

    // Missing kontrolKey, garbage.
    let bare = Claims {
        kontrol_key: None,
        ..parsed.claims.clone()
    };
    let bare = sign_claims(kontrol(), &bare).unwrap();
    assert_eq!(
        KiteKey::parse(&bare, now).unwrap_err().to_string(),
        "invalid kite key: no kontrol key found"
    );
    assert!(matches!(
        KiteKey::parse("garbage", now),
        Err(KiteKeyError::Invalid(_))
    ));
}

#[test]
fn missing_file_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = KiteKey::load(tmp.path(), SystemTime::now()).unwrap_err();
    assert!(matches!(err, KiteKeyError::Read { .. }), "{err}");
    assert!(err.to_string().contains("kite.key"));
    let err = Config::load_from(Some(tmp.path()), &HashMap::new()).unwrap_err();
    assert!(
        matches!(err, ConfigError::KiteKey(KiteKeyError::Read { .. })),
        "{err}"
    );
}

#[test]
fn kite_home_resolution() {
    assert_eq!(
        kitekey::kite_home_from(&env(&[("KITE_HOME", "/x/y"), ("HOME", "/home/u")])).unwrap(),
        Path::new("/x/y")
    );
    assert_eq!(
        kitekey::kite_home_from(&env(&[("KITE_HOME", ""), ("HOME", "/home/u")])).unwrap(),
        Path::new("/home/u/.kite")
    );
    assert!(matches!(
        kitekey::kite_home_from(&HashMap::new()),
        Err(KiteKeyError::NoHome)
    ));
}

#[test]
fn defaults_only() {
    let c = Config::default();
    assert_eq!(c.username, "unknown");
    assert_eq!(c.environment, "unknown");
    assert_eq!(c.region, "unknown");
    assert_eq!(c.ip, "0.0.0.0");
    assert_eq!(c.port, 0);
    assert_eq!(c.transport, Transport::Auto);
    assert_eq!(c.timeout, Duration::from_secs(15));
    assert_eq!(c.timeout, DEFAULT_TIMEOUT);
    assert_eq!(c.handshake_timeout, Duration::from_secs(15));
    assert_eq!(c.verify_ttl, Duration::from_secs(300));
    assert!(c.kite_key.is_empty() && c.kontrol_key.is_empty() && c.kontrol_user.is_empty());
    assert!(c.kontrol_url.is_empty() && c.id.is_empty());
    assert!(!c.disable_authentication);
}

#[test]
fn full_load_precedence() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("kh");
    let key = fresh_kite_key("devrim");
    kitekey::write(&home, &key).unwrap();

    // kite.key only.
    let c = Config::load_from(Some(&home), &HashMap::new()).unwrap();
    assert_eq!(c.kite_key, key);
    assert_eq!(c.username, "devrim");
    assert_eq!(c.kontrol_user, "kontrol");
    assert_eq!(c.kontrol_url, URL);
    assert_eq!(c.kontrol_key, kontrol().public_pem());
    assert_eq!(c.id, Claims::decode_unverified(&key).unwrap().jti.unwrap());
    assert_eq!(c.environment, "unknown");

    // Environment overrides kite.key and defaults; KITE_HOME locates the key.
    let vars = env(&[
        ("KITE_HOME", home.to_str().unwrap()),
        ("KITE_USERNAME", "override"),
        ("KITE_ENVIRONMENT", "production"),
        ("KITE_REGION", "eu-west"),
        ("KITE_TRANSPORT", "WebSocket"),
        ("KITE_IP", "127.0.0.1"),
        ("KITE_PORT", "4000"),
        ("KITE_KONTROL_URL", "http://other:4000/kite"),
        ("KITE_VERIFY_TTL", "1m"),
        ("KITE_TIMEOUT", "1h2m3.5s"),
        ("KITE_HANDSHAKE_TIMEOUT", "300ms"),
    ]);
    let c = Config::load_from(None, &vars).unwrap();
    assert_eq!(c.username, "override");
    assert_eq!(c.kontrol_user, "kontrol");
    assert_eq!(c.environment, "production");
    assert_eq!(c.region, "eu-west");
    assert_eq!(c.transport, Transport::WebSocket);
    assert_eq!(c.ip, "127.0.0.1");
    assert_eq!(c.port, 4000);
    assert_eq!(c.kontrol_url, "http://other:4000/kite");
    assert_eq!(c.verify_ttl, Duration::from_secs(60));
    assert_eq!(c.timeout, Duration::from_millis(3_723_500));
    assert_eq!(c.handshake_timeout, Duration::from_millis(300));

    // Explicit kite home wins over KITE_HOME; empty values are ignored.
    let vars = env(&[("KITE_HOME", "/nonexistent"), ("KITE_USERNAME", "")]);
    let c = Config::load_from(Some(&home), &vars).unwrap();
    assert_eq!(c.username, "devrim");

    // The loaded configuration drives an authenticator that trusts this Kontrol.
    let auth = Authenticator::from_config(&c).unwrap();
    let me = Kite {
        username: "devrim".into(),
        ..Kite::default()
    };
    let token = kite::auth::issue_token(
        kontrol(),
        "/devrim",
        "alice",
        "kontrol",
        DEFAULT_TOKEN_TTL,
        SystemTime::now(),
        true,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let who = rt
        .block_on(auth.authenticate("token", &token, &me))
        .unwrap();
    assert_eq!(who.username, "alice");
    let who = rt
        .block_on(auth.authenticate("kiteKey", &key, &me))
        .unwrap();
    assert_eq!(who.username, "devrim");
}

#[test]
fn environment_errors_and_ignored_values() {
    let mut c = Config::default();
    for (value, want) in [
        ("auto", Transport::Auto),
        ("WebSocket", Transport::WebSocket),
        ("XHRPolling", Transport::XhrPolling),
    ] {
        c.apply_env(&env(&[("KITE_TRANSPORT", value)])).unwrap();
        assert_eq!(c.transport, want);
        assert_eq!(want.to_string(), value);
    }
    for bad in ["websocket", "Auto", "xhr", "WebSocket "] {
        let err = c.apply_env(&env(&[("KITE_TRANSPORT", bad)])).unwrap_err();
        assert_eq!(err.to_string(), format!("transport '{bad}' doesn't exists"));
    }
    for bad in ["abc", "-1", "70000", "4000.0", " 4000"] {
        let err = c.apply_env(&env(&[("KITE_PORT", bad)])).unwrap_err();
        assert!(
            matches!(err, ConfigError::InvalidPort { .. }),
            "{bad}: {err}"
        );
    }

    // Invalid durations are silently ignored (Go); 0 TTL means the default, negative "no cache".
    let mut c = Config::default();
    c.apply_env(&env(&[
        ("KITE_VERIFY_TTL", "soon"),
        ("KITE_TIMEOUT", "15"),
        ("KITE_HANDSHAKE_TIMEOUT", "-1s"),
    ]))
    .unwrap();
    assert_eq!(c, Config::default());
    c.apply_env(&env(&[("KITE_VERIFY_TTL", "-1s")])).unwrap();
    assert_eq!(c.verify_ttl, Duration::ZERO);
    c.apply_env(&env(&[("KITE_VERIFY_TTL", "0")])).unwrap();
    assert_eq!(c.verify_ttl, Duration::from_secs(300));
}

#[test]
fn kite_key_from_go_kontrol_loads() {
    // Go Kontrol writes the bare JWT; our loader accepts one with a trailing newline too.
    let tmp = tempfile::tempdir().unwrap();
    let key = fresh_kite_key("bob");
    fs::write(tmp.path().join("kite.key"), format!("{key}\n")).unwrap();
    let c = Config::load_from(Some(tmp.path()), &HashMap::new()).unwrap();
    assert_eq!(c.kite_key, key);
}
