//! A connection reuses its last successful authentication for later requests with the
//! same credential (`Authenticate::reuse_for`), and must stay exactly as strict as
//! verifying every request: these tests change, on a live connection over real sockets,
//! everything a reused success depends on and check that the next request sees it.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use kite::auth::{
    issue_kite_key, issue_token, sign_claims, token_claims, trust_fn, unix_seconds, verifier_fn,
    AuthSettings, Authenticator, Claims, KeyPair, Validity, VerifyError, DEFAULT_TOKEN_TTL,
};
use kite::protocol::Kite as KiteIdentity;
use kite::{Auth, Client, Config, Kite, KiteError, Request, Transport};

const KONTROL_URL: &str = "http://127.0.0.1:1/kite";

fn kontrol() -> &'static KeyPair {
    static K: OnceLock<KeyPair> = OnceLock::new();
    K.get_or_init(|| KeyPair::generate(1024).unwrap())
}

fn stranger() -> &'static KeyPair {
    static K: OnceLock<KeyPair> = OnceLock::new();
    K.get_or_init(|| KeyPair::generate(1024).unwrap())
}

/// A `math` kite of user `alice` trusting `kontrol()`, without clock-skew tolerance (so
/// that a token expires the second after its `exp`), with `whoami` returning the
/// authenticated username.
fn server() -> Kite {
    let config = Config {
        username: "alice".into(),
        environment: "production".into(),
        kontrol_user: "kontrol".into(),
        kontrol_key: kontrol().public_pem().to_string(),
        clock_skew: Duration::ZERO,
        ..Config::default()
    };
    let k = Kite::with_config("math", "1.0.0", config).unwrap();
    math_methods(&k);
    k.handle_func("whoami", |r: Request| async move {
        Ok(r.username().to_string())
    });
    k
}

/// Serves `k` on 127.0.0.1 through its router, so that the test keeps the `Kite` (and
/// can change its configuration while it serves).
async fn serve_router(k: &Kite) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/kite", listener.local_addr().unwrap());
    let router = k.router();
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (url, task)
}

async fn dial(url: &str, auth: Auth) -> (Kite, Client) {
    let k = client_kite(Transport::WebSocket);
    let c = k.new_client(url);
    c.dial().await.unwrap();
    c.set_auth(Some(auth));
    (k, c)
}

async fn whoami(c: &Client) -> Result<String, KiteError> {
    c.tell("whoami", &())
        .await
        .map(|r| r.as_str().unwrap_or_default().to_string())
}

fn token(aud: &str, sub: &str) -> String {
    issue_token(
        kontrol(),
        aud,
        sub,
        "kontrol",
        DEFAULT_TOKEN_TTL,
        SystemTime::now(),
        true,
    )
    .unwrap()
}

/// A token for `/alice` valid from `from` (`iat` = `nbf`) to `from` + `ttl`, no leeway.
fn short_token(from: SystemTime, ttl: Duration) -> (String, Claims) {
    let claims = token_claims("/alice", "bob", "kontrol", ttl, from, Duration::ZERO, true);
    (sign_claims(kontrol(), &claims).unwrap(), claims)
}

