//! The Kontrol behaviour every storage backend must support, one function per test, each
//! on a fresh isolated store.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kite::auth::{sign_claims, Claims, KeyPair};
use kite_protocol::{Authentication, Kite, KontrolQuery};
use kontrol::args::WatchStyle;
use kontrol::{Kontrol, KontrolError, RegisterMachinePolicy};
use serde_json::{json, Value};

use super::*;
use crate::support::TestEnv;

/// Instantiates the suite for one backend: `kontrol_suite!(support::embedded_env);`.
macro_rules! kontrol_suite {
    ($env:path) => {
        $crate::support::backend_tests!($env => kontrol_common::suite {
            register_then_get_kites,
            heartbeats_keep_kites_and_silence_expires_them,
            get_token_rules_and_cache,
            rotation,
            watch_register_deregister,
            watch_limits_and_cancel,
            bad_input_changes_nothing,
            restart_serves_at_once,
            register_machine_policy,
            get_key_rules,
        });
    };
}
pub(crate) use kontrol_suite;

/// Tests of two Kontrols sharing one store (PostgreSQL, etcd).
#[allow(unused_macros)]
macro_rules! kontrol_replica_suite {
    ($env:path) => {
        $crate::support::backend_tests!($env => kontrol_common::suite {
            replicas_register_find_watch,
        });
    };
}
#[allow(unused_imports)]
pub(crate) use kontrol_replica_suite;

/// Longest time an expiry may take to show: TTL (2 s) plus slack for sweeps, lease checks
/// and a loaded machine.
const EXPIRY_SLACK: Duration = Duration::from_secs(3);
const EVENT_DEADLINE: Duration = Duration::from_secs(15);

fn query(fields: &[(&str, &str)]) -> KontrolQuery {
    let mut q = KontrolQuery::default();
    for (k, v) in fields {
        let slot = match *k {
            "username" => &mut q.username,
            "environment" => &mut q.environment,
            "name" => &mut q.name,
            "version" => &mut q.version,
            "region" => &mut q.region,
            "hostname" => &mut q.hostname,
            "id" => &mut q.id,
            other => panic!("unknown query field {other}"),
        };
        *slot = (*v).to_owned();
    }
    q
}

fn url_of(k: &Kite) -> String {
    format!("http://127.0.0.1:7000/{}/kite", &k.id[..8])
}

/// Registers `k` with a kite key for its username signed by the current pair.
async fn register(kontrol: &Kontrol, k: &Kite) -> kontrol::Registered {
    let key = key_for(kontrol, &k.username);
    kontrol
        .register(
            k,
            Some(&kite_key_auth(&key)),
            Some(&json!({ "url": url_of(k) })),
        )
        .await
        .unwrap_or_else(|e| panic!("register {k}: {e}"))
}

fn ids(kites: &[kontrol::KiteWithToken]) -> BTreeSet<String> {
    kites.iter().map(|k| k.kite.id.clone()).collect()
}

/// Checks `token` the way kite `target` would, trusting `public_pem`; returns the username.
async fn check_token(public_pem: &str, token: &str, target: &Kite) -> Result<String, String> {
    verifier_with_key(public_pem)
        .authenticate("token", token, target)
        .await
        .map(|a| a.username)
        .map_err(|e| e.to_string())
}

fn claims(token: &str) -> Claims {
    Claims::decode_unverified(token).unwrap()
}

