//! Server-side verification of `kiteKey` and `token` credentials with real 2048-bit keys:
//! every acceptance and rejection rule of PROTOCOL.md 6.2, 6.5, 6.6 with its exact text.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64ct::{Base64UrlUnpadded, Encoding};
use kite::auth::{
    issue_kite_key, issue_token, sign_claims, trust_fn, verifier_fn, AuthError, AuthSettings,
    Authenticator, Claims, KeyPair, VerifyError, DEFAULT_TOKEN_TTL,
};
use kite_protocol::Kite;
use rsa::sha2::{Digest, Sha256};

const NOW: u64 = 1_700_000_000;
const URL: &str = "http://127.0.0.1:4000/kite";

/// Kontrol's key pair (generated once per test binary; 2048-bit keygen is slow-ish).
fn kontrol() -> &'static KeyPair {
    static PAIR: OnceLock<KeyPair> = OnceLock::new();
    PAIR.get_or_init(|| KeyPair::generate(2048).unwrap())
}

/// Some other Kontrol (or an attacker).
fn stranger() -> &'static KeyPair {
    static PAIR: OnceLock<KeyPair> = OnceLock::new();
    PAIR.get_or_init(|| KeyPair::generate(2048).unwrap())
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn math() -> Kite {
    Kite {
        username: "alice".into(),
        environment: "production".into(),
        name: "math".into(),
        version: "1.0.0".into(),
        region: "eu".into(),
        hostname: "box".into(),
        id: "8d1e0c2b-55a4-4f0e-b7a1-3c9f2e6d4b70".into(),
    }
}

fn settings() -> AuthSettings {
    AuthSettings {
        kontrol_user: "kontrol".into(),
        kontrol_key: kontrol().public_pem().into(),
        ..AuthSettings::default()
    }
}

fn auth() -> Authenticator {
    Authenticator::new(settings()).unwrap()
}

fn token_for(aud: &str) -> String {
    issue_token(
        kontrol(),
        aud,
        "bob",
        "kontrol",
        DEFAULT_TOKEN_TTL,
        at(NOW),
        true,
    )
    .unwrap()
}

async fn outcome(auth: &Authenticator, ty: &str, key: &str, local: &Kite, now: u64) -> String {
    match auth.authenticate_at(ty, key, local, at(now)).await {
        Ok(who) => format!("ok {}", who.username),
        Err(e) => e.to_string(),
    }
}

fn b64(bytes: &[u8]) -> String {
    Base64UrlUnpadded::encode_string(bytes)
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.iter().map(|b| b ^ 0x36).collect::<Vec<_>>());
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.iter().map(|b| b ^ 0x5c).collect::<Vec<_>>());
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

/// A JWT with an arbitrary header, signed by `sign` over the signing input.
fn forge(header: &str, claims: &Claims, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.as_bytes()),
        b64(claims.to_json().as_bytes())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

fn token_claims(aud: &str) -> Claims {
    Claims::decode_unverified(&token_for(aud)).unwrap()
}

#[tokio::test]
async fn valid_kite_key_and_token() {
    let auth = auth();
    let key = issue_kite_key(kontrol(), "kontrol", "carol", URL, at(NOW)).unwrap();
    assert_eq!(
        outcome(&auth, "kiteKey", &key, &math(), NOW).await,
        "ok carol"
    );
    // A kite key has no audience: it is accepted by any kite.
    let other = Kite {
        username: "zed".into(),
        ..math()
    };
    assert_eq!(
        outcome(&auth, "kiteKey", &key, &other, NOW).await,
        "ok carol"
    );
    // ...and no issuer check either.
    let foreign_issuer = issue_kite_key(kontrol(), "someone", "dave", URL, at(NOW)).unwrap();
    assert_eq!(
        outcome(&auth, "kiteKey", &foreign_issuer, &math(), NOW).await,
        "ok dave"
    );

    let token = token_for("/alice/production/math");
    assert_eq!(
        outcome(&auth, "token", &token, &math(), NOW).await,
        "ok bob"
    );
    // exp is inclusive.
    let exp = NOW + DEFAULT_TOKEN_TTL.as_secs() + 300;
    assert_eq!(
        outcome(&auth, "token", &token, &math(), exp).await,
        "ok bob"
    );
}