/// Waits (polling the clock) until its whole second is past `secs`.
async fn wait_past(secs: i64) {
    assert!(
        eventually(Duration::from_secs(10), || unix_seconds(SystemTime::now())
            > secs)
        .await,
        "the clock did not pass {secs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_token_expires_with_the_token() {
    let k = server();
    let (url, task) = serve_router(&k).await;
    let (token, claims) = short_token(SystemTime::now(), Duration::from_secs(3));
    let exp = claims.exp.unwrap();
    let (_ck, c) = dial(&url, Auth::token(token)).await;
    for _ in 0..5 {
        assert_eq!(whoami(&c).await.unwrap(), "bob");
    }
    assert!(
        unix_seconds(SystemTime::now()) <= exp,
        "the machine was too slow to call before the token expired"
    );
    wait_past(exp).await;
    let e = whoami(&c).await.unwrap_err();
    assert_eq!(e.kind, "authenticationError");
    assert!(e.message.starts_with("token: token is expired by"), "{e}");
    // Still rejected on the next requests (nothing was re-memorised).
    assert!(whoami(&c).await.is_err());
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_yet_valid_token_is_accepted_from_its_not_before() {
    let k = server();
    let (url, task) = serve_router(&k).await;
    let from = SystemTime::now() + Duration::from_secs(1);
    let (token, claims) = short_token(from, DEFAULT_TOKEN_TTL);
    let (_ck, c) = dial(&url, Auth::token(token)).await;
    let nbf = claims.nbf.unwrap();
    if unix_seconds(SystemTime::now()) < nbf {
        let e = whoami(&c).await.unwrap_err();
        assert_eq!(e.message, "token: token is not valid yet");
    }
    wait_past(nbf - 1).await;
    assert_eq!(whoami(&c).await.unwrap(), "bob");
    assert_eq!(whoami(&c).await.unwrap(), "bob");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kontrol_key_and_user_changes_reverify() {
    let k = server();
    let auth = k.authenticator();
    let (url, task) = serve_router(&k).await;
    let (_ck, c) = dial(&url, Auth::token(token("/alice/production/math", "bob"))).await;
    for _ in 0..3 {
        assert_eq!(whoami(&c).await.unwrap(), "bob");
    }

    // Another Kontrol key: the token no longer verifies.
    auth.set_kontrol_key(stranger().public_pem()).unwrap();
    let e = whoami(&c).await.unwrap_err();
    assert_eq!(e.message, "token: token is expired");
    auth.set_kontrol_key(kontrol().public_pem()).unwrap();
    assert_eq!(whoami(&c).await.unwrap(), "bob");

    // Another Kontrol user: the issuer is no longer trusted.
    auth.set_kontrol_user("kontrol2");
    let e = whoami(&c).await.unwrap_err();
    assert_eq!(e.message, "token: issuer is not trusted: kontrol");
    auth.set_kontrol_user("kontrol");
    assert_eq!(whoami(&c).await.unwrap(), "bob");

    // Clearing the caches makes the next request verify again (and fill the cache).
    auth.clear_caches();
    assert_eq!(auth.cache_stats().tokens, 0);
    assert_eq!(whoami(&c).await.unwrap(), "bob");
    assert_eq!(auth.cache_stats().tokens, 1);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kite_key_follows_kontrol_key_changes() {
    let k = server();
    let auth = k.authenticator();
    let (url, task) = serve_router(&k).await;
    let key = issue_kite_key(
        kontrol(),
        "kontrol",
        "carol",
        KONTROL_URL,
        SystemTime::now(),
    )
    .unwrap();
    let (_ck, c) = dial(&url, Auth::kite_key(key)).await;
    for _ in 0..3 {
        assert_eq!(whoami(&c).await.unwrap(), "carol");
    }
    auth.set_kontrol_key(stranger().public_pem()).unwrap();
    let e = whoami(&c).await.unwrap_err();
    assert_eq!(e.message, "kiteKey: kontrol key is not trusted");
    auth.set_kontrol_key(kontrol().public_pem()).unwrap();
    assert_eq!(whoami(&c).await.unwrap(), "carol");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_or_removing_a_verifier_takes_over() {
    let k = server();
    let auth = k.authenticator();
    let (url, task) = serve_router(&k).await;
    let (_ck, c) = dial(&url, Auth::token(token("/alice", "bob"))).await;
    assert_eq!(whoami(&c).await.unwrap(), "bob");
    assert_eq!(whoami(&c).await.unwrap(), "bob");

    auth.register(
        "token",
        verifier_fn(|_, _| Err(VerifyError::Other("revoked".into()))),
    );
    let e = whoami(&c).await.unwrap_err();
    assert_eq!(e.message, "token: revoked");
    auth.unregister("token");
    let e = whoami(&c).await.unwrap_err();
    assert_eq!(e.message, "Unknown authentication type: token");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_identity_change_reverifies_the_audience() {
    let mut k = server();
    let (url, task) = serve_router(&k).await;
    let (_ck, c) = dial(&url, Auth::token(token("/alice/production", "bob"))).await;
    assert_eq!(whoami(&c).await.unwrap(), "bob");
    assert_eq!(whoami(&c).await.unwrap(), "bob");

    // The kite's environment changes (pushed into the running kite by `new_client`).
    k.config.environment = "staging".into();
    let _ = k.new_client("http://127.0.0.1:1/kite");
    let e = whoami(&c).await.unwrap_err();
    assert_eq!(
        e.message,
        "token: audience: environment \"production\" not allowed (/alice/production)"
    );
    k.config.environment = "production".into();
    let _ = k.new_client("http://127.0.0.1:1/kite");
    assert_eq!(whoami(&c).await.unwrap(), "bob");
    task.abort();
}

/// Forged variants of a token accepted on the same connection are never accepted, also
/// when they alternate with the genuine one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_never_accepted() {
    let k = server();
    let (url, task) = serve_router(&k).await;
    let genuine = token("/alice", "bob");
    let (_ck, c) = dial(&url, Auth::token(genuine.clone())).await;
    assert_eq!(whoami(&c).await.unwrap(), "bob");

    let (head, rest) = genuine.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let mut claims = Claims::decode_unverified(&genuine).unwrap();
    claims.sub = Some("mallory".into());
    let other_payload = sign_claims(stranger(), &claims).unwrap();
    let payload = other_payload.split('.').nth(1).unwrap();
    // Genuine signature over another payload.
    let swapped = format!("{head}.{payload}.{signature}");
    // Genuine payload, one character in the middle of the signature changed.
    let mut bytes = genuine.clone().into_bytes();
    let middle = genuine.len() - signature.len() / 2;
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(bytes).unwrap();
    // Genuine token with a byte appended, and signed by someone else.
    let longer = format!("{genuine}A");
    let foreign = other_payload;

    for forged in [swapped, flipped, longer, foreign] {
        c.set_auth(Some(Auth::token(forged.clone())));
        assert!(whoami(&c).await.is_err(), "accepted {forged}");
        assert!(
            whoami(&c).await.is_err(),
            "accepted {forged} the second time"
        );
        c.set_auth(Some(Auth::token(genuine.clone())));
        assert_eq!(whoami(&c).await.unwrap(), "bob");
        c.set_auth(Some(Auth::token(forged.clone())));
        assert!(
            whoami(&c).await.is_err(),
            "accepted {forged} after the genuine one"
        );
    }
    // Another credential type with the same key is not the same credential.
    c.set_auth(Some(Auth::kite_key(genuine.clone())));
    assert!(whoami(&c).await.is_err());
    task.abort();
}

/// A user authenticator that counts its calls; it allows reuse only when given a window.
#[derive(Clone, Default)]
struct Counting {
    calls: Arc<AtomicUsize>,
    epoch: Arc<AtomicU64>,
    reuse: Option<Validity>,
    username: &'static str,
}

impl kite::Authenticate for Counting {
    fn authenticate<'a>(
        &'a self,
        auth: &'a Auth,
        _local: &'a KiteIdentity,
    ) -> kite::handler::AuthFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let result = if auth.key == "good" {
            Ok(self.username.to_string())
        } else {
            Err(KiteError::authentication("bad key"))
        };
        Box::pin(std::future::ready(result))
    }

    fn reuse_for(&self, _auth: &Auth, _local: &KiteIdentity) -> Option<Validity> {
        self.reuse
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

impl Counting {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_authenticators_are_called_every_time_unless_they_opt_in() {
    let k = server();
    let (url, task) = serve_router(&k).await;

    // Default trait behaviour: every request is authenticated.
    let plain = Counting {
        username: "plain",
        ..Counting::default()
    };
    k.set_authenticator(plain.clone());
    let (_ck, c) = dial(&url, Auth::new("custom", "good")).await;
    for n in 1..=5 {
        assert_eq!(whoami(&c).await.unwrap(), "plain");
        assert_eq!(plain.calls(), n);
    }

    // Replacing the authenticator: the new one decides from the next request on.
    let reusing = Counting {
        reuse: Some(Validity::ALWAYS),
        username: "reusing",
        ..Counting::default()
    };
    k.set_authenticator(reusing.clone());
    for _ in 0..5 {
        assert_eq!(whoami(&c).await.unwrap(), "reusing");
    }
    assert_eq!(
        reusing.calls(),
        1,
        "a success it allowed to reuse is reused"
    );
    assert_eq!(plain.calls(), 5);

    // Its epoch moves on: asked again.
    reusing.epoch.fetch_add(1, Ordering::SeqCst);
    assert_eq!(whoami(&c).await.unwrap(), "reusing");
    assert_eq!(whoami(&c).await.unwrap(), "reusing");
    assert_eq!(reusing.calls(), 2);

    // Another credential on the connection: asked (and a failure is never reused).
    c.set_auth(Some(Auth::new("custom", "bad")));
    assert!(whoami(&c).await.is_err());
    assert!(whoami(&c).await.is_err());
    assert_eq!(reusing.calls(), 4);
    c.set_auth(Some(Auth::new("custom", "good")));
    assert_eq!(whoami(&c).await.unwrap(), "reusing");
    assert_eq!(reusing.calls(), 5);

    // Replaced by one whose windows are already over: asked every time.
    let past = SystemTime::now() - Duration::from_secs(1);
    let expired = Counting {
        reuse: Some(Validity::between(None, Some(past))),
        username: "expired",
        ..Counting::default()
    };
    k.set_authenticator(expired.clone());
    for n in 1..=3 {
        assert_eq!(whoami(&c).await.unwrap(), "expired");
        assert_eq!(expired.calls(), n);
    }
    let future = SystemTime::now() + Duration::from_secs(3600);
    let not_yet = Counting {
        reuse: Some(Validity::between(Some(future), None)),
        username: "not-yet",
        ..Counting::default()
    };
    k.set_authenticator(not_yet.clone());
    for n in 1..=3 {
        assert_eq!(whoami(&c).await.unwrap(), "not-yet");
        assert_eq!(not_yet.calls(), n);
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_is_per_connection_and_per_claimed_identity() {
    let k = server();
    let (url, task) = serve_router(&k).await;
    let reusing = Counting {
        reuse: Some(Validity::ALWAYS),
        username: "reusing",
        ..Counting::default()
    };
    k.set_authenticator(reusing.clone());
    let (_k1, c1) = dial(&url, Auth::new("custom", "good")).await;
    let (_k2, c2) = dial(&url, Auth::new("custom", "good")).await;
    assert_eq!(whoami(&c1).await.unwrap(), "reusing");
    assert_eq!(whoami(&c2).await.unwrap(), "reusing");
    assert_eq!(whoami(&c1).await.unwrap(), "reusing");
    assert_eq!(whoami(&c2).await.unwrap(), "reusing");
    assert_eq!(reusing.calls(), 2);
    // Methods without authentication do not need it.
    assert_eq!(
        c1.tell("kite.ping", &()).await.unwrap().as_str(),
        Some("pong")
    );
    task.abort();
}

// The windows the built-in authenticator gives for reuse, against its own answers.

const NOW: u64 = 1_600_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn me() -> KiteIdentity {
    KiteIdentity {
        username: "alice".into(),
        environment: "production".into(),
        name: "math".into(),
        ..KiteIdentity::default()
    }
}

fn authenticator(skew: Duration) -> Authenticator {
    Authenticator::new(AuthSettings {
        kontrol_user: "kontrol".into(),
        kontrol_key: kontrol().public_pem().into(),
        clock_skew: skew,
        ..AuthSettings::default()
    })
    .unwrap()
}

/// Instants around `secs`: whole seconds next to it and just before/after them.
fn around(secs: i64) -> Vec<SystemTime> {
    let mut out = Vec::new();
    for s in secs - 2..=secs + 2 {
        let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(s).unwrap());
        out.extend([
            t - Duration::from_nanos(1),
            t,
            t + Duration::from_nanos(1),
            t + Duration::from_millis(999),
        ]);
    }
    out
}

#[tokio::test]
async fn token_window_is_exactly_where_verification_succeeds() {
    for skew in [Duration::ZERO, Duration::from_secs(30)] {
        let auth = authenticator(skew);
        let claims = token_claims(
            "/alice",
            "bob",
            "kontrol",
            Duration::from_secs(600),
            at(NOW),
            Duration::from_secs(60),
            true,
        );
        let token = sign_claims(kontrol(), &claims).unwrap();
        auth.authenticate_at("token", &token, &me(), at(NOW))
            .await
            .unwrap();
        let window = auth.validity("token", &token).unwrap();
        let skew_s = i64::try_from(skew.as_secs()).unwrap();
        let mut instants = around(claims.nbf.unwrap() - skew_s);
        instants.extend(around(claims.exp.unwrap() + skew_s));
        for t in instants {
            // A fresh authenticator (no cache) and the cached one agree with the window.
            let fresh = authenticator(skew)
                .authenticate_at("token", &token, &me(), t)
                .await
                .is_ok();
            let cached = auth
                .authenticate_at("token", &token, &me(), t)
                .await
                .is_ok();
            assert_eq!(window.holds_at(t), fresh, "skew {skew:?} at {t:?}");
            assert_eq!(window.holds_at(t), cached, "skew {skew:?} at {t:?}");
            // Put the entry back for the next instant.
            auth.authenticate_at("token", &token, &me(), at(NOW))
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn windows_only_where_reuse_is_as_strict() {
    let token = issue_token(
        kontrol(),
        "/alice",
        "bob",
        "kontrol",
        DEFAULT_TOKEN_TTL,
        at(NOW),
        true,
    )
    .unwrap();
    let auth = authenticator(Duration::from_secs(30));
    assert_eq!(auth.validity("token", &token), None, "not verified yet");
    auth.authenticate_at("token", &token, &me(), at(NOW))
        .await
        .unwrap();
    assert!(auth.validity("token", &token).is_some());
    assert_eq!(auth.validity("kiteKey", &token), None);
    assert_eq!(auth.validity("sessionID", &token), None);
    let before = auth.epoch();
    auth.clear_caches();
    assert!(auth.epoch() > before);
    assert_eq!(auth.validity("token", &token), None);

    // A verifier registered for the type: its answers are its own.
    auth.authenticate_at("token", &token, &me(), at(NOW))
        .await
        .unwrap();
    let before = auth.epoch();
    auth.register("token", verifier_fn(|_, _| Ok("x".into())));
    assert!(auth.epoch() > before);
    assert_eq!(auth.validity("token", &token), None);

    // Caching disabled: nothing is reused either.
    let uncached = Authenticator::new(AuthSettings {
        kontrol_user: "kontrol".into(),
        kontrol_key: kontrol().public_pem().into(),
        cache_capacity: 0,
        ..AuthSettings::default()
    })
    .unwrap();
    uncached
        .authenticate_at("token", &token, &me(), at(NOW))
        .await
        .unwrap();
    assert_eq!(uncached.validity("token", &token), None);

    // A custom audience rule is re-run on every request.
    let custom = authenticator(Duration::ZERO)
        .with_audience_check(Arc::new(|_local: &KiteIdentity, _aud: &str| Ok(())));
    custom
        .authenticate_at("token", &token, &me(), at(NOW))
        .await
        .unwrap();
    assert_eq!(custom.validity("token", &token), None);

    // Kite keys under a custom trust rule: no longer than the trust decision.
    let trusting = authenticator(Duration::ZERO).with_trust(trust_fn(|_, _| Ok(())));
    let key = issue_kite_key(stranger(), "kontrol", "carol", KONTROL_URL, at(NOW)).unwrap();
    trusting
        .authenticate_at("kiteKey", &key, &me(), at(NOW))
        .await
        .unwrap();
    let window = trusting.validity("kiteKey", &key).unwrap();
    let until = at(NOW) + kite::auth::DEFAULT_VERIFY_TTL;
    assert!(window.holds_at(until));
    assert!(!window.holds_at(until + Duration::from_nanos(1)));
    assert!(!window.holds_at(at(NOW - 3600)), "before the key's iat");
}
