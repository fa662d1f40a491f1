//! The reference encodings of dnode-protocol 0.2.2 (crates/kite-testkit/vectors/dnode-vectors.json):
//! every entry decodes as its notes say, and our scrubber finds the same callback paths
//! (modulo string vs integer array indexes; ids may differ since JS numbers keys in
//! insertion order and we in sorted order).

#![allow(clippy::unwrap_used)]

mod common;

use common::{json, read_vector};
use kite_protocol::dnode::{
    self, callback_marker, function_marker, parse_callback_marker, Callbacks, Limits, Message,
    Method, CIRCULAR_PLACEHOLDER,
};
use serde_json::Value;

fn entries() -> Vec<Value> {
    match json(&read_vector("dnode-vectors.json")) {
        Value::Array(a) => a,
        _ => panic!("dnode-vectors.json is not an array"),
    }
}

/// Paths of an encoded message's callbacks, elements as strings, sorted.
fn normalized_paths(message: &Value) -> Vec<Vec<String>> {
    let mut paths: Vec<Vec<String>> = message["callbacks"]
        .as_object()
        .map(|m| {
            m.values()
                .map(|p| {
                    p.as_array()
                        .unwrap()
                        .iter()
                        .map(|e| match e {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            other => panic!("path element {other}"),
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
}

fn callbacks_to_functions(v: &mut Value, next: &mut usize) {
    match v {
        Value::String(s) if parse_callback_marker(s).is_some() => {
            *s = function_marker(*next);
            *next += 1;
        }
        Value::Array(a) => a.iter_mut().for_each(|x| callbacks_to_functions(x, next)),
        Value::Object(m) => m.values_mut().for_each(|x| callbacks_to_functions(x, next)),
        _ => {}
    }
}

/// Re-creates the call a wire message describes (functions at its callback paths) and
/// encodes it with our scrubber and encoder.
fn rebuild(wire: &Value) -> String {
    let limits = Limits::default();
    let mut msg = Message::decode(&wire.to_string(), &limits).unwrap();
    let report = msg.unscrub(&limits);
    assert_eq!(report.installed, msg.callbacks.len(), "{wire}");
    let mut args = msg.arguments;
    let mut n = 0;
    callbacks_to_functions(&mut args, &mut n);
    let mut next_id = 0;
    let scrubbed = dnode::scrub(&mut args, &mut next_id);
    assert_eq!(scrubbed.len(), n);
    Message::new(msg.method, args, Callbacks::from_scrubbed(&scrubbed)).encode()
}

/// Ours and the reference are the same message: same method and arguments, callbacks at
/// the same paths; we never write `links`.
fn assert_equivalent(ours: &str, wire: &Value) {
    let o = json(ours);
    assert_eq!(o["method"], wire["method"]);
    let expected_args = match wire.get("arguments") {
        None => Value::Array(Vec::new()),
        Some(a) => a.clone(),
    };
    assert_eq!(o["arguments"], expected_args, "ours: {ours}\nref:  {wire}");
    assert_eq!(
        normalized_paths(&o),
        normalized_paths(wire),
        "ours: {ours}\nref:  {wire}"
    );
    assert!(o.get("links").is_none());
}

/// Replaces the vectors' `<fn:N>` / `<cycle>` notation with what we produce.
fn expected_received(v: &Value) -> Value {
    match v {
        Value::String(s) if s.starts_with("<fn:") => {
            let id: u64 = s[4..s.len() - 1].parse().unwrap();
            Value::String(callback_marker(id))
        }
        Value::String(s) if s == "<cycle>" => Value::String(CIRCULAR_PLACEHOLDER.to_string()),
        Value::Array(a) => Value::Array(a.iter().map(expected_received).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), expected_received(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn scrub_entries_match_our_scrubber() {
    let mut seen = 0;
    for entry in entries().iter().filter(|e| e["kind"] == "scrub") {
        let name = entry["name"].as_str().unwrap();
        for wire in entry["wire"].as_array().unwrap() {
            let ours = rebuild(wire);
            assert_equivalent(&ours, wire);
            // Cycles stay "[Circular]": links pointing into their own source are not applied.
            let links = wire["links"].as_array().map_or(0, Vec::len);
            let limits = Limits::default();
            let mut msg = Message::decode(&wire.to_string(), &limits).unwrap();
            assert_eq!(msg.links.len(), links, "{name}");
            let report = msg.unscrub(&limits);
            assert_eq!(
                (report.links_applied, report.links_ignored),
                (0, links),
                "{name}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 14);
}

#[test]
fn scrub_ids_follow_sorted_key_order() {
    // kite.js numbers callbacks in object insertion order (withArgs before
    // responseCallback); with sorted maps we give the response callback the lowest id,
    // like Go does.
    let entry = entries()
        .into_iter()
        .find(|e| e["name"] == "kite-request")
        .unwrap();
    let ours = json(&rebuild(&entry["wire"][0]));
    assert_eq!(
        ours["callbacks"]["0"],
        serde_json::json!([0, "responseCallback"])
    );
    assert_eq!(
        ours["callbacks"]["1"],
        serde_json::json!([0, "withArgs", 0, "onTick"])
    );
    let methods = entries()
        .into_iter()
        .find(|e| e["name"] == "methods-handshake")
        .unwrap();
    let msg = Message::decode(&methods["wire"][0].to_string(), &Limits::default()).unwrap();
    assert_eq!(
        msg.method,
        Method::Name("methods".into()),
        "just another method name"
    );
}

#[test]
fn unscrub_entries_decode_as_documented() {
    let mut seen = 0;
    for entry in entries().iter().filter(|e| e["kind"] == "unscrub") {
        let name = entry["name"].as_str().unwrap();
        let limits = Limits::default();
        let mut msg = Message::decode(&entry["wire"].to_string(), &limits).unwrap();
        assert_eq!(msg.method, Method::Name("call".into()), "{name}");
        msg.unscrub(&limits);
        assert_eq!(
            msg.arguments,
            expected_received(&entry["receivedArguments"]),
            "{name}"
        );
        for emitted in entry["emittedWhenCalled"].as_array().into_iter().flatten() {
            assert_equivalent(&rebuild(emitted), emitted);
        }
        seen += 1;
    }
    assert_eq!(seen, 5);
}

#[test]
fn session_transcript_decodes_and_reencodes() {
    let entry = entries()
        .into_iter()
        .find(|e| e["kind"] == "session")
        .unwrap();
    let lines = entry["transcript"].as_array().unwrap();
    assert_eq!(lines.len(), 9);
    for line in lines {
        let text = line["line"].as_str().unwrap();
        let wire = json(text);
        Message::decode(text, &Limits::default()).unwrap();
        assert_equivalent(&rebuild(&wire), &wire);
    }
}

#[test]
fn every_entry_kind_is_covered() {
    for entry in entries() {
        let kind = entry["kind"].as_str().unwrap();
        assert!(
            ["scrub", "unscrub", "session"].contains(&kind),
            "unknown kind {kind}"
        );
    }
}
