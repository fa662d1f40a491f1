//! `incoming::decode` (typed fast path with a general fallback) must give exactly what the
//! general pipeline gives: `Message::decode` → `unscrub` → options' extra keys taken out →
//! `Request::from_arguments` for calls, `decode_response` for responses.

#![allow(clippy::unwrap_used)]

use kite_protocol::dnode::{Limits, Message, Method, UnscrubReport};
use kite_protocol::envelope::{self, Request, RequestError};
use kite_protocol::incoming::{self, Incoming, STANDARD_KEYS};
use kite_protocol::{Authentication, Kite, KiteError};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde_json::{json, Map, Value};

type Fields = Map<String, Value>;
type CallOutcome = Result<
    (
        Kite,
        Option<Authentication>,
        Vec<Value>,
        Option<u64>,
        Fields,
    ),
    RequestError,
>;

/// The general pipeline, spelled out.
fn reference_call(text: &str, limits: &Limits) -> Option<(String, CallOutcome, UnscrubReport)> {
    let mut msg = Message::decode(text, limits).ok()?;
    let report = msg.unscrub(limits);
    let Method::Name(name) = msg.method else {
        return None;
    };
    let mut fields = Map::new();
    if let Some(Value::Object(options)) = msg.arguments.get_mut(0) {
        let keys: Vec<String> = options
            .keys()
            .filter(|k| !STANDARD_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in keys {
            let v = options.remove(&k).unwrap();
            fields.insert(k, v);
        }
    }
    let outcome = Request::from_arguments(msg.arguments).map(|r| {
        (
            r.kite,
            r.authentication,
            r.with_args,
            r.response_callback,
            fields,
        )
    });
    Some((name, outcome, report))
}

fn fast_call(text: &str, limits: &Limits) -> Option<(String, CallOutcome, UnscrubReport)> {
    let Incoming::Call(call) = incoming::decode(text, limits).ok()? else {
        return None;
    };
    let rc = call.response_callback();
    let outcome = call.request.map(|r| {
        assert_eq!(rc, r.response_callback);
        (
            r.kite.to_kite(),
            r.authentication.as_ref().map(|a| a.to_authentication()),
            r.with_args,
            r.response_callback,
            r.fields,
        )
    });
    Some((call.method.into_owned(), outcome, call.report))
}

fn check(text: &str) {
    let limits = Limits::default();
    let general = Message::decode(text, &limits);
    let fast = incoming::decode(text, &limits);
    assert_eq!(general.is_ok(), fast.is_ok(), "{text}");
    let Ok(general) = general else { return };
    match general.method {
        Method::Name(_) => {
            assert_eq!(
                reference_call(text, &limits),
                fast_call(text, &limits),
                "{text}"
            );
        }
        Method::Callback(id) => {
            let mut msg = general;
            let report = msg.unscrub(&limits);
            let args = match msg.arguments {
                Value::Array(a) => a,
                other => vec![other],
            };
            let Ok(Incoming::Callback(cb)) = incoming::decode(text, &limits) else {
                panic!("not a callback: {text}");
            };
            assert_eq!(cb.id, id);
            assert_eq!(cb.arguments().unwrap(), (args.clone(), report), "{text}");
            let Ok(Incoming::Callback(cb)) = incoming::decode(text, &limits) else {
                unreachable!()
            };
            let (outcome, _) = cb.response().unwrap();
            let expected: Result<Value, KiteError> = envelope::decode_response(Value::Array(args));
            assert_eq!(outcome, expected, "{text}");
        }
    }
}

fn text_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "[a-z]{0,6}".prop_map(Value::String),
        1 => "[a-z\"\\\\/\u{e9}\n]{0,6}".prop_map(Value::String),
        1 => Just(Value::Null),
        1 => any::<i32>().prop_map(Value::from),
        1 => Just(json!({"x": 1})),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i16>().prop_map(Value::from),
        "[a-z\"\\\\]{0,4}".prop_map(Value::String),
        Just(Value::String("[Function]".into())),
    ]
}

fn tree() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn kite_value() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "username",
        "environment",
        "name",
        "version",
        "region",
        "hostname",
        "id",
        "other",
    ]);
    prop_oneof![
        6 => prop::collection::btree_map(keys, text_value(), 0..9)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        1 => Just(Value::Null),
        1 => Just(json!(7)),
        1 => Just(json!("kite")),
    ]
}