#[tokio::test]
async fn token_time_checks() {
    let token = token_for("/alice/production/math");
    let exp = NOW + DEFAULT_TOKEN_TTL.as_secs() + 300;
    // Default tolerance is 30 s: accepted up to exp + 30, then "expired by" counts from exp.
    assert_eq!(
        outcome(&auth(), "token", &token, &math(), exp + 30).await,
        "ok bob"
    );
    assert_eq!(
        outcome(&auth(), "token", &token, &math(), exp + 31).await,
        "token: token is expired by 31s"
    );
    assert_eq!(
        outcome(&auth(), "token", &token, &math(), exp + 100).await,
        "token: token is expired by 1m40s"
    );
    // nbf = iat = NOW - 300.
    assert_eq!(
        outcome(&auth(), "token", &token, &math(), NOW - 330).await,
        "ok bob"
    );
    assert_eq!(
        outcome(&auth(), "token", &token, &math(), NOW - 331).await,
        "token: token is not valid yet"
    );
    // Zero tolerance: Go's exact limits.
    let strict = Authenticator::new(AuthSettings {
        clock_skew: Duration::ZERO,
        ..settings()
    })
    .unwrap();
    assert_eq!(
        outcome(&strict, "token", &token, &math(), exp + 1).await,
        "token: token is expired by 1s"
    );
    assert_eq!(
        outcome(&strict, "token", &token, &math(), NOW - 301).await,
        "token: token is not valid yet"
    );
    // Tolerance is clamped to 5 min.
    let lax = Authenticator::new(AuthSettings {
        clock_skew: Duration::from_secs(3600),
        ..settings()
    })
    .unwrap();
    assert_eq!(
        outcome(&lax, "token", &token, &math(), exp + 300).await,
        "ok bob"
    );
    assert_eq!(
        outcome(&lax, "token", &token, &math(), exp + 301).await,
        "token: token is expired by 5m1s"
    );
    // iat in the future without nbf: Go's "Token used before issued".
    let mut claims = token_claims("/alice");
    claims.nbf = None;
    claims.iat = Some(i64::try_from(NOW).unwrap() + 3600);
    let future = sign_claims(kontrol(), &claims).unwrap();
    assert_eq!(
        outcome(&auth(), "token", &future, &math(), NOW).await,
        "token: Token used before issued"
    );
    // Both iat and nbf in the future: the nbf message wins.
    claims.nbf = claims.iat;
    let future = sign_claims(kontrol(), &claims).unwrap();
    assert_eq!(
        outcome(&auth(), "token", &future, &math(), NOW).await,
        "token: token is not valid yet"
    );
}

#[tokio::test]
async fn token_audiences() {
    let auth = auth();
    let cases: &[(&str, &str)] = &[
        ("/", "ok bob"),
        ("/alice", "ok bob"),
        ("/alice/production", "ok bob"),
        ("/alice/production/math", "ok bob"),
        ("/alice//math", "ok bob"),
        ("/alice/production/math/9.9.9/elsewhere/host/id", "ok bob"),
        (
            "/bob/production/math",
            "token: audience: username \"bob\" not allowed (/bob/production/math)",
        ),
        (
            "//production/math",
            "token: audience: username \"\" not allowed (//production/math)",
        ),
        (
            "/alice/staging/math",
            "token: audience: environment \"staging\" not allowed (/alice/staging/math)",
        ),
        (
            "/alice/production/fs",
            "token: audience: kite \"fs\" not allowed (/alice/production/fs)",
        ),
        (
            "alice/production/math",
            "token: invalid audience: invalid kite string (alice/production/math)",
        ),
    ];
    for (aud, want) in cases {
        let token = token_for(aud);
        assert_eq!(
            outcome(&auth, "token", &token, &math(), NOW).await,
            *want,
            "{aud}"
        );
        // Same answer from the cache.
        assert_eq!(
            outcome(&auth, "token", &token, &math(), NOW).await,
            *want,
            "{aud} (cached)"
        );
    }
}