pub async fn register_then_get_kites(env: &TestEnv) {
    let (kontrol, _s) = start(env, test_config()).await;
    let math = kite("alice", "math");
    let reg = register(&kontrol, &math).await;
    assert_eq!(reg.result.url, url_of(&math));
    assert_eq!(reg.result.heartbeat_interval, 0);
    assert_eq!(reg.result.public_key, None);
    assert_eq!(reg.result.kite_key, None);
    assert_eq!(reg.registration.key_id, kontrol.current_key_id());
    assert_eq!(
        serde_json::to_value(&reg.result).unwrap(),
        json!({"url": url_of(&math), "heartbeatInterval": 0})
    );

    // bob finds it, with a token the math kite accepts.
    let q = query(&[
        ("username", "alice"),
        ("environment", "prod"),
        ("name", "math"),
    ]);
    let found = kontrol.get_kites(&q, "bob").await.unwrap();
    assert_eq!(found.len(), 1);
    let k = &found[0];
    assert_eq!(k.kite, math);
    assert_eq!(k.url, url_of(&math));
    assert_eq!(k.key_id, kontrol.current_key_id());
    let c = claims(&k.token);
    assert_eq!(c.aud.as_deref(), Some("/alice/prod/math"));
    assert_eq!(c.sub.as_deref(), Some("bob"));
    assert_eq!(c.iss.as_deref(), Some("kontrol"));
    assert_eq!(c.exp.unwrap() - c.iat.unwrap(), 173_400);
    assert_eq!(c.nbf, c.iat);
    assert_eq!(
        check_token(&kontrol.public_key(), &k.token, &math).await,
        Ok("bob".into())
    );
    // The JSON shape of the method result.
    let v = serde_json::to_value(
        kontrol
            .get_kites_method(
                Some(&json!({"query": q, "watchCallback": null, "who": null})),
                "bob",
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["kites"][0]["keyId"], json!(kontrol.current_key_id()));
    assert_eq!(v["kites"][0]["kite"]["id"], json!(math.id));
    assert!(v.get("watcherID").is_none());

    // No match is an empty list, not an error.
    let none = kontrol
        .get_kites(&query(&[("username", "nobody")]), "bob")
        .await
        .unwrap();
    assert!(none.is_empty());

    // Id-only query (Go's token renewer): the audience is the kite's, not "/" (Q13).
    let by_id = kontrol
        .get_kites(&query(&[("id", &math.id)]), "bob")
        .await
        .unwrap();
    assert_eq!(by_id.len(), 1);
    assert_eq!(
        claims(&by_id[0].token).aud.as_deref(),
        Some("/alice/prod/math")
    );

    // Version constraints.
    let v = kontrol
        .get_kites(
            &query(&[("username", "alice"), ("version", ">= 1.0, < 2")]),
            "bob",
        )
        .await
        .unwrap();
    assert_eq!(ids(&v), ids(&found));
    let v = kontrol
        .get_kites(
            &query(&[("username", "alice"), ("version", "~> 2.0")]),
            "bob",
        )
        .await
        .unwrap();
    assert!(v.is_empty());

    // Kontrol registered itself.
    let me = kontrol
        .get_kites(
            &query(&[("username", "kontrol"), ("name", "kontrol")]),
            "bob",
        )
        .await
        .unwrap();
    assert_eq!(me.len(), 1);
    assert_eq!(&me[0].kite, kontrol.identity());
    assert_eq!(me[0].url, KONTROL_URL);

    // Re-registering (same id) with a bare URL string (kite.js, Q16) updates the URL.
    let key = key_for(&kontrol, "alice");
    let reg = kontrol
        .register(
            &math,
            Some(&kite_key_auth(&key)),
            Some(&json!("ws://10.0.0.9:1/kite")),
        )
        .await
        .unwrap();
    assert_eq!(reg.result.url, "ws://10.0.0.9:1/kite");
    let found = kontrol.get_kites(&q, "bob").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].url, "ws://10.0.0.9:1/kite");

    // A kite with an empty claimed username gets its kite key's.
    let mut anon = kite("", "math");
    anon.username.clear();
    kontrol
        .register(
            &anon,
            Some(&kite_key_auth(&key)),
            Some(&json!({"url": "http://h:1/kite"})),
        )
        .await
        .unwrap();
    let found = kontrol.get_kites(&q, "bob").await.unwrap();
    assert_eq!(found.len(), 2);
    kontrol.shutdown().await;
}