fn auth_value() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec!["type", "key", "other"]);
    prop_oneof![
        4 => prop::collection::btree_map(keys, text_value(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        2 => Just(Value::Null),
        1 => Just(json!([1])),
    ]
}

fn options() -> impl Strategy<Value = Value> {
    (
        prop::option::of(kite_value()),
        prop::option::of(auth_value()),
        prop::option::of(prop_oneof![4 => tree(), 1 => Just(Value::Null)]),
        prop::option::of(prop_oneof![
            Just(json!("[Function]")),
            Just(json!("[callback 3]")),
            Just(json!(5)),
            Just(Value::Null),
        ]),
        prop::collection::btree_map(
            prop::sample::select(vec!["deadline", "traceparent", "x\"y"]),
            tree(),
            0..3,
        ),
    )
        .prop_map(|(kite, auth, with_args, rc, extra)| {
            let mut m = Map::new();
            for (k, v) in [
                ("kite", kite),
                ("authentication", auth),
                ("withArgs", with_args),
                ("responseCallback", rc),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            for (k, v) in extra {
                m.insert(k.to_string(), v);
            }
            Value::Object(m)
        })
}

fn path() -> impl Strategy<Value = Value> {
    let elem = prop_oneof![
        Just(json!(0)),
        Just(json!(1)),
        Just(json!("0")),
        Just(json!("a")),
        Just(json!("b")),
        Just(json!(-1)),
    ];
    prop_oneof![
        4 => Just(json!([0, "responseCallback"])),
        1 => Just(json!(["0", "responseCallback"])),
        4 => prop::collection::vec(elem.clone(), 1..4).prop_map(|rest| {
            let mut p = vec![json!(0), json!("withArgs")];
            p.extend(rest);
            Value::Array(p)
        }),
        1 => Just(json!([0, "withArgs"])),
        1 => Just(json!([0, "kite", "name"])),
        1 => Just(json!([0, "deadline"])),
        1 => Just(json!([1, "responseCallback"])),
        1 => Just(json!(["00", "responseCallback"])),
        1 => Just(json!([])),
        1 => Just(json!("nope")),
        1 => prop::collection::vec(elem, 0..4).prop_map(Value::Array),
    ]
}

fn callbacks() -> impl Strategy<Value = Value> {
    prop::collection::vec((0u64..6, path()), 0..4).prop_map(|entries| {
        let mut m = Map::new();
        for (id, p) in entries {
            m.insert(id.to_string(), p);
        }
        Value::Object(m)
    })
}

fn arguments() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        8 => options().prop_map(|o| Some(json!([o]))),
        1 => (options(), tree()).prop_map(|(o, t)| Some(json!([o, t]))),
        1 => Just(Some(json!([]))),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => tree().prop_map(|t| Some(json!([t]))),
    ]
}

fn response_arguments() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => (prop::option::of(prop_oneof![Just(Value::Null), Just(json!({"type": "t", "message": "m"})), Just(json!("boom"))]),
              prop::option::of(tree()),
              prop::option::of(tree()))
            .prop_map(|(e, r, other)| {
                let mut m = Map::new();
                if let Some(e) = e { m.insert("error".into(), e); }
                if let Some(r) = r { m.insert("result".into(), r); }
                if let Some(o) = other { m.insert("other".into(), o); }
                Some(json!([Value::Object(m)]))
            }),
        1 => (tree(), tree()).prop_map(|(a, b)| Some(json!([a, b]))),
        1 => tree().prop_map(|t| Some(json!([t]))),
        1 => Just(Some(json!([]))),
        1 => Just(None),
    ]
}

