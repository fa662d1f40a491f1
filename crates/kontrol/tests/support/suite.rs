//! The behavioural suite every storage backend must pass. Each test gets a fresh, isolated
//! store (its own data directory, PostgreSQL database or etcd prefix) from a [`TestEnv`].

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use kite_protocol::{Kite, KontrolQuery};
use kontrol::storage::{
    KeyPair, KiteRecord, NewKeyPair, Registration, StorageError, ValidationError, WatchAction,
    WatchEvent, Watcher,
};

use super::TestEnv;

/// Instantiates the suite for one backend: `storage_suite!(support::embedded_env);`.
macro_rules! storage_suite {
    ($env:path) => {
        $crate::support::backend_tests!($env => support::suite {
            upsert_get_refresh_delete,
            query_rules,
            bad_input_is_rejected,
            expiry_is_prompt,
            count_excludes_expired,
            restart_keeps_records_and_key_pairs,
            watch_register_deregister_expiry,
            watch_identity_change,
            key_pair_lifecycle,
            concurrent_upserts,
        });
    };
}
pub(crate) use storage_suite;

/// Tests of several Kontrol processes sharing one store (PostgreSQL, etcd).
#[allow(unused_macros)]
macro_rules! replica_suite {
    ($env:path) => {
        $crate::support::backend_tests!($env => support::suite {
            replicas_share_records_and_events,
            replicas_share_key_pairs,
            replicas_race_on_one_kite,
        });
    };
}
#[allow(unused_imports)]
pub(crate) use replica_suite;

/// Short TTL for expiry tests: etcd leases are at least 2 s.
pub const SHORT: Duration = Duration::from_secs(2);
pub const LONG: Duration = Duration::from_secs(600);
/// Upper bound for an event to arrive (expiry events: TTL + sweep/lease check).
pub const EVENT_DEADLINE: Duration = Duration::from_secs(15);

pub fn kite(u: &str, e: &str, n: &str, v: &str, r: &str, h: &str, id: &str) -> Kite {
    Kite {
        username: u.into(),
        environment: e.into(),
        name: n.into(),
        version: v.into(),
        region: r.into(),
        hostname: h.into(),
        id: id.into(),
    }
}

pub fn reg(kite: &Kite, url: &str) -> Registration {
    Registration {
        kite: kite.clone(),
        url: url.into(),
        key_id: "key-1".into(),
    }
}

pub fn q(fields: &[(&str, &str)]) -> KontrolQuery {
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
            other => panic!("unknown field {other}"),
        };
        *slot = (*v).into();
    }
    q
}