#[tokio::test]
async fn token_issuer_subject_audience_presence() {
    let auth = auth();
    let wrong_issuer = issue_token(
        kontrol(),
        "/alice",
        "bob",
        "mallory",
        DEFAULT_TOKEN_TTL,
        at(NOW),
        true,
    )
    .unwrap();
    assert_eq!(
        outcome(&auth, "token", &wrong_issuer, &math(), NOW).await,
        "token: issuer is not trusted: mallory"
    );
    let mut claims = token_claims("/alice");
    claims.iss = None;
    let no_issuer = sign_claims(kontrol(), &claims).unwrap();
    assert_eq!(
        outcome(&auth, "token", &no_issuer, &math(), NOW).await,
        "token: issuer is not trusted: "
    );

    let mut claims = token_claims("/alice");
    claims.sub = None;
    let no_sub = sign_claims(kontrol(), &claims).unwrap();
    assert_eq!(
        outcome(&auth, "token", &no_sub, &math(), NOW).await,
        "token: token has no username"
    );
    claims.sub = Some(String::new());
    let empty_sub = sign_claims(kontrol(), &claims).unwrap();
    assert_eq!(
        outcome(&auth, "token", &empty_sub, &math(), NOW).await,
        "token: token has no username"
    );

    let mut claims = token_claims("/alice");
    claims.aud = None;
    let no_aud = sign_claims(kontrol(), &claims).unwrap();
    assert_eq!(
        outcome(&auth, "token", &no_aud, &math(), NOW).await,
        "token: token has no audience"
    );
    // A kite key is not a token (no audience).
    let key = issue_kite_key(kontrol(), "kontrol", "carol", URL, at(NOW)).unwrap();
    assert_eq!(
        outcome(&auth, "token", &key, &math(), NOW).await,
        "token: token has no audience"
    );
}

#[tokio::test]
async fn tampering_and_foreign_signers() {
    let auth = auth();
    let token = token_for("/alice/production/math");
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = Claims::decode_unverified(&token).unwrap();
    claims.sub = Some("mallory".into());
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_json().as_bytes()),
        parts[2]
    );
    assert_eq!(
        outcome(&auth, "token", &tampered, &math(), NOW).await,
        "token: token is expired"
    );
    // Truncated or altered signatures.
    let mut sig = Base64UrlUnpadded::decode_vec(parts[2]).unwrap();
    let truncated = format!("{}.{}.{}", parts[0], parts[1], b64(&sig[..sig.len() - 3]));
    sig[100] ^= 1;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    let empty = format!("{}.{}.", parts[0], parts[1]);
    for bad in [truncated, flipped, empty] {
        assert_eq!(
            outcome(&auth, "token", &bad, &math(), NOW).await,
            "token: token is expired"
        );
    }
    // Signed by a stranger: reported as expired (Q6) so clients refetch.
    let foreign = issue_token(
        stranger(),
        "/alice/production/math",
        "bob",
        "kontrol",
        DEFAULT_TOKEN_TTL,
        at(NOW),
        true,
    )
    .unwrap();
    let err = auth
        .authenticate_at("token", &foreign, &math(), at(NOW))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "token: token is expired");
    assert!(err.is_token_expired());
    // A bad signature wins over a time error, like jwt-go.
    let late = NOW + DEFAULT_TOKEN_TTL.as_secs() + 3600;
    assert_eq!(
        outcome(&auth, "token", &foreign, &math(), late).await,
        "token: token is expired"
    );

    // Kite keys: a tampered payload fails the signature check with Go's RSA error text.
    let key = issue_kite_key(kontrol(), "kontrol", "carol", URL, at(NOW)).unwrap();
    let parts: Vec<&str> = key.split('.').collect();
    let mut claims = Claims::decode_unverified(&key).unwrap();
    claims.sub = Some("mallory".into());
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_json().as_bytes()),
        parts[2]
    );
    assert_eq!(
        outcome(&auth, "kiteKey", &tampered, &math(), NOW).await,
        "kiteKey: crypto/rsa: verification error"
    );
    // A stranger's key naming our Kontrol key in kontrolKey: signature mismatch.
    let mut claims = Claims::decode_unverified(&key).unwrap();
    claims.sub = Some("mallory".into());
    let forged = sign_claims(stranger(), &claims).unwrap();
    assert_eq!(
        outcome(&auth, "kiteKey", &forged, &math(), NOW).await,
        "kiteKey: crypto/rsa: verification error"
    );
}