/// The message text; `method_first` writes `method` first (Go's and our order, decoded
/// in one pass), else last (kite.js's order, arguments kept raw until the end).
fn message(
    method: Value,
    arguments: Option<Value>,
    callbacks: Value,
    links: bool,
    method_first: bool,
) -> String {
    let mut parts = Vec::new();
    if let Some(a) = arguments {
        parts.push(format!("\"arguments\":{a}"));
    }
    parts.push(format!("\"callbacks\":{callbacks}"));
    if links {
        parts.push(r#""links":[{"from":[0,"withArgs"],"to":[0,"copy"]}]"#.to_string());
    }
    let method = format!("\"method\":{method}");
    if method_first {
        parts.insert(0, method);
    } else {
        parts.push(method);
    }
    format!("{{{}}}", parts.join(","))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        rng_seed: RngSeed::Fixed(0x1c0_4e77),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn calls_decode_as_the_general_pipeline_does(
        method in prop_oneof![Just(json!("square")), Just(json!("a\"b"))],
        args in arguments(),
        cbs in callbacks(),
        links in prop::bool::weighted(0.1),
        method_first in any::<bool>(),
    ) {
        check(&message(method, args, cbs, links, method_first));
    }

    #[test]
    fn callbacks_decode_as_the_general_pipeline_does(
        id in 0u64..3,
        args in response_arguments(),
        cbs in prop_oneof![3 => Just(json!({})), 1 => callbacks()],
        method_first in any::<bool>(),
    ) {
        check(&message(json!(id), args, cbs, false, method_first));
    }
}

#[test]
fn usual_requests_borrow_identity_and_token_from_the_text() {
    let text = r#"{"method":"square","arguments":[{"authentication":{"key":"eyJ.tok.en","type":"token"},"kite":{"environment":"e","hostname":"h","id":"i","name":"n","region":"r","username":"u","version":"1.0.0"},"responseCallback":"[Function]","withArgs":[4]}],"callbacks":{"0":[0,"responseCallback"]}}"#;
    let limits = Limits::default();
    let Incoming::Call(call) = incoming::decode(text, &limits).unwrap() else {
        panic!("a call")
    };
    let req = call.request.unwrap();
    assert!(matches!(req.kite.id, std::borrow::Cow::Borrowed("i")));
    let auth = req.authentication.unwrap();
    assert!(matches!(auth.key, std::borrow::Cow::Borrowed("eyJ.tok.en")));
    assert_eq!(auth.kind, "token");
    assert_eq!(req.with_args, vec![json!(4)]);
    assert_eq!(req.response_callback, Some(0));
    check(text);
}

#[test]
fn hand_picked_edge_cases_agree() {
    for text in [
        r#"{"method":"m","arguments":[{"withArgs":[1],"withArgs":[2]}],"callbacks":{"0":[0,"withArgs",0]}}"#,
        r#"{"method":"m","arguments":[{"kite":{"name":"a","name":"b"}}],"callbacks":{}}"#,
        r#"{"method":"m","arguments":[{"kite":{"name":5}}],"callbacks":{"1":[0,"responseCallback"]}}"#,
        r#"{"method":"m","arguments":[{"responseCallback":"[callback 7]"}],"callbacks":{}}"#,
        r#"{"method":"m","arguments":[{}],"callbacks":{"0":[0,"withArgs",0]}}"#,
        r#"{"method":"m","arguments":[{"withArgs":5}],"callbacks":{"0":[0,"withArgs",0]}}"#,
        r#"{"method":"m","arguments":[{"withArgs":{"a":1}}],"callbacks":{"0":[0,"withArgs","b"]}}"#,
        r#"{"method":"m","arguments":[{"k\u0069te":{"n\u0061me":"x\ty"}}],"callbacks":{}}"#,
        r#"{"method":"m","arguments":"x","callbacks":{}}"#,
        r#"{"method":"m","arguments":[[[[1]]]],"callbacks":{}}"#,
        r#"{"method":0,"arguments":[{"error":null,"result":{"a":[1,2]}}],"callbacks":{}}"#,
        r#"{"method":0,"arguments":[{"error":{"type":"x","message":"y"}}],"callbacks":{}}"#,
        r#"{"method":0,"arguments":[{"result":1,"result":2}],"callbacks":{}}"#,
        r#"{"method":0,"arguments":[null,{"a":1}],"callbacks":{}}"#,
        r#"{"method":0,"arguments":[{"error":null,"result":"[Function]"}],"callbacks":{"4":[0,"result"]}}"#,
        r#"{"method":"m","arguments":[{"withArgs":[1]}],"method":0}"#,
        r#"{"method":0,"arguments":[{"result":1}],"method":"m"}"#,
        r#"{"method":"m","arguments":[{"withArgs":[1]}],"arguments":[{"withArgs":[2]}]}"#,
        r#"{"method":0,"arguments":[{"result":1}],"arguments":[null,2]}"#,
        r#"{"method":"m","arguments":null,"callbacks":{}}"#,
        r#"{"method":"m","arguments":[{"withArgs":[1]}],"callbacks":{"0":[0,"withArgs",0]},"links":[{"from":[0,"withArgs"],"to":[0,"x"]}]}"#,
    ] {
        check(text);
    }
}