fn ids(records: &[KiteRecord]) -> BTreeSet<String> {
    records.iter().map(|r| r.kite.id.clone()).collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

pub async fn next_event(w: &mut Watcher) -> WatchEvent {
    match tokio::time::timeout(EVENT_DEADLINE, w.recv()).await {
        Ok(Ok(ev)) => ev,
        Ok(Err(e)) => panic!("watch error: {e}"),
        Err(_) => panic!("no watch event within {EVENT_DEADLINE:?}"),
    }
}

async fn expect_event(w: &mut Watcher, action: WatchAction, id: &str) -> KiteRecord {
    let ev = next_event(w).await;
    assert_eq!(
        (ev.action, ev.record.kite.id.as_str()),
        (action, id),
        "unexpected event {ev:?}"
    );
    ev.record
}

/// Waits (wall clock) until `t` has passed.
async fn sleep_past(t: SystemTime) {
    if let Ok(d) = t.duration_since(SystemTime::now()) {
        tokio::time::sleep(d + Duration::from_millis(20)).await;
    }
}

fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub async fn upsert_get_refresh_delete(env: &TestEnv) {
    let s = env.connect().await;
    let id = uid();
    let k = kite("alice", "prod", "math", "1.0.0", "eu-west", "h1", &id);
    let wall = SystemTime::now();
    let rec = s
        .upsert(
            &reg(&k, "http://10.0.0.5:3636/kite"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(rec.kite, k);
    assert_eq!(rec.url, "http://10.0.0.5:3636/kite");
    assert_eq!(rec.key_id, "key-1");
    assert_eq!(rec.created_at, rec.updated_at);
    assert_eq!(
        rec.expires_at.duration_since(rec.updated_at).unwrap(),
        Duration::from_secs(60)
    );
    let skew = rec
        .created_at
        .duration_since(wall)
        .unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(5), "created_at far from now");

    assert_eq!(s.get(&q(&[("id", &id)])).await.unwrap(), vec![rec.clone()]);
    assert_eq!(s.count().await.unwrap(), 1);

    // Heartbeat: extends, keeps created_at.
    assert!(s.refresh(&id, Duration::from_secs(120)).await.unwrap());
    let got = s.get(&q(&[("id", &id)])).await.unwrap();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.created_at, rec.created_at);
    assert!(r.updated_at >= rec.updated_at);
    assert_eq!(
        r.expires_at.duration_since(r.updated_at).unwrap(),
        Duration::from_secs(120)
    );
    assert_eq!((&r.kite, &r.url, &r.key_id), (&k, &rec.url, &rec.key_id));

    // Re-registration of a live kite keeps its start time, takes the new URL and key id.
    let mut again = reg(&k, "http://10.0.0.6:3636/kite");
    again.key_id = "key-2".into();
    let rec2 = s.upsert(&again, Duration::from_secs(60)).await.unwrap();
    assert_eq!(rec2.created_at, rec.created_at);
    let got = s.get(&q(&[("username", "alice")])).await.unwrap();
    assert_eq!(got, vec![rec2.clone()]);

    assert!(s.delete(&id).await.unwrap());
    assert!(s.get(&q(&[("id", &id)])).await.unwrap().is_empty());
    assert_eq!(s.count().await.unwrap(), 0);
    assert!(!s.refresh(&id, Duration::from_secs(60)).await.unwrap());
    assert!(!s.delete(&id).await.unwrap());
    assert!(!s
        .refresh("never-registered", Duration::from_secs(60))
        .await
        .unwrap());
}

pub async fn query_rules(env: &TestEnv) {
    let s = env.connect().await;
    let kites = [
        kite("alice", "prod", "math", "1.0.0", "eu-west", "h1", "id-a"),
        kite("alice", "prod", "math", "1.2.0", "eu-west", "h2", "id-b"),
        kite("alice", "prod", "math", "1.4.0", "us-east", "h1", "id-c"),
        kite("alice", "staging", "math", "1.0.0", "eu-west", "h1", "id-d"),
        kite("bob", "prod", "math", "1.0.0", "eu", "h1", "id-e"),
        kite("alice", "prod", "fs", "2.0.0", "eu-west", "h1", "id-f"),
        kite(
            "alice",
            "prod",
            "math",
            "1.1.0-beta",
            "eu-west",
            "h3",
            "id-g",
        ),
    ];
    for k in &kites {
        s.upsert(&reg(k, &format!("http://{}/kite", k.id)), LONG)
            .await
            .unwrap();
    }
    let full_a: Vec<(&str, &str)> = vec![
        ("username", "alice"),
        ("environment", "prod"),
        ("name", "math"),
        ("version", "1.0.0"),
        ("region", "eu-west"),
        ("hostname", "h1"),
        ("id", "id-a"),
    ];
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a [&'a str]);
    let cases: Vec<Case<'_>> = vec![
        (full_a, &["id-a"]),
        (
            vec![("username", "alice")],
            &["id-a", "id-b", "id-c", "id-d", "id-f", "id-g"],
        ),
        (
            vec![
                ("username", "alice"),
                ("environment", "prod"),
                ("name", "math"),
            ],
            &["id-a", "id-b", "id-c", "id-g"],
        ),
        // Gaps are allowed.
        (
            vec![("username", "alice"), ("name", "math")],
            &["id-a", "id-b", "id-c", "id-d", "id-g"],
        ),
        (vec![("username", "alice"), ("id", "id-c")], &["id-c"]),
        (vec![("username", "bob"), ("id", "id-c")], &[]),
        (vec![("id", "id-e")], &["id-e"]),
        (vec![("name", "fs")], &["id-f"]),
        (
            vec![("region", "eu-west"), ("hostname", "h1")],
            &["id-a", "id-d", "id-f"],
        ),
        (vec![("environment", "staging")], &["id-d"]),
        // Exact comparison: no prefix matching of region or version.
        (vec![("region", "eu")], &["id-e"]),
        (vec![("version", "1.0.0")], &["id-a", "id-d", "id-e"]),
        (vec![("version", "1.0")], &[]),
        // Version constraints (pre-releases only match constraints naming one).
        (
            vec![
                ("username", "alice"),
                ("name", "math"),
                ("version", ">= 1.0, < 1.4"),
            ],
            &["id-a", "id-b", "id-d"],
        ),
        (
            vec![("name", "math"), ("version", "~> 1.1")],
            &["id-b", "id-c"],
        ),
        (
            vec![("name", "math"), ("version", "!= 1.0.0")],
            &["id-b", "id-c", "id-g"],
        ),
        (
            vec![
                ("name", "math"),
                ("version", ">= 1.0"),
                ("region", "us-east"),
            ],
            &["id-c"],
        ),
        (
            vec![
                ("username", "alice"),
                ("environment", "prod"),
                ("name", "math"),
                ("version", "> 9"),
            ],
            &[],
        ),
        (vec![("username", "nobody")], &[]),
        (vec![("id", "no-such-id")], &[]),
    ];
    for (query, want) in cases {
        let got = s.get(&q(&query)).await.unwrap();
        assert_eq!(ids(&got), set(want), "query {query:?}");
        for r in &got {
            assert_eq!(r.url, format!("http://{}/kite", r.kite.id));
        }
    }
    let err = s
        .get(&q(&[("username", "alice"), ("version", "latest")]))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Malformed constraint: latest");
    let err = s.get(&KontrolQuery::default()).await.unwrap_err();
    assert!(matches!(
        err,
        StorageError::Invalid(ValidationError::EmptyQuery)
    ));
    assert_eq!(err.to_string(), "all query fields are empty");
    let err = s.get(&q(&[("username", "a/b")])).await.unwrap_err();
    assert_eq!(err.to_string(), "Field \"username\" must not contain '/'");
}

pub async fn bad_input_is_rejected(env: &TestEnv) {
    let s = env.connect().await;
    let good = kite("alice", "prod", "math", "1.0.0", "eu", "h1", "id-1");
    let names = [
        "username",
        "environment",
        "name",
        "version",
        "region",
        "hostname",
        "id",
    ];
    for (i, name) in names.iter().enumerate() {
        for (value, want) in [
            (String::new(), format!("Empty Kite field: {name}")),
            (
                "a/b".to_string(),
                format!("Field \"{name}\" must not contain '/'"),
            ),
            (
                "a\0b".to_string(),
                format!("Field \"{name}\" must not contain NUL characters"),
            ),
            (
                "x".repeat(256),
                format!("Field \"{name}\" is too long: 256 bytes, the limit is 255"),
            ),
        ] {
            let mut k = good.clone();
            let slot = match i {
                0 => &mut k.username,
                1 => &mut k.environment,
                2 => &mut k.name,
                3 => &mut k.version,
                4 => &mut k.region,
                5 => &mut k.hostname,
                _ => &mut k.id,
            };
            *slot = value;
            let err = s.upsert(&reg(&k, "http://h/kite"), LONG).await.unwrap_err();
            assert!(matches!(err, StorageError::Invalid(_)), "{err:?}");
            assert!(err.is_client_error());
            assert_eq!(err.to_string(), want);
        }
    }
    let err = s.upsert(&reg(&good, ""), LONG).await.unwrap_err();
    assert_eq!(err.to_string(), "empty url");
    let err = s
        .upsert(&reg(&good, &"u".repeat(3000)), LONG)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StorageError::Invalid(ValidationError::FieldTooLong { field: "url", .. })
    ));
    let mut no_key = reg(&good, "http://h/kite");
    no_key.key_id.clear();
    assert_eq!(
        s.upsert(&no_key, LONG).await.unwrap_err().to_string(),
        "empty key id"
    );
    for ttl in [Duration::ZERO, Duration::from_secs(2 * 24 * 3600)] {
        let err = s
            .upsert(&reg(&good, "http://h/kite"), ttl)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StorageError::Invalid(ValidationError::InvalidTtl { .. })
        ));
        let err = s.refresh("id-1", ttl).await.unwrap_err();
        assert!(matches!(
            err,
            StorageError::Invalid(ValidationError::InvalidTtl { .. })
        ));
    }
    assert_eq!(
        s.refresh("", LONG).await.unwrap_err().to_string(),
        "Empty Kite field: id"
    );
    assert_eq!(
        s.delete("a/b").await.unwrap_err().to_string(),
        "Field \"id\" must not contain '/'"
    );
    let err = s.watch(&KontrolQuery::default()).await.unwrap_err();
    assert_eq!(err.to_string(), "all query fields are empty");
    let err = s.watch(&q(&[("version", ">= banana")])).await.unwrap_err();
    assert_eq!(err.to_string(), "Malformed constraint: >= banana");
    for (pair, want) in [
        (
            NewKeyPair {
                id: None,
                public: "  \n".into(),
                private: "priv".into(),
            },
            "key pair public key is empty",
        ),
        (
            NewKeyPair {
                id: None,
                public: "pub".into(),
                private: "".into(),
            },
            "key pair private key is empty",
        ),
        (
            NewKeyPair {
                id: Some(" ".into()),
                public: "pub".into(),
                private: "priv".into(),
            },
            "key pair id is empty",
        ),
    ] {
        let err = s.add_key_pair(&pair).await.unwrap_err();
        assert_eq!(err.to_string(), want);
    }
    // Nothing was stored.
    assert_eq!(s.count().await.unwrap(), 0);
    assert!(s.key_pairs().await.unwrap().is_empty());
}

