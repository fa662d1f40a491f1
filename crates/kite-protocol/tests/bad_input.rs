//! Hostile input gives a clear error (or is ignored where the protocol says so), never a
//! panic, hang, stack overflow or unbounded memory.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use kite_protocol::dnode::{Limits, Message, Method};
use kite_protocol::envelope::{self, Request};
use kite_protocol::{sockjs, DecodeError, KiteError};
use serde_json::json;

fn decode(text: &str) -> Result<Message, DecodeError> {
    Message::decode(text, &Limits::default())
}

#[test]
fn not_json() {
    for text in [
        "",
        " ",
        "{",
        "}",
        "nul",
        "{\"method\":\"a\"",
        "{\"method\":\"a\"}}",
        "{method:\"a\"}",
        "{'method':'a'}",
        "{\"method\":\"a\",\"arguments\":[1,]}",
        "\u{feff}{\"method\":\"a\"}",
        "{\"method\":\"\\ud800\"}",
    ] {
        assert!(
            matches!(decode(text), Err(DecodeError::Json(_))),
            "{text:?}"
        );
    }
}

#[test]
fn wrong_json_types_in_every_field() {
    for top in ["null", "true", "1", "\"s\"", "[]", "[{\"method\":\"a\"}]"] {
        assert!(matches!(decode(top), Err(DecodeError::Json(_))), "{top}");
    }
    for method in ["true", "false", "null", "-3", "0.5", "1e400", "[]", "{}"] {
        let text = format!(r#"{{"method":{method}}}"#);
        assert!(
            matches!(
                decode(&text),
                Err(DecodeError::UnsupportedMethod(_)) | Err(DecodeError::Json(_))
            ),
            "{text}"
        );
    }
    for arguments in ["1", "\"s\"", "true", "{}"] {
        let text = format!(r#"{{"method":"a","arguments":{arguments}}}"#);
        assert!(
            matches!(decode(&text), Err(DecodeError::InvalidArguments(_))),
            "{text}"
        );
    }
    for callbacks in ["1", "\"s\"", "true", "[]", "[[0]]"] {
        let text = format!(r#"{{"method":"a","callbacks":{callbacks}}}"#);
        assert!(matches!(decode(&text), Err(DecodeError::Json(_))), "{text}");
    }
    // Path values of the wrong type: the callback is ignored, the message survives.
    for path in [
        "1", "\"0\"", "true", "null", "{}", "[null]", "[[0]]", "[{}]", "[-1]", "[0.5]",
    ] {
        let text =
            format!(r#"{{"method":"a","arguments":["[Function]"],"callbacks":{{"0":{path}}}}}"#);
        let mut msg = decode(&text).unwrap();
        let report = msg.unscrub(&Limits::default());
        assert_eq!((report.installed, report.invalid), (0, 1), "{text}");
        assert_eq!(msg.arguments, json!(["[Function]"]));
    }
    // Links of the wrong type are ignored.
    for links in [
        "1",
        "\"s\"",
        "{}",
        "[1]",
        "[{\"from\":1,\"to\":[0]}]",
        "[{\"from\":[0]}]",
    ] {
        let text = format!(r#"{{"method":"a","arguments":[1],"links":{links}}}"#);
        let mut msg = decode(&text).unwrap();
        msg.unscrub(&Limits::default());
        assert_eq!(msg.arguments, json!([1]), "{text}");
    }
    // The request envelope: wrong types become argumentError with the response callback.
    for options in [
        r#"{"kite":5,"responseCallback":"[Function]"}"#,
        r#"{"kite":{"name":[]},"responseCallback":"[Function]"}"#,
        r#"{"authentication":"abc","responseCallback":"[Function]"}"#,
        r#"{"authentication":{"key":{}},"responseCallback":"[Function]"}"#,
    ] {
        let text = format!(
            r#"{{"method":"a","arguments":[{options}],"callbacks":{{"4":[0,"responseCallback"]}}}}"#
        );
        let mut msg = decode(&text).unwrap();
        msg.unscrub(&Limits::default());
        let err = Request::from_arguments(msg.arguments).unwrap_err();
        assert_eq!(err.response_callback, Some(4), "{text}");
        assert_eq!(err.to_kite_error().kind, KiteError::ARGUMENT_ERROR);
    }
    // Responses of odd shapes are errors, not panics.
    for args in [json!(5), json!([1, 2, 3]), json!({"error": 1})] {
        assert_eq!(
            envelope::decode_response(args).unwrap_err().kind,
            KiteError::INVALID_RESPONSE
        );
    }
}

#[test]
fn callback_paths_into_nowhere_are_ignored() {
    let text = r#"{"method":"square","arguments":[{"kite":{"name":"x"},"withArgs":[1]}],
        "callbacks":{"0":[5],"1":[0,"kite","name","deeper"],"2":[0,"withArgs",9],"3":[0,"nope","x"],
        "4":[0,"withArgs","-1"],"5":[0,"withArgs",1,2],"6":[],"7":[18446744073709551615]}}"#;
    let mut msg = decode(text).unwrap();
    let before = msg.arguments.clone();
    let report = msg.unscrub(&Limits::default());
    assert_eq!(report.installed, 0);
    assert_eq!(report.missing, 1);
    assert_eq!(report.invalid, 7);
    assert_eq!(msg.arguments, before);
    assert_eq!(envelope::response_callback_of(&msg.arguments), None);
}

#[test]
fn non_numeric_callback_ids_drop_the_message() {
    for id in ["x", "-1", "1a", "", "0x1", "1e3", "١"] {
        let text = format!(r#"{{"method":"a","arguments":[],"callbacks":{{"{id}":[0]}}}}"#);
        assert!(
            matches!(decode(&text), Err(DecodeError::InvalidCallbackId(_))),
            "{id:?}"
        );
    }
    let long = "z".repeat(10_000);
    let text = format!(r#"{{"method":"a","callbacks":{{"{long}":[0]}}}}"#);
    match decode(&text) {
        Err(DecodeError::InvalidCallbackId(shown)) => assert!(shown.len() < 64, "shortened"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hundred_thousand_deep_nesting_is_an_error() {
    let deep_array = "[".repeat(100_000);
    let deep_object = "{\"a\":".repeat(100_000);
    for (field, deep) in [("arguments", &deep_array), ("arguments", &deep_object)] {
        let text = format!(r#"{{"method":"a","{field}":{deep}"#);
        assert!(matches!(decode(&text), Err(DecodeError::Json(_))));
    }
    for field in ["method", "callbacks", "links", "unknown"] {
        let text = format!(r#"{{"method":"a","{field}":{deep_array}"#);
        assert!(
            matches!(decode(&text), Err(DecodeError::Json(_))),
            "{field}"
        );
    }
    let text = format!(r#"{{"method":"a","callbacks":{{"0":{deep_array}"#);
    assert!(matches!(decode(&text), Err(DecodeError::Json(_))));
    // Closed nesting just beyond the limit fails too, just within it decodes.
    let nested = |n: usize| {
        format!(
            r#"{{"method":"a","arguments":{}{}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    assert!(decode(&nested(126)).is_ok());
    assert!(matches!(
        decode(&nested(100_000)),
        Err(DecodeError::Json(_))
    ));
    assert!(sockjs::decode_client_frame(&deep_array).is_err());
    assert!(sockjs::decode_server_frame(&format!("a{deep_array}")).is_err());
}

#[test]
fn sixty_four_mib_string_is_rejected_by_size_quickly() {
    let mut text = String::with_capacity(64 * 1024 * 1024 + 32);
    text.push_str(r#"{"method":"a","arguments":[""#);
    text.extend(std::iter::repeat_n('a', 64 * 1024 * 1024));
    text.push_str(r#""]}"#);
    let start = Instant::now();
    let result = decode(&text);
    let took = start.elapsed();
    match result {
        Err(DecodeError::TooLarge { size, max }) => {
            assert_eq!(size, text.len());
            assert_eq!(max, Limits::DEFAULT_MAX_MESSAGE_BYTES);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        took < Duration::from_millis(100),
        "size check is O(1), took {took:?}"
    );
}

#[test]
fn a_million_callbacks_are_rejected_by_the_limit() {
    let mut text = String::from(r#"{"method":"a","arguments":["[Function]"],"callbacks":{"#);
    for i in 0..1_000_000 {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&format!(r#""{i}":[0]"#));
    }
    text.push_str("}}");
    assert!(text.len() < Limits::DEFAULT_MAX_MESSAGE_BYTES);
    assert!(matches!(
        decode(&text),
        Err(DecodeError::TooManyCallbacks {
            max: Limits::DEFAULT_MAX_CALLBACKS
        })
    ));
    // Links are bounded the same way.
    let mut text = String::from(r#"{"method":"a","links":["#);
    for i in 0..1_000_000 {
        if i > 0 {
            text.push(',');
        }
        text.push_str(r#"{"from":[0],"to":[1]}"#);
    }
    text.push_str("]}");
    assert!(text.len() > Limits::DEFAULT_MAX_MESSAGE_BYTES);
    let limits = Limits {
        max_message_bytes: 64 * 1024 * 1024,
        ..Limits::default()
    };
    assert!(matches!(
        Message::decode(&text, &limits),
        Err(DecodeError::TooManyLinks {
            max: Limits::DEFAULT_MAX_LINKS
        })
    ));
}

#[test]
fn links_cannot_amplify_memory() {
    // Copying the tree into alternating halves of itself grows it like Fibonacci: without
    // a budget these 80 links would need ~10^8 values. (Cyclic links — `to` inside
    // `from` — are never applied.)
    let mut links = Vec::new();
    for round in 0..40 {
        links.push(json!({"from": [0], "to": [1]}));
        links.push(json!({"from": [1], "to": [0, round % 2]}));
    }
    let text = json!({"method": "a", "arguments": [[[1, 2, 3], [4, 5, 6]], null], "links": links})
        .to_string();
    let mut msg = decode(&text).unwrap();
    let report = msg.unscrub(&Limits::default());
    assert!(report.links_applied > 4, "{report:?}");
    assert!(report.links_applied < 80, "{report:?}");
    assert_eq!(report.links_applied + report.links_ignored, 80);
    assert!(msg.arguments.to_string().len() < 10 * 1024 * 1024);
}

#[test]
fn unknown_methods_and_callbacks_are_plain_values() {
    let msg = decode(r#"{"method":"cull","arguments":[1]}"#).unwrap();
    assert_eq!(msg.method, Method::Name("cull".into()));
    let msg = decode(r#"{"method":18446744073709551615}"#).unwrap();
    assert_eq!(msg.method, Method::Callback(u64::MAX));
    assert!(matches!(
        decode(r#"{"method":18446744073709551616}"#),
        Err(DecodeError::UnsupportedMethod(_))
    ));
}