#[tokio::test]
async fn algorithm_confusion_is_rejected() {
    let auth = auth();
    let claims = token_claims("/alice/production/math");
    let key_claims = Claims::decode_unverified(
        &issue_kite_key(kontrol(), "kontrol", "carol", URL, at(NOW)).unwrap(),
    )
    .unwrap();
    // alg none, with and without a signature.
    let none = forge(r#"{"alg":"none","typ":"JWT"}"#, &claims, |_| Vec::new());
    let none_sig = forge(r#"{"alg":"none","typ":"JWT"}"#, &claims, |m| {
        kontrol().sign_rs256(m).unwrap()
    });
    // HS256 keyed with the Kontrol public key PEM (the classic RS/HS confusion attack),
    // with and without a trailing newline on the PEM.
    let pem = kontrol().public_pem();
    let hs = forge(r#"{"alg":"HS256","typ":"JWT"}"#, &claims, |m| {
        hmac_sha256(pem.as_bytes(), m)
    });
    let hs_nl = forge(r#"{"alg":"HS256","typ":"JWT"}"#, &claims, |m| {
        hmac_sha256(format!("{pem}\n").as_bytes(), m)
    });
    let hs_key = forge(r#"{"alg":"HS256","typ":"JWT"}"#, &key_claims, |m| {
        hmac_sha256(pem.as_bytes(), m)
    });
    // PS256 header over a valid PKCS#1 v1.5 signature, and an unknown algorithm.
    let ps = forge(r#"{"alg":"PS256","typ":"JWT"}"#, &claims, |m| {
        kontrol().sign_rs256(m).unwrap()
    });
    let es = forge(r#"{"alg":"ES256"}"#, &claims, |_| vec![1; 64]);
    for token in [&none, &none_sig, &hs, &hs_nl, &ps, &es] {
        assert_eq!(
            outcome(&auth, "token", token, &math(), NOW).await,
            "token: invalid signing method"
        );
    }
    for token in [&hs_key, &none] {
        assert_eq!(
            outcome(&auth, "kiteKey", token, &math(), NOW).await,
            "kiteKey: invalid signing method"
        );
    }
    // Missing alg.
    let no_alg = forge(r#"{"typ":"JWT"}"#, &claims, |m| {
        kontrol().sign_rs256(m).unwrap()
    });
    assert_eq!(
        outcome(&auth, "token", &no_alg, &math(), NOW).await,
        "token: signing method (alg) is unspecified."
    );
    // The header may differ from Kite's as long as it is RS256.
    let reordered = forge(r#"{"typ":"JWT","alg":"RS256","kid":"x"}"#, &claims, |m| {
        kontrol().sign_rs256(m).unwrap()
    });
    assert_eq!(
        outcome(&auth, "token", &reordered, &math(), NOW).await,
        "ok bob"
    );
}