pub async fn expiry_is_prompt(env: &TestEnv) {
    let s = env.connect().await;
    let id = uid();
    let k = kite("alice", "prod", "math", "1.0.0", "eu", "h1", &id);
    let mut w = s.watch(&q(&[("id", &id)])).await.unwrap();
    let first = s.upsert(&reg(&k, "http://h/kite"), SHORT).await.unwrap();
    expect_event(&mut w, WatchAction::Register, &id).await;

    // Heartbeats keep it alive well past its first expiry.
    let keep_until = first.expires_at + SHORT;
    while SystemTime::now() < keep_until {
        assert!(
            s.refresh(&id, SHORT).await.unwrap(),
            "refresh of a live kite"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let got = s.get(&q(&[("id", &id)])).await.unwrap();
    assert_eq!(got.len(), 1, "a heartbeating kite must stay");
    assert_eq!(got[0].created_at, first.created_at);
    let last_expiry = got[0].expires_at;

    // Heartbeats stop: once its expiry has passed the kite is gone at once, before any sweep.
    sleep_past(last_expiry).await;
    assert!(s.get(&q(&[("id", &id)])).await.unwrap().is_empty());
    assert!(s
        .get(&q(&[("username", "alice")]))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.count().await.unwrap(), 0);
    assert!(!s.refresh(&id, SHORT).await.unwrap(), "registeragain");

    // And the change feed reports it.
    let rec = expect_event(&mut w, WatchAction::Deregister, &id).await;
    assert_eq!(rec.kite, k);
    assert_eq!(rec.url, "http://h/kite");
}

pub async fn count_excludes_expired(env: &TestEnv) {
    let s = env.connect().await;
    let short = s
        .upsert(
            &reg(
                &kite("u", "e", "n", "1.0.0", "r", "h", "short"),
                "http://a/kite",
            ),
            SHORT,
        )
        .await
        .unwrap();
    s.upsert(
        &reg(
            &kite("u", "e", "n", "1.0.0", "r", "h", "long"),
            "http://b/kite",
        ),
        LONG,
    )
    .await
    .unwrap();
    assert_eq!(s.count().await.unwrap(), 2);
    sleep_past(short.expires_at).await;
    assert_eq!(s.count().await.unwrap(), 1);
    let got = s.get(&q(&[("username", "u")])).await.unwrap();
    assert_eq!(ids(&got), set(&["long"]));
}

fn pem(tag: &str, body: &str) -> String {
    format!("-----BEGIN {tag}-----\n{body}\n-----END {tag}-----")
}

fn new_pair(n: u32) -> NewKeyPair {
    NewKeyPair {
        id: None,
        public: pem("PUBLIC KEY", &format!("public-{n}")),
        private: pem("PRIVATE KEY", &format!("private-{n}")),
    }
}

pub async fn restart_keeps_records_and_key_pairs(env: &TestEnv) {
    let s = env.connect().await;
    let long = s
        .upsert(
            &reg(
                &kite("u", "e", "n", "1.0.0", "r", "h", "long"),
                "http://a/kite",
            ),
            LONG,
        )
        .await
        .unwrap();
    let short = s
        .upsert(
            &reg(
                &kite("u", "e", "n", "1.0.0", "r", "h", "short"),
                "http://b/kite",
            ),
            SHORT,
        )
        .await
        .unwrap();
    let kp1 = s.add_key_pair(&new_pair(1)).await.unwrap();
    let kp2 = s.add_key_pair(&new_pair(2)).await.unwrap();
    s.delete_key_pair(&kp1.id).await.unwrap();
    drop(s);

    // Restart after the short registration expired.
    sleep_past(short.expires_at).await;
    let s = env.connect().await;
    let got = s.get(&q(&[("username", "u")])).await.unwrap();
    assert_eq!(got, vec![long.clone()], "only the live record is served");
    assert_eq!(s.count().await.unwrap(), 1);
    assert!(!s.refresh("short", LONG).await.unwrap());
    assert!(s.refresh("long", LONG).await.unwrap());

    let pairs = s.key_pairs().await.unwrap();
    assert_eq!(
        pairs.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        vec![kp1.id.as_str(), kp2.id.as_str()]
    );
    assert!(pairs[0].is_deleted());
    assert_eq!(pairs[1], kp2);
    assert_eq!(s.current_key_pair().await.unwrap(), Some(kp2.clone()));
    assert!(matches!(
        s.key_pair(&kp1.id).await.unwrap_err(),
        StorageError::KeyPairRemoved
    ));
    assert_eq!(s.key_pair(&kp2.id).await.unwrap(), kp2);
    // Kontrol re-adds its configured pair at every start: idempotent.
    assert_eq!(s.add_key_pair(&new_pair(2)).await.unwrap(), kp2);
    s.close().await.unwrap();

    // A clean close works too.
    let s = env.connect().await;
    assert_eq!(s.get(&q(&[("id", "long")])).await.unwrap().len(), 1);
}

pub async fn watch_register_deregister_expiry(env: &TestEnv) {
    let s = env.connect().await;
    let mut alice = s.watch(&q(&[("username", "alice")])).await.unwrap();
    let mut math = s
        .watch(&q(&[("name", "math"), ("version", "~> 1.0")]))
        .await
        .unwrap();

    let a = kite("alice", "prod", "math", "1.0.0", "eu", "h1", "a");
    let b = kite("bob", "prod", "math", "1.2.0", "eu", "h1", "b");
    let f = kite("alice", "prod", "fs", "1.0.0", "eu", "h1", "f");

    let ra = s.upsert(&reg(&a, "http://a/kite"), LONG).await.unwrap();
    let ev = next_event(&mut alice).await;
    assert_eq!(
        ev,
        WatchEvent {
            action: WatchAction::Register,
            record: ra.clone()
        }
    );
    assert_eq!(ev.action.to_string(), "REGISTER");
    s.upsert(&reg(&b, "http://b/kite"), LONG).await.unwrap(); // not alice
    s.upsert(&reg(&f, "http://f/kite"), LONG).await.unwrap(); // not math
                                                              // An identical re-registration is not a change.
    s.upsert(&reg(&a, "http://a/kite"), LONG).await.unwrap();
    // A new URL is.
    let ra2 = s.upsert(&reg(&a, "http://a2/kite"), LONG).await.unwrap();
    s.refresh("a", LONG).await.unwrap(); // refreshes are silent
    assert!(s.delete("a").await.unwrap());
    let short = kite("alice", "prod", "math", "1.0.1", "eu", "h2", "short");
    s.upsert(&reg(&short, "http://s/kite"), SHORT)
        .await
        .unwrap();

    expect_event(&mut alice, WatchAction::Register, "f").await;
    let r = expect_event(&mut alice, WatchAction::Register, "a").await;
    assert_eq!(r, ra2);
    let r = expect_event(&mut alice, WatchAction::Deregister, "a").await;
    assert_eq!(r.url, "http://a2/kite");
    expect_event(&mut alice, WatchAction::Register, "short").await;
    let ev = next_event(&mut alice).await;
    assert_eq!(
        (ev.action, ev.record.kite.id.as_str()),
        (WatchAction::Deregister, "short"),
        "expiry must be reported"
    );
    assert_eq!(ev.action.to_string(), "DEREGISTER");

    expect_event(&mut math, WatchAction::Register, "a").await;
    expect_event(&mut math, WatchAction::Register, "b").await;
    expect_event(&mut math, WatchAction::Register, "a").await;
    expect_event(&mut math, WatchAction::Deregister, "a").await;
    expect_event(&mut math, WatchAction::Register, "short").await;
    expect_event(&mut math, WatchAction::Deregister, "short").await;
}

pub async fn watch_identity_change(env: &TestEnv) {
    let s = env.connect().await;
    let mut w = s.watch(&q(&[("username", "alice")])).await.unwrap();
    let v1 = kite("alice", "prod", "math", "1.0.0", "eu", "h1", "x");
    let v2 = kite("alice", "prod", "math", "2.0.0", "eu", "h1", "x");
    s.upsert(&reg(&v1, "http://x/kite"), LONG).await.unwrap();
    s.upsert(&reg(&v2, "http://x/kite"), LONG).await.unwrap();
    assert_eq!(
        expect_event(&mut w, WatchAction::Register, "x").await.kite,
        v1
    );
    assert_eq!(
        expect_event(&mut w, WatchAction::Deregister, "x")
            .await
            .kite,
        v1
    );
    assert_eq!(
        expect_event(&mut w, WatchAction::Register, "x").await.kite,
        v2
    );
    assert!(s.get(&q(&[("version", "1.0.0")])).await.unwrap().is_empty());
    let got = s
        .get(&q(&[
            ("username", "alice"),
            ("environment", "prod"),
            ("name", "math"),
        ]))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].kite, v2);
    assert_eq!(s.count().await.unwrap(), 1);
}