pub async fn heartbeats_keep_kites_and_silence_expires_them(env: &TestEnv) {
    let config = test_config();
    let ttl = config.record_ttl();
    let (kontrol, _s) = start(env, config).await;
    let k = kite("alice", "beating");
    let reg = register(&kontrol, &k).await;
    let q = query(&[("id", &k.id)]);

    // Heartbeats every 300 ms keep it alive well past its TTL.
    let start = Instant::now();
    while start.elapsed() < ttl + Duration::from_secs(1) {
        kontrol.heartbeat(&reg.registration).await.unwrap();
        assert_eq!(kontrol.get_kites(&q, "bob").await.unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(kontrol.http_heartbeat(&k.id).await.unwrap());

    // Silence: gone within interval + grace (plus slack), not before half of it.
    let silent_since = Instant::now();
    kontrol.heartbeat(&reg.registration).await.unwrap();
    wait_for(
        "the silent kite to disappear",
        ttl + EXPIRY_SLACK,
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
    let gone_after = silent_since.elapsed();
    assert!(gone_after >= ttl / 2, "expired too early: {gone_after:?}");
    assert!(!kontrol.http_heartbeat(&k.id).await.unwrap());

    // A heartbeat after the silence registers it again.
    kontrol.heartbeat(&reg.registration).await.unwrap();
    assert_eq!(kontrol.get_kites(&q, "bob").await.unwrap().len(), 1);
    kontrol.shutdown().await;
}

pub async fn get_token_rules_and_cache(env: &TestEnv) {
    let (kontrol, _s) = start(env, test_config()).await;
    let a = kite("alice", "math");
    let b = kite("alice", "math");
    register(&kontrol, &a).await;
    register(&kontrol, &b).await;

    let err = |e: KontrolError| e.to_string();
    assert_eq!(
        err(kontrol
            .get_token(Some(&json!({"username": "alice", "name": "math"})), "bob")
            .await
            .unwrap_err()),
        "query matches more than one kite"
    );
    assert_eq!(
        err(kontrol
            .get_token(Some(&json!({"username": "nobody"})), "bob")
            .await
            .unwrap_err()),
        "no kites found"
    );
    assert!(err(kontrol
        .get_token(Some(&json!("alice")), "bob")
        .await
        .unwrap_err())
    .starts_with("invalid query: "));
    assert!(err(kontrol
        .get_token(Some(&json!({"username": 5})), "bob")
        .await
        .unwrap_err())
    .starts_with("invalid query: "));
    assert_eq!(
        err(kontrol
            .get_token(
                Some(&json!({"username": "alice", "version": "latest"})),
                "bob"
            )
            .await
            .unwrap_err()),
        "Malformed constraint: latest"
    );
    assert_eq!(
        err(kontrol
            .get_token(Some(&json!({})), "bob")
            .await
            .unwrap_err()),
        "all query fields are empty"
    );

    // Id-only (Go renewer) and full descriptor (kite.js renewer) queries.
    let t1 = kontrol
        .get_token(Some(&json!({"id": a.id})), "bob")
        .await
        .unwrap();
    assert_eq!(claims(&t1).aud.as_deref(), Some("/alice/prod/math"));
    assert_eq!(
        check_token(&kontrol.public_key(), &t1, &a).await,
        Ok("bob".into())
    );
    let descriptor = serde_json::to_value(&a).unwrap();
    let t2 = kontrol.get_token(Some(&descriptor), "bob").await.unwrap();
    // Same audience, requester, issuer and key pair: the same string, shared with getKites.
    assert_eq!(t1, t2);
    let listed = kontrol
        .get_kites(
            &query(&[
                ("username", "alice"),
                ("environment", "prod"),
                ("name", "math"),
            ]),
            "bob",
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|k| k.token == t1));
    // Another requester gets another token.
    let eve = kontrol.get_token(Some(&descriptor), "eve").await.unwrap();
    assert_ne!(eve, t1);
    assert_eq!(claims(&eve).sub.as_deref(), Some("eve"));

    // force mints a new one, which replaces the cached one.
    let mut forced_arg = descriptor.clone();
    forced_arg["force"] = json!(true);
    let forced = kontrol.get_token(Some(&forced_arg), "bob").await.unwrap();
    assert_ne!(forced, t1);
    assert_eq!(
        check_token(&kontrol.public_key(), &forced, &a).await,
        Ok("bob".into())
    );
    assert_eq!(
        kontrol.get_token(Some(&descriptor), "bob").await.unwrap(),
        forced
    );

    // A query field containing '/' is refused, by getKites too.
    let bad = kontrol
        .get_token(Some(&json!({"username": "al/ice"})), "bob")
        .await
        .unwrap_err();
    assert!(bad.to_string().contains('/'), "{bad}");
    let bad = kontrol
        .get_kites(&query(&[("username", "al/ice")]), "bob")
        .await
        .unwrap_err();
    assert!(bad.to_string().contains('/'), "{bad}");
    kontrol.shutdown().await;
}

pub async fn rotation(env: &TestEnv) {
    let (kontrol, _s) = start(env, test_config()).await;
    let old_pair = kontrol.current_key_pair();
    let old_key = kite_key(&old_pair, "alice");
    let a = kite("alice", "math");
    let stays = kite("alice", "math");
    kontrol
        .register(
            &a,
            Some(&kite_key_auth(&old_key)),
            Some(&json!({"url": url_of(&a)})),
        )
        .await
        .unwrap();
    let reg_stays = kontrol
        .register(
            &stays,
            Some(&kite_key_auth(&old_key)),
            Some(&json!({"url": url_of(&stays)})),
        )
        .await
        .unwrap();
    let old_token = kontrol
        .get_token(Some(&json!({"id": a.id})), "bob")
        .await
        .unwrap();

    let new_id = kontrol.rotate_keys().await.unwrap();
    assert_ne!(new_id, old_pair.id());
    assert_eq!(kontrol.current_key_id(), new_id);
    let new_pub = kontrol.public_key();
    assert_ne!(new_pub, old_pair.public_pem());
    // Kontrol's own kite key is now signed by the new pair.
    assert_eq!(
        claims(&kontrol.kite_key()).kontrol_key.as_deref(),
        Some(new_pub.as_str())
    );

    // Registering with the old kite key: a re-signed kite key and the new public key.
    let reg = kontrol
        .register(
            &a,
            Some(&kite_key_auth(&old_key)),
            Some(&json!({"url": url_of(&a)})),
        )
        .await
        .unwrap();
    assert_eq!(reg.result.public_key.as_deref(), Some(new_pub.as_str()));
    let resigned = reg.result.kite_key.clone().expect("re-signed kite key");
    let (c_old, c_new) = (claims(&old_key), claims(&resigned));
    assert_eq!(c_new.kontrol_key.as_deref(), Some(new_pub.as_str()));
    assert_eq!(
        (c_new.sub, c_new.iss, c_new.jti),
        (c_old.sub, c_old.iss, c_old.jti)
    );
    assert_eq!(reg.registration.key_id, new_id);
    // The re-signed key verifies for a kite trusting the new key only.
    verifier_with_key(&new_pub)
        .verify_kite_key(&resigned, std::time::SystemTime::now())
        .await
        .unwrap();
    // ... and registers without further changes.
    let again = kontrol
        .register(
            &a,
            Some(&kite_key_auth(&resigned)),
            Some(&json!({"url": url_of(&a)})),
        )
        .await
        .unwrap();
    assert_eq!(
        (again.result.public_key, again.result.kite_key),
        (None, None)
    );

    // A kite still registered with the deleted pair gets tokens signed by the new one.
    assert_eq!(reg_stays.registration.key_id, old_pair.id());
    let t = kontrol
        .get_token(Some(&json!({"id": stays.id})), "bob")
        .await
        .unwrap();
    assert_eq!(check_token(&new_pub, &t, &stays).await, Ok("bob".into()));
    assert_eq!(
        check_token(old_pair.public_pem(), &t, &stays).await,
        Err("token: token is expired".into())
    );
    // Old tokens are "expired" for kites that learned the new key (Q6).
    assert_eq!(
        check_token(&new_pub, &old_token, &a).await,
        Err("token: token is expired".into())
    );
    // getKey tells old-key holders the new key.
    assert_eq!(
        kontrol
            .get_key(Some(&kite_key_auth(&old_key)))
            .await
            .unwrap(),
        new_pub
    );
    kontrol.shutdown().await;
}

pub async fn watch_register_deregister(env: &TestEnv) {
    let config = test_config();
    let ttl = config.record_ttl();
    let (kontrol, _s) = start(env, config).await;
    let first = kite("alice", "math");
    register(&kontrol, &first).await;

    let q = query(&[("username", "alice"), ("name", "math")]);
    let (sink, mut rx) = channel_sink();
    let res = kontrol
        .watch("conn-1", &q, "bob", WatchStyle::Handler, sink)
        .await
        .unwrap();
    assert_eq!(ids(&res.kites), BTreeSet::from([first.id.clone()]));
    let watcher_id = res.watcher_id.clone().expect("watcherID");
    assert_eq!(
        serde_json::to_value(&res).unwrap()["watcherID"],
        json!(watcher_id)
    );
    assert_eq!(kontrol.watcher_count(), 1);

    // A new matching kite: REGISTER with a token for bob; a non-matching one: nothing.
    let other = kite("alice", "other");
    register(&kontrol, &other).await;
    let second = kite("alice", "math");
    let reg = register(&kontrol, &second).await;
    let ev = next_event(&mut rx, EVENT_DEADLINE).await;
    assert_eq!(ev["err"], Value::Null);
    assert_eq!(ev["result"]["action"], "REGISTER");
    assert_eq!(ev["result"]["kite"]["id"], json!(second.id));
    assert_eq!(ev["result"]["url"], json!(url_of(&second)));
    let token = ev["result"]["token"].as_str().unwrap();
    assert_eq!(claims(token).aud.as_deref(), Some("/alice//math"));
    assert_eq!(
        check_token(&kontrol.public_key(), token, &second).await,
        Ok("bob".into())
    );

    // Keep `second` alive, let `first` (and `other`) go silent: DEREGISTER of `first`.
    let keep = {
        let kontrol = kontrol.clone();
        let registration = reg.registration.clone();
        tokio::spawn(async move {
            loop {
                let _ = kontrol.heartbeat(&registration).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let ev = next_event(&mut rx, ttl + EVENT_DEADLINE).await;
    assert_eq!(ev["result"]["action"], "DEREGISTER", "{ev}");
    assert_eq!(ev["result"]["kite"]["id"], json!(first.id));

    // An explicit removal is reported too.
    keep.abort();
    assert!(kontrol.deregister(&second.id).await.unwrap());
    let ev = next_event(&mut rx, EVENT_DEADLINE).await;
    assert_eq!(
        (
            ev["result"]["action"].as_str(),
            ev["result"]["kite"]["id"].as_str()
        ),
        (Some("DEREGISTER"), Some(second.id.as_str()))
    );

    // Go's spelling: watchCallback events carry "error".
    let (sink, mut rx2) = channel_sink();
    kontrol
        .watch("conn-2", &q, "bob", WatchStyle::Callback, sink)
        .await
        .unwrap();
    let third = kite("alice", "math");
    register(&kontrol, &third).await;
    let ev = next_event(&mut rx2, EVENT_DEADLINE).await;
    assert!(
        ev.get("error").is_some_and(Value::is_null) && ev.get("err").is_none(),
        "{ev}"
    );
    // The first watcher sees it too.
    let ev = next_event(&mut rx, EVENT_DEADLINE).await;
    assert_eq!(ev["result"]["kite"]["id"], json!(third.id));

    // cancelWatcher: only by its owner; then no more events.
    assert_eq!(
        kontrol
            .cancel_watcher("conn-2", &watcher_id)
            .unwrap_err()
            .to_string(),
        format!("watcher not found: {watcher_id}")
    );
    kontrol.cancel_watcher("conn-1", &watcher_id).unwrap();
    assert!(
        tokio::time::timeout(EVENT_DEADLINE, rx.recv())
            .await
            .unwrap()
            .is_none(),
        "events after cancelWatcher"
    );
    assert_eq!(kontrol.cancel_watchers("conn-2"), 1);
    assert_eq!(kontrol.watcher_count(), 0);
    kontrol.shutdown().await;
}

pub async fn watch_limits_and_cancel(env: &TestEnv) {
    let mut config = test_config();
    config.max_watchers_per_owner = 2;
    let (kontrol, _s) = start(env, config).await;
    let q = query(&[("username", "alice")]);
    let mut keep = Vec::new();
    for _ in 0..2 {
        let (sink, rx) = channel_sink();
        kontrol
            .watch("c", &q, "bob", WatchStyle::Handler, sink)
            .await
            .unwrap();
        keep.push(rx);
    }
    let (sink, _rx) = channel_sink();
    let err = kontrol
        .watch("c", &q, "bob", WatchStyle::Handler, sink)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "too many watchers (limit 2)");
    // Another owner may.
    let (sink, mut rx) = channel_sink();
    kontrol
        .watch("d", &q, "bob", WatchStyle::Handler, sink)
        .await
        .unwrap();
    // A bad query is refused before anything starts.
    let (sink, _rx2) = channel_sink();
    assert!(kontrol
        .watch(
            "e",
            &query(&[("username", "a/b")]),
            "bob",
            WatchStyle::Handler,
            sink
        )
        .await
        .is_err());
    assert_eq!(kontrol.watcher_count(), 3);
    // A sink whose peer is gone ends its watcher at the next event.
    rx.close();
    register(&kontrol, &kite("alice", "math")).await;
    wait_for("the orphaned watcher to end", EVENT_DEADLINE, || async {
        (kontrol.watcher_count() == 2).then_some(())
    })
    .await;
    assert_eq!(kontrol.cancel_watchers("c"), 2);
    assert_eq!(kontrol.watcher_count(), 0);
    kontrol.shutdown().await;
}

pub async fn bad_input_changes_nothing(env: &TestEnv) {
    let (kontrol, storage) = start(env, test_config()).await;
    let before = storage.count().await.unwrap();
    let k = kite("alice", "math");
    let good_key = key_for(&kontrol, "alice");
    let url = json!({"url": "http://127.0.0.1:1/kite"});
    let reg = |k: Kite, auth: Option<Authentication>, arg: Value| {
        let kontrol = kontrol.clone();
        async move {
            let e = kontrol
                .register(&k, auth.as_ref(), Some(&arg))
                .await
                .unwrap_err();
            (e.error_type().to_owned(), e.to_string())
        }
    };

    // Credentials.
    assert_eq!(
        reg(k.clone(), None, url.clone()).await,
        (
            "authenticationError".into(),
            "No authentication information is provided".into()
        )
    );
    assert_eq!(
        reg(
            k.clone(),
            Some(Authentication::new("token", "x")),
            url.clone()
        )
        .await,
        (
            "genericError".into(),
            "Unexpected authentication type: token".into()
        )
    );
    let (t, m) = reg(k.clone(), Some(kite_key_auth("garbage")), url.clone()).await;
    assert_eq!(t, "authenticationError");
    assert!(m.starts_with("kiteKey: "), "{m}");
    // A kite key of another Kontrol (its key pair is not ours).
    let foreign = KeyPair::generate(1024).unwrap();
    assert_eq!(
        reg(
            k.clone(),
            Some(kite_key_auth(&kite_key(&foreign, "alice"))),
            url.clone()
        )
        .await,
        (
            "authenticationError".into(),
            "kiteKey: kontrol key is not trusted".into()
        )
    );
    // A forgery: names our public key but is signed by another key.
    let forged = sign_claims(
        &foreign,
        &Claims {
            kontrol_key: Some(kontrol.public_key()),
            ..claims(&good_key)
        },
    )
    .unwrap();
    let (t, m) = reg(k.clone(), Some(kite_key_auth(&forged)), url.clone()).await;
    assert_eq!(t, "authenticationError");
    assert_eq!(m, "kiteKey: crypto/rsa: verification error");

    // Another user's name.
    let mut as_bob = k.clone();
    as_bob.username = "bob".into();
    assert_eq!(
        reg(as_bob, Some(kite_key_auth(&good_key)), url.clone())
            .await
            .1,
        "kite username \"bob\" does not match the kite key's username \"alice\""
    );
    // Taking over a live kite id of another user.
    let bobs = kite("bob", "math");
    let bob_key = key_for(&kontrol, "bob");
    kontrol
        .register(&bobs, Some(&kite_key_auth(&bob_key)), Some(&url))
        .await
        .unwrap();
    let mut hijack = bobs.clone();
    hijack.username = "alice".into();
    assert_eq!(
        reg(hijack, Some(kite_key_auth(&good_key)), url.clone())
            .await
            .1,
        format!("kite id {} is registered by another user", bobs.id)
    );
    assert!(kontrol.deregister(&bobs.id).await.unwrap());
    // Identity fields.
    let mut slash = k.clone();
    slash.name = "ma/th".into();
    assert_eq!(
        reg(slash, Some(kite_key_auth(&good_key)), url.clone())
            .await
            .1,
        "Field \"name\" must not contain '/'"
    );
    let mut empty = k.clone();
    empty.region.clear();
    assert_eq!(
        reg(empty, Some(kite_key_auth(&good_key)), url.clone())
            .await
            .1,
        "Empty Kite field: region"
    );
    let mut huge = k.clone();
    huge.hostname = "h".repeat(10_000);
    let (t, m) = reg(huge, Some(kite_key_auth(&good_key)), url.clone()).await;
    assert_eq!(t, "genericError");
    assert!(m.contains("too long"), "{m}");
    // URLs.
    assert_eq!(
        reg(
            k.clone(),
            Some(kite_key_auth(&good_key)),
            json!({"url": ""})
        )
        .await
        .1,
        "empty url"
    );
    assert_eq!(
        reg(
            k.clone(),
            Some(kite_key_auth(&good_key)),
            json!("not a url")
        )
        .await
        .1,
        "invalid register URL: relative URL without a base"
    );
    assert!(
        reg(k.clone(), Some(kite_key_auth(&good_key)), json!([1, 2]))
            .await
            .1
            .starts_with("register: expected")
    );

    // Queries.
    for (q, want) in [
        (query(&[]), "all query fields are empty"),
        (
            query(&[("username", "alice"), ("version", "latest")]),
            "Malformed constraint: latest",
        ),
    ] {
        assert_eq!(
            kontrol.get_kites(&q, "bob").await.unwrap_err().to_string(),
            want
        );
    }
    assert!(kontrol
        .get_kites_method(Some(&json!({"query": {"name": ["x"]}})), "bob")
        .await
        .is_err());
    assert!(kontrol
        .get_kites_method(Some(&json!(17)), "bob")
        .await
        .is_err());

    // Nothing was stored.
    assert_eq!(storage.count().await.unwrap(), before);
    assert!(kontrol
        .get_kites(&query(&[("username", "alice")]), "bob")
        .await
        .unwrap()
        .is_empty());
    kontrol.shutdown().await;
}

pub async fn restart_serves_at_once(env: &TestEnv) {
    let mut config = test_config();
    // The kite stays registered across the restart.
    config.heartbeat_grace = Duration::from_secs(60);
    let (kontrol, storage) = start(env, config.clone()).await;
    let key_id = kontrol.current_key_id();
    let public = kontrol.public_key();
    let k = kite("alice", "math");
    register(&kontrol, &k).await;
    let early_key = key_for(&kontrol, "alice");
    stop(kontrol, storage).await;

    // A new process: new instance id, same store.
    config.identity.id = uuid::Uuid::new_v4().to_string();
    let (kontrol, _s) = start(env, config).await;
    assert_eq!(kontrol.current_key_id(), key_id);
    assert_eq!(kontrol.public_key(), public);
    let found = kontrol
        .get_kites(&query(&[("id", &k.id)]), "bob")
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        check_token(&public, &found[0].token, &k).await,
        Ok("bob".into())
    );
    // The old Kontrol removed its own record at shutdown; the new one is there.
    let me = kontrol
        .get_kites(
            &query(&[("username", "kontrol"), ("name", "kontrol")]),
            "bob",
        )
        .await
        .unwrap();
    assert_eq!(me.len(), 1);
    assert_eq!(&me[0].kite, kontrol.identity());
    // Kite keys issued before the restart still work.
    let k2 = kite("alice", "math");
    let reg = kontrol
        .register(
            &k2,
            Some(&kite_key_auth(&early_key)),
            Some(&json!({"url": url_of(&k2)})),
        )
        .await
        .unwrap();
    assert_eq!(reg.result.kite_key, None);
    kontrol.shutdown().await;
}

pub async fn register_machine_policy(env: &TestEnv) {
    let (kontrol, _s) = start(env, test_config()).await;
    // Disabled by default, like the stock Go binary (Q15 shapes included).
    for arg in [json!({"authType": "kiteKey"}), json!("bob")] {
        assert_eq!(
            kontrol
                .register_machine("bob", Some(&arg))
                .await
                .unwrap_err()
                .to_string(),
            "no valid authentication key found"
        );
    }
    stop(kontrol, _s).await;

    let mut config = test_config();
    config.register_machine = RegisterMachinePolicy::OneTimeSecret("s3cret".into());
    let (kontrol, _s) = start(env, config).await;
    assert_eq!(
        kontrol
            .register_machine("carol", Some(&json!({"secret": "wrong"})))
            .await
            .unwrap_err()
            .to_string(),
        "cannot authenticate user: invalid secret"
    );
    let key = kontrol
        .register_machine(
            "anonymous",
            Some(&json!({"secret": "s3cret", "username": "carol"})),
        )
        .await
        .unwrap();
    let c = claims(&key);
    assert_eq!(c.sub.as_deref(), Some("carol"));
    assert_eq!(c.iss.as_deref(), Some("kontrol"));
    assert_eq!(c.kontrol_url.as_deref(), Some(KONTROL_URL));
    assert_eq!(
        c.kontrol_key.as_deref(),
        Some(kontrol.public_key().as_str())
    );
    // The secret is used up.
    assert_eq!(
        kontrol
            .register_machine("carol", Some(&json!({"secret": "s3cret"})))
            .await
            .unwrap_err()
            .to_string(),
        "no valid authentication key found"
    );
    // The new key works.
    let k = kite("carol", "laptop");
    kontrol
        .register(
            &k,
            Some(&kite_key_auth(&key)),
            Some(&json!({"url": url_of(&k)})),
        )
        .await
        .unwrap();
    kontrol.shutdown().await;
}

pub async fn get_key_rules(env: &TestEnv) {
    let (kontrol, _s) = start(env, test_config()).await;
    let key = key_for(&kontrol, "alice");
    assert_eq!(
        kontrol.get_key(Some(&kite_key_auth(&key))).await.unwrap(),
        kontrol.public_key()
    );
    assert_eq!(
        kontrol
            .get_key(Some(&Authentication::new("token", "x")))
            .await
            .unwrap_err()
            .to_string(),
        "Unexpected authentication type: token"
    );
    let no_key = sign_claims(
        &kontrol.current_key_pair(),
        &Claims {
            kontrol_key: None,
            ..claims(&key)
        },
    )
    .unwrap();
    assert_eq!(
        kontrol
            .get_key(Some(&kite_key_auth(&no_key)))
            .await
            .unwrap_err()
            .to_string(),
        "public key is not passed"
    );
    kontrol.shutdown().await;
}

pub async fn replicas_register_find_watch(env: &TestEnv) {
    let config = test_config();
    let ttl = config.record_ttl();
    let (k1, _s1) = start(env, config.clone()).await;
    let mut config2 = config;
    config2.identity.id = uuid::Uuid::new_v4().to_string();
    let (k2, _s2) = start(env, config2).await;
    // The second replica uses the pair the first generated.
    assert_eq!(k1.current_key_id(), k2.current_key_id());

    // Watch through k2, register through k1.
    let q = query(&[("username", "alice")]);
    let (sink, mut rx) = channel_sink();
    k2.watch("c", &q, "bob", WatchStyle::Handler, sink)
        .await
        .unwrap();
    let k = kite("alice", "math");
    let reg = register(&k1, &k).await;
    let ev = next_event(&mut rx, EVENT_DEADLINE).await;
    assert_eq!(ev["result"]["action"], "REGISTER");
    assert_eq!(ev["result"]["kite"]["id"], json!(k.id));
    let found = k2.get_kites(&query(&[("id", &k.id)]), "bob").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        check_token(&k2.public_key(), &found[0].token, &k).await,
        Ok("bob".into())
    );
    // Tokens for the same audience may come from either replica; both verify.
    let t1 = k1
        .get_token(Some(&json!({"id": k.id})), "bob")
        .await
        .unwrap();
    assert_eq!(
        check_token(&k1.public_key(), &t1, &k).await,
        Ok("bob".into())
    );
    // Heartbeats through the other replica keep it alive.
    assert!(k2.http_heartbeat(&k.id).await.unwrap());

    // Kill k1 (no clean shutdown): its own record expires; k2 goes on serving.
    let k1_id = k1.identity().id.clone();
    drop(k1);
    let keep = {
        let k2 = k2.clone();
        let registration = reg.registration.clone();
        tokio::spawn(async move {
            loop {
                let _ = k2.heartbeat(&registration).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    wait_for(
        "the killed kontrol to expire",
        ttl + EXPIRY_SLACK,
        || async {
            k2.get_kites(&query(&[("id", &k1_id)]), "bob")
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        k2.get_kites(&query(&[("id", &k.id)]), "bob")
            .await
            .unwrap()
            .len(),
        1
    );
    keep.abort();

    // A rotation through one replica reaches the other at its next key reload.
    let (k3, _s3) = {
        let mut c = test_config();
        c.identity.id = uuid::Uuid::new_v4().to_string();
        start(env, c).await
    };
    let new_id = k3.rotate_keys().await.unwrap();
    assert!(k2.reload_keys().await.unwrap());
    assert_eq!(k2.current_key_id(), new_id);
    assert_eq!(k2.public_key(), k3.public_key());
    k2.shutdown().await;
    k3.shutdown().await;
}