#[tokio::test]
async fn malformed_credentials() {
    let auth = auth();
    for (key, want) in [
        ("", "token: token contains an invalid number of segments"),
        ("abc", "token: token contains an invalid number of segments"),
        (
            "a.b.c.d",
            "token: token contains an invalid number of segments",
        ),
        ("%%%.e30.c2ln", "token: illegal base64 data in token"),
    ] {
        assert_eq!(outcome(&auth, "token", key, &math(), NOW).await, want);
    }
    let array_aud = format!(
        "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{}.c2ln",
        b64(br#"{"aud":["/alice"],"sub":"bob"}"#)
    );
    let msg = outcome(&auth, "token", &array_aud, &math(), NOW).await;
    assert!(msg.starts_with("token: invalid claims: "), "{msg}");
    // Huge garbage is rejected, not a panic.
    let huge = "A".repeat(1 << 20);
    assert!(outcome(&auth, "kiteKey", &huge, &math(), NOW)
        .await
        .starts_with("kiteKey: "));
}

#[tokio::test]
async fn kite_key_trust() {
    let auth = auth();
    let ours = issue_kite_key(kontrol(), "kontrol", "carol", URL, at(NOW)).unwrap();
    let theirs = issue_kite_key(stranger(), "kontrol", "mallory", URL, at(NOW)).unwrap();
    assert_eq!(
        outcome(&auth, "kiteKey", &theirs, &math(), NOW).await,
        "kiteKey: kontrol key is not trusted"
    );
    // The negative decision is cached for VerifyTTL...
    assert_eq!(
        outcome(&auth, "kiteKey", &theirs, &math(), NOW + 10).await,
        "kiteKey: invalid kontrol key found"
    );
    // ...and expires after it (5 min by default).
    assert_eq!(
        outcome(&auth, "kiteKey", &theirs, &math(), NOW + 301).await,
        "kiteKey: kontrol key is not trusted"
    );
    assert_eq!(
        outcome(&auth, "kiteKey", &ours, &math(), NOW).await,
        "ok carol"
    );

    // Without the trust cache every attempt is judged afresh.
    let uncached = Authenticator::new(AuthSettings {
        verify_ttl: Duration::ZERO,
        ..settings()
    })
    .unwrap();
    for _ in 0..2 {
        assert_eq!(
            outcome(&uncached, "kiteKey", &theirs, &math(), NOW).await,
            "kiteKey: kontrol key is not trusted"
        );
    }
    assert_eq!(
        outcome(&uncached, "kiteKey", &ours, &math(), NOW).await,
        "ok carol"
    );

    // Keys are compared by value: a kontrolKey claim with different PEM formatting
    // (CRLF, surrounding whitespace) is still our key.
    let mut claims = Claims::decode_unverified(&ours).unwrap();
    claims.kontrol_key = Some(format!(
        "\n{}\r\n",
        kontrol().public_pem().replace('\n', "\r\n")
    ));
    // (A kite key must be signed by the key it names; here it is.)
    let reformatted = sign_claims(kontrol(), &claims).unwrap();
    assert_eq!(
        outcome(&auth, "kiteKey", &reformatted, &math(), NOW).await,
        "ok carol"
    );

    // No kontrolKey claim / unusable PEM / no username.
    let mut claims = Claims::decode_unverified(&ours).unwrap();
    claims.kontrol_key = None;
    let missing = sign_claims(kontrol(), &claims).unwrap();
    assert_eq!(
        outcome(&auth, "kiteKey", &missing, &math(), NOW).await,
        "kiteKey: no kontrol key found"
    );
    claims.kontrol_key = Some("garbage".into());
    let garbage = sign_claims(kontrol(), &claims).unwrap();
    assert_eq!(
        outcome(&auth, "kiteKey", &garbage, &math(), NOW).await,
        "kiteKey: Invalid Key: Key must be PEM encoded PKCS1 or PKCS8 private key"
    );
    let mut claims = Claims::decode_unverified(&ours).unwrap();
    claims.sub = None;
    let anonymous = sign_claims(kontrol(), &claims).unwrap();
    assert_eq!(
        outcome(&auth, "kiteKey", &anonymous, &math(), NOW).await,
        "kiteKey: token has no username"
    );

    // A kite with no Kontrol key trusts no kite key.
    let bare = Authenticator::new(AuthSettings::default()).unwrap();
    assert_eq!(
        outcome(&bare, "kiteKey", &ours, &math(), NOW).await,
        "kiteKey: kontrol key is not trusted"
    );
}

#[tokio::test]
async fn pluggable_trust_for_kontrol() {
    // Kontrol trusts every key pair it stores (here: both), decided by a custom function.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let stored = [
        kontrol().public_key().clone(),
        stranger().public_key().clone(),
    ];
    let auth = Authenticator::new(settings())
        .unwrap()
        .with_trust(trust_fn(move |_pem, key| {
            counter.fetch_add(1, Ordering::SeqCst);
            if stored.contains(key) {
                Ok(())
            } else {
                Err(VerifyError::KontrolKeyNotTrusted)
            }
        }));
    let a = issue_kite_key(kontrol(), "kontrol", "carol", URL, at(NOW)).unwrap();
    let b = issue_kite_key(stranger(), "kontrol", "dave", URL, at(NOW)).unwrap();
    assert_eq!(
        outcome(&auth, "kiteKey", &a, &math(), NOW).await,
        "ok carol"
    );
    assert_eq!(outcome(&auth, "kiteKey", &b, &math(), NOW).await, "ok dave");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Decisions and results are cached for VerifyTTL...
    assert_eq!(
        outcome(&auth, "kiteKey", &a, &math(), NOW + 60).await,
        "ok carol"
    );
    let a2 = issue_kite_key(kontrol(), "kontrol", "erin", URL, at(NOW)).unwrap();
    assert_eq!(
        outcome(&auth, "kiteKey", &a2, &math(), NOW + 60).await,
        "ok erin"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // ...then asked again.
    assert_eq!(
        outcome(&auth, "kiteKey", &a, &math(), NOW + 301).await,
        "ok carol"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Other errors from the trust function are reported but not cached.
    let auth = Authenticator::new(settings())
        .unwrap()
        .with_trust(trust_fn(|_, _| {
            Err(VerifyError::Other("storage is down".into()))
        }));
    for _ in 0..2 {
        assert_eq!(
            outcome(&auth, "kiteKey", &a, &math(), NOW).await,
            "kiteKey: storage is down"
        );
    }
}

#[tokio::test]
async fn kontrol_key_rotation_at_run_time() {
    let auth = auth();
    let old_token = token_for("/alice/production/math");
    let old_key = issue_kite_key(kontrol(), "kontrol", "carol", URL, at(NOW)).unwrap();
    assert_eq!(
        outcome(&auth, "token", &old_token, &math(), NOW).await,
        "ok bob"
    );
    assert_eq!(
        outcome(&auth, "kiteKey", &old_key, &math(), NOW).await,
        "ok carol"
    );
    assert_eq!(auth.cache_stats().tokens, 1);

    // Registration hands us a new Kontrol key: cached successes must not survive.
    auth.set_kontrol_key(stranger().public_pem()).unwrap();
    assert_eq!(auth.kontrol_key(), stranger().public_pem());
    assert_eq!(auth.cache_stats().tokens, 0);
    assert_eq!(
        outcome(&auth, "token", &old_token, &math(), NOW).await,
        "token: token is expired"
    );
    assert_eq!(
        outcome(&auth, "kiteKey", &old_key, &math(), NOW).await,
        "kiteKey: kontrol key is not trusted"
    );
    let new_token = issue_token(
        stranger(),
        "/alice/production/math",
        "bob",
        "kontrol",
        DEFAULT_TOKEN_TTL,
        at(NOW),
        true,
    )
    .unwrap();
    assert_eq!(
        outcome(&auth, "token", &new_token, &math(), NOW).await,
        "ok bob"
    );

    // A new Kontrol user changes the accepted issuer.
    auth.set_kontrol_user("kontrol2");
    assert_eq!(auth.kontrol_user(), "kontrol2");
    assert_eq!(
        outcome(&auth, "token", &new_token, &math(), NOW).await,
        "token: issuer is not trusted: kontrol"
    );
    // Bad PEM is refused and leaves the key in force.
    assert!(auth.set_kontrol_key("nope").is_err());
    assert_eq!(auth.kontrol_key(), stranger().public_pem());

    // Unset key: tokens get Go's genericError.
    auth.set_kontrol_key("").unwrap();
    let err = auth
        .authenticate_at("token", &new_token, &math(), at(NOW))
        .await
        .unwrap_err();
    assert_eq!(err, AuthError::KontrolKeyNotSet);
    assert_eq!(err.error_type(), "genericError");
    assert_eq!(err.to_string(), "kontrol key is not set in config");
}

#[tokio::test]
async fn verification_cache() {
    let auth = auth();
    let token = token_for("/alice/production/math");
    for _ in 0..5 {
        assert_eq!(
            outcome(&auth, "token", &token, &math(), NOW).await,
            "ok bob"
        );
    }
    let stats = auth.cache_stats();
    assert_eq!((stats.tokens, stats.kite_keys), (1, 0));

    // A hit still honours exp, nbf and the audience.
    let exp = NOW + DEFAULT_TOKEN_TTL.as_secs() + 300;
    assert_eq!(
        outcome(&auth, "token", &token, &math(), exp + 100).await,
        "token: token is expired by 1m40s"
    );
    assert_eq!(
        outcome(&auth, "token", &token, &math(), NOW).await,
        "ok bob"
    );
    assert_eq!(
        outcome(&auth, "token", &token, &math(), NOW - 1000).await,
        "token: token is not valid yet"
    );
    assert_eq!(
        outcome(&auth, "token", &token, &math(), NOW).await,
        "ok bob"
    );
    let fs = Kite {
        name: "fs".into(),
        ..math()
    };
    assert_eq!(
        outcome(&auth, "token", &token, &fs, NOW).await,
        "token: audience: kite \"math\" not allowed (/alice/production/math)"
    );
    // Failures are not cached.
    let wrong = issue_token(
        kontrol(),
        "/alice",
        "bob",
        "mallory",
        DEFAULT_TOKEN_TTL,
        at(NOW),
        true,
    )
    .unwrap();
    assert!(outcome(&auth, "token", &wrong, &math(), NOW)
        .await
        .contains("issuer"));
    assert_eq!(auth.cache_stats().tokens, 1);

    // Kite keys too.
    let key = issue_kite_key(kontrol(), "kontrol", "carol", URL, at(NOW)).unwrap();
    assert_eq!(
        outcome(&auth, "kiteKey", &key, &math(), NOW).await,
        "ok carol"
    );
    assert_eq!(
        outcome(&auth, "kiteKey", &key, &math(), NOW).await,
        "ok carol"
    );
    assert_eq!(auth.cache_stats().kite_keys, 1);
    assert_eq!(
        outcome(&auth, "kiteKey", &key, &math(), NOW - 1000).await,
        "kiteKey: Token used before issued"
    );

    // Bounded.
    let small = Authenticator::new(AuthSettings {
        cache_capacity: 4,
        ..settings()
    })
    .unwrap();
    for i in 0..12 {
        let token = issue_token(
            kontrol(),
            "/alice",
            &format!("user{i}"),
            "kontrol",
            DEFAULT_TOKEN_TTL,
            at(NOW),
            true,
        )
        .unwrap();
        assert_eq!(
            outcome(&small, "token", &token, &math(), NOW).await,
            format!("ok user{i}")
        );
        assert!(small.cache_stats().tokens <= 4);
    }
    // Disabled.
    let none = Authenticator::new(AuthSettings {
        cache_capacity: 0,
        ..settings()
    })
    .unwrap();
    assert_eq!(
        outcome(&none, "token", &token, &math(), NOW).await,
        "ok bob"
    );
    assert_eq!(none.cache_stats().tokens, 0);
    auth.clear_caches();
    assert_eq!(auth.cache_stats().tokens, 0);
}

#[tokio::test]
async fn registry_of_verifiers() {
    let auth = auth();
    let err = auth
        .authenticate_at("sessionID", "abc", &math(), at(NOW))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Unknown authentication type: sessionID");
    assert_eq!(err.error_type(), "authenticationError");

    auth.register(
        "sessionID",
        verifier_fn(|key, local| {
            if key == "s3cr3t" {
                Ok(format!("friend-of-{}", local.username))
            } else {
                Err(VerifyError::Other("no such session".into()))
            }
        }),
    );
    assert_eq!(
        outcome(&auth, "sessionID", "s3cr3t", &math(), NOW).await,
        "ok friend-of-alice"
    );
    assert_eq!(
        outcome(&auth, "sessionID", "nope", &math(), NOW).await,
        "sessionID: no such session"
    );
    // Built-ins can be overridden or removed.
    auth.register("token", verifier_fn(|_, _| Ok("anyone".into())));
    assert_eq!(
        outcome(&auth, "token", "x", &math(), NOW).await,
        "ok anyone"
    );
    auth.unregister("token");
    assert_eq!(
        outcome(&auth, "token", "x", &math(), NOW).await,
        "Unknown authentication type: token"
    );
    // Type strings are case-sensitive.
    assert_eq!(
        outcome(&auth, "KiteKey", "x", &math(), NOW).await,
        "Unknown authentication type: KiteKey"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_authentication() {
    let auth = Arc::new(auth());
    let tokens: Vec<String> = (0..4)
        .map(|i| {
            issue_token(
                kontrol(),
                "/alice/production",
                &format!("u{i}"),
                "kontrol",
                DEFAULT_TOKEN_TTL,
                at(NOW),
                true,
            )
            .unwrap()
        })
        .collect();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let auth = Arc::clone(&auth);
        let tokens = tokens.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..50 {
                let i = (t + round) % tokens.len();
                let who = auth
                    .authenticate_at("token", &tokens[i], &math(), at(NOW))
                    .await
                    .unwrap();
                assert_eq!(who.username, format!("u{i}"));
                if t == 0 && round == 25 {
                    auth.clear_caches();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(auth.cache_stats().tokens <= tokens.len());
}

#[tokio::test]
async fn custom_audience_rule() {
    let auth = Authenticator::new(settings())
        .unwrap()
        .with_audience_check(Arc::new(|local: &Kite, aud: &str| {
            if aud == format!("kite:{}", local.id) {
                Ok(())
            } else {
                Err(VerifyError::Other(format!("wrong audience {aud}")))
            }
        }));
    let good = token_for(&format!("kite:{}", math().id));
    assert_eq!(outcome(&auth, "token", &good, &math(), NOW).await, "ok bob");
    let root = token_for("/");
    assert_eq!(
        outcome(&auth, "token", &root, &math(), NOW).await,
        "token: wrong audience /"
    );
}

#[test]
fn shareable_types() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Authenticator>();
    assert_send_sync::<KeyPair>();
    assert_send_sync::<AuthError>();
    fn assert_send<T: Send>(_: &T) {}
    let auth = auth();
    let local = math();
    let fut = auth.authenticate("token", "x", &local);
    assert_send(&fut);
}