pub async fn key_pair_lifecycle(env: &TestEnv) {
    let s = env.connect().await;
    assert_eq!(s.current_key_pair().await.unwrap(), None);
    let mut padded = new_pair(1);
    padded.public = format!("\n  {}\n\n", padded.public);
    let kp1 = s.add_key_pair(&padded).await.unwrap();
    assert!(
        uuid::Uuid::parse_str(&kp1.id).is_ok(),
        "generated id is a UUID"
    );
    assert_eq!(kp1.public, new_pair(1).public, "PEMs are trimmed");
    assert!(!kp1.is_deleted());
    // Idempotent.
    assert_eq!(s.add_key_pair(&new_pair(1)).await.unwrap(), kp1);
    // Conflicts.
    let mut other_private = new_pair(1);
    other_private.private = "something else".into();
    assert!(matches!(
        s.add_key_pair(&other_private).await.unwrap_err(),
        StorageError::KeyPairConflict(_)
    ));
    let mut same_id = new_pair(9);
    same_id.id = Some(kp1.id.clone());
    assert!(matches!(
        s.add_key_pair(&same_id).await.unwrap_err(),
        StorageError::KeyPairConflict(_)
    ));

    let mut with_id = new_pair(2);
    with_id.id = Some("kp-2".into());
    let kp2 = s.add_key_pair(&with_id).await.unwrap();
    assert_eq!(kp2.id, "kp-2");
    assert!(kp2.created_at >= kp1.created_at);

    assert_eq!(s.key_pair(&kp1.id).await.unwrap(), kp1);
    assert_eq!(
        s.key_pair_by_public(&format!(" {} \n", kp2.public))
            .await
            .unwrap(),
        kp2
    );
    assert!(s.is_valid_key_pair(&kp1.public).await.unwrap());
    assert_eq!(s.current_key_pair().await.unwrap(), Some(kp2.clone()));

    s.delete_key_pair("kp-2").await.unwrap();
    s.delete_key_pair("kp-2").await.unwrap(); // idempotent
    for err in [
        s.key_pair("kp-2").await.unwrap_err(),
        s.key_pair_by_public(&kp2.public).await.unwrap_err(),
        s.add_key_pair(&with_id).await.unwrap_err(),
    ] {
        assert!(matches!(err, StorageError::KeyPairRemoved), "{err:?}");
        assert_eq!(err.to_string(), "key pair is removed");
    }
    assert!(!s.is_valid_key_pair(&kp2.public).await.unwrap());
    assert_eq!(s.current_key_pair().await.unwrap(), Some(kp1.clone()));

    let err = s.key_pair("unknown").await.unwrap_err();
    assert!(matches!(err, StorageError::KeyPairNotFound));
    assert_eq!(err.to_string(), "no key pair found");
    assert!(matches!(
        s.key_pair_by_public("nope").await.unwrap_err(),
        StorageError::KeyPairNotFound
    ));
    assert!(!s.is_valid_key_pair("nope").await.unwrap());
    assert!(matches!(
        s.delete_key_pair("unknown").await.unwrap_err(),
        StorageError::KeyPairNotFound
    ));

    let all: Vec<KeyPair> = s.key_pairs().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], kp1);
    assert_eq!(all[1].id, "kp-2");
    let deleted_at = all[1].deleted_at.expect("deleted");
    assert!(deleted_at >= all[1].created_at);

    let kp3 = s.add_key_pair(&new_pair(3)).await.unwrap();
    assert_eq!(s.current_key_pair().await.unwrap(), Some(kp3));
}

pub async fn concurrent_upserts(env: &TestEnv) {
    // Spawned tasks: the storage is Send + Sync and its futures are Send.
    let s = std::sync::Arc::new(env.connect().await);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let k = kite("crowd", "prod", "n", "1.0.0", "r", "h", &format!("id-{i}"));
                s.upsert(&reg(&k, "http://h/kite"), LONG).await.unwrap();
                assert!(s.refresh(&k.id, LONG).await.unwrap());
                s.get(&q(&[("id", &k.id)])).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().len(), 1);
    }
    assert_eq!(s.count().await.unwrap(), 200);
    assert_eq!(
        s.get(&q(&[("username", "crowd")])).await.unwrap().len(),
        200
    );
}

pub async fn replicas_share_records_and_events(env: &TestEnv) {
    let a = env.connect().await;
    let b = env.connect().await;
    let mut wa = a.watch(&q(&[("name", "math")])).await.unwrap();
    let mut wb = b.watch(&q(&[("name", "math")])).await.unwrap();

    let k1 = kite("alice", "prod", "math", "1.0.0", "eu", "h1", "k1");
    let r1 = a.upsert(&reg(&k1, "http://k1/kite"), LONG).await.unwrap();
    assert_eq!(b.get(&q(&[("id", "k1")])).await.unwrap(), vec![r1.clone()]);
    assert_eq!(expect_event(&mut wb, WatchAction::Register, "k1").await, r1);
    expect_event(&mut wa, WatchAction::Register, "k1").await;

    // A heartbeat handled by the other replica.
    assert!(b.refresh("k1", LONG).await.unwrap());
    assert!(b.delete("k1").await.unwrap());
    expect_event(&mut wa, WatchAction::Deregister, "k1").await;
    expect_event(&mut wb, WatchAction::Deregister, "k1").await;
    assert!(a.get(&q(&[("id", "k1")])).await.unwrap().is_empty());

    // An expiry reaches every replica, whichever one removes it.
    let k2 = kite("alice", "prod", "math", "1.0.0", "eu", "h1", "k2");
    a.upsert(&reg(&k2, "http://k2/kite"), SHORT).await.unwrap();
    expect_event(&mut wb, WatchAction::Register, "k2").await;
    expect_event(&mut wa, WatchAction::Register, "k2").await;
    expect_event(&mut wb, WatchAction::Deregister, "k2").await;
    expect_event(&mut wa, WatchAction::Deregister, "k2").await;

    // Replica a goes away; b keeps serving and sweeping.
    drop(wa);
    drop(a);
    let k3 = kite("alice", "prod", "math", "1.0.0", "eu", "h1", "k3");
    b.upsert(&reg(&k3, "http://k3/kite"), SHORT).await.unwrap();
    expect_event(&mut wb, WatchAction::Register, "k3").await;
    expect_event(&mut wb, WatchAction::Deregister, "k3").await;
    assert_eq!(b.count().await.unwrap(), 0);
}

pub async fn replicas_share_key_pairs(env: &TestEnv) {
    let a = env.connect().await;
    let b = env.connect().await;
    let kp = a.add_key_pair(&new_pair(1)).await.unwrap();
    assert_eq!(b.key_pair(&kp.id).await.unwrap(), kp);
    assert_eq!(b.current_key_pair().await.unwrap(), Some(kp.clone()));
    // Both replicas adding the configured pair at start end up with one pair.
    assert_eq!(b.add_key_pair(&new_pair(1)).await.unwrap(), kp);
    b.delete_key_pair(&kp.id).await.unwrap();
    assert!(matches!(
        a.key_pair(&kp.id).await.unwrap_err(),
        StorageError::KeyPairRemoved
    ));
    assert_eq!(a.current_key_pair().await.unwrap(), None);
}

/// Two replicas hammer the same kite id (re-registrations changing its version, refreshes):
/// every operation succeeds or reports a conflict, and the store ends consistent — one
/// record, reachable by every query path.
pub async fn replicas_race_on_one_kite(env: &TestEnv) {
    let a = std::sync::Arc::new(env.connect().await);
    let b = std::sync::Arc::new(env.connect().await);
    let mut tasks = Vec::new();
    for t in 0..10 {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..4 {
                let version = if (t + i) % 2 == 0 { "1.0.0" } else { "2.0.0" };
                let k = kite("alice", "prod", "math", version, "eu", "h1", "same");
                match s
                    .upsert(&reg(&k, &format!("http://{t}-{i}/kite")), LONG)
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(StorageError::Conflict(_)) => {}
                    Err(e) => panic!("upsert: {e}"),
                }
                match s.refresh("same", LONG).await {
                    Ok(live) => assert!(live),
                    Err(StorageError::Conflict(_)) => {}
                    Err(e) => panic!("refresh: {e}"),
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert!(ok > 0);
    for s in [&a, &b] {
        let all = s.get(&q(&[("username", "alice")])).await.unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        let by_id = s.get(&q(&[("id", "same")])).await.unwrap();
        assert_eq!(by_id, all);
        let by_version = s
            .get(&q(&[("version", &all[0].kite.version)]))
            .await
            .unwrap();
        assert_eq!(by_version, all);
        assert_eq!(s.count().await.unwrap(), 1);
    }
}
