//! One test per wire capture of the Go implementation (crates/kite-testkit/vectors/*.txt): every dnode
//! message decodes, and our encoder produces the same requests, responses and callback
//! invocations as Go.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kite_protocol::dnode::{Limits, Message, Method};
use kite_protocol::envelope::{self, Authentication, Request};
use kite_protocol::sockjs::ServerFrame;
use kite_protocol::{DecodeError, Kite, KiteError, KontrolQuery};
use serde_json::{json, Value};

/// Everything found in a capture, each message already checked against our encoder.
#[derive(Default)]
struct Checked {
    /// Requests: (sender, method, decoded options).
    requests: Vec<(Dir, String, Request)>,
    /// Responses: (sender, callback id, outcome).
    responses: Vec<(Dir, u64, Result<Value, KiteError>)>,
    /// Callback invocations: (sender, id, arguments).
    invocations: Vec<(Dir, u64, Vec<Value>)>,
    /// Server frames seen.
    frames: Vec<ServerFrame>,
}

fn check_capture(name: &str) -> Checked {
    let events = parse_capture(name);
    assert!(!events.is_empty(), "{name}: no wire log");
    let (messages, frames) = dnode_messages(&events);
    let mut checked = Checked {
        frames,
        ..Checked::default()
    };
    for Captured { dir, text } in messages {
        let msg = Message::decode(&text, &Limits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
        match msg.method {
            Method::Name(_) => {
                let r = check_request(&text);
                checked.requests.push((dir, r.method, r.request));
            }
            Method::Callback(id) if is_response(&text) => {
                checked.responses.push((dir, id, check_response(&text)));
            }
            Method::Callback(_) => {
                let (id, args) = check_invocation(&text);
                checked.invocations.push((dir, id, args));
            }
        }
    }
    checked
}

fn go_client_kite(id: &str) -> Kite {
    Kite {
        username: "unknown".into(),
        environment: "unknown".into(),
        name: "gokite-client".into(),
        version: "1.0.0".into(),
        region: "unknown".into(),
        hostname: "vm".into(),
        id: id.into(),
    }
}

/// A single request from the client answered by one response.
fn single_call(name: &str) -> (String, Request, Result<Value, KiteError>) {
    let mut c = check_capture(name);
    assert_eq!(c.requests.len(), 1, "{name}");
    assert_eq!(c.responses.len(), 1, "{name}");
    let (dir, method, req) = c.requests.remove(0);
    assert_eq!(dir, Dir::C2S);
    let (rdir, id, outcome) = c.responses.remove(0);
    assert_eq!(rdir, Dir::S2C);
    assert_eq!(
        Some(id),
        req.response_callback,
        "{name}: reply goes to responseCallback"
    );
    assert!(c.frames.contains(&ServerFrame::Open));
    (method, req, outcome)
}

#[test]
fn kite_ping() {
    let (method, req, outcome) = single_call("kite_ping.txt");
    assert_eq!(method, "kite.ping");
    assert_eq!(
        req.kite,
        go_client_kite("92fd9106-e09d-48a8-855c-40aa57f31cd7")
    );
    assert!(req.kite.validate().is_ok());
    assert_eq!(req.authentication, None);
    assert!(req.with_args.is_empty());
    assert_eq!(outcome, Ok(json!("pong")));
}

#[test]
fn square_noauth() {
    let (method, req, outcome) = single_call("square_noauth.txt");
    assert_eq!(method, "square");
    assert_eq!(req.with_args, vec![json!(7)]);
    assert_eq!(req.authentication, None);
    assert_eq!(outcome, Ok(json!(49)));
}

#[test]
fn echo_args() {
    let (method, req, outcome) = single_call("echo_args.txt");
    assert_eq!(method, "echo");
    let args = json!([1, "two", {"three": 3}, [4], null, true]);
    assert_eq!(Value::Array(req.with_args), args);
    assert_eq!(outcome, Ok(args));
}

#[test]
fn countdown_callbacks() {
    let c = check_capture("countdown_callbacks.txt");
    assert_eq!(c.requests.len(), 1);
    let req = &c.requests[0].2;
    assert_eq!(req.response_callback, Some(0));
    assert_eq!(req.with_args[0]["from"], json!(3));
    let tick = req.with_args[0]["onTick"].as_str().unwrap();
    assert_eq!(kite_protocol::dnode::parse_callback_marker(tick), Some(1));
    let ticks: Vec<_> = c
        .invocations
        .iter()
        .map(|(d, id, a)| (*d, *id, a.clone()))
        .collect();
    assert_eq!(
        ticks,
        vec![
            (Dir::S2C, 1, vec![json!(3)]),
            (Dir::S2C, 1, vec![json!(2)]),
            (Dir::S2C, 1, vec![json!(1)]),
        ]
    );
    assert_eq!(c.responses.len(), 1);
    assert_eq!(c.responses[0].1, 0);
    assert_eq!(c.responses[0].2, Ok(json!("done")));
}

#[test]
fn fail_error() {
    let (method, req, outcome) = single_call("fail_error.txt");
    assert_eq!(method, "fail");
    assert_eq!(req.with_args, vec![json!("custom failure message")]);
    let err = outcome.unwrap_err();
    assert_eq!(
        err,
        KiteError::generic("custom failure message").with_id("b30a166cfedb9085")
    );
    assert_eq!(err.to_string(), "custom failure message (b30a166cfedb9085)");
}

#[test]
fn missing_method() {
    let (method, req, outcome) = single_call("missing_method.txt");
    assert_eq!(method, "nosuchmethod");
    assert_eq!(req.with_args, vec![json!(1)]);
    assert_eq!(outcome, Err(KiteError::method_not_found("nosuchmethod")));
}

fn kitekey_sub(auth: &Authentication) -> String {
    jwt_claims(&auth.key)["sub"].as_str().unwrap().to_string()
}

#[test]
fn square_kitekey_auth() {
    let (method, req, outcome) = single_call("square_kitekey_auth.txt");
    assert_eq!(method, "square");
    let auth = req.authentication.unwrap();
    assert_eq!(auth.kind, "kiteKey");
    assert_eq!(kitekey_sub(&auth), req.kite.username);
    assert!(outcome.is_ok());
}

#[test]
fn square_token_auth() {
    let (method, req, outcome) = single_call("square_token_auth.txt");
    assert_eq!(method, "square");
    let auth = req.authentication.unwrap();
    assert_eq!(auth.kind, "token");
    let claims = jwt_claims(&auth.key);
    // The audience names the server kite; it parses as a (partial) kite string.
    let aud = Kite::parse(claims["aud"].as_str().unwrap()).unwrap();
    assert!(!aud.username.is_empty());
    assert!(outcome.is_ok());
}

#[test]
fn square_missing_auth_rejected() {
    let (_, req, outcome) = single_call("square_missing_auth_rejected.txt");
    assert_eq!(req.authentication, None);
    assert_eq!(
        outcome,
        Err(KiteError::no_authentication().with_id("082eca17cc46a943"))
    );
}

fn check_register_and_heartbeats(name: &str, full: bool) {
    let c = check_capture(name);
    // Kontrol (server) calls kite.heartbeat [10, fn] on the kite (client).
    let hb: Vec<_> = c
        .requests
        .iter()
        .filter(|r| r.1 == "kite.heartbeat")
        .collect();
    assert_eq!(hb.len(), 1);
    let (dir, _, req) = hb[0];
    assert_eq!(*dir, Dir::S2C);
    assert_eq!(req.kite.name, "kontrol");
    assert_eq!(req.with_args[0], json!(10));
    let ping = kite_protocol::dnode::parse_callback_marker(req.with_args[1].as_str().unwrap());
    assert_eq!(ping, Some(1));
    // The kite answers the heartbeat request and then calls the callback repeatedly.
    assert!(c
        .responses
        .iter()
        .any(|(d, id, r)| *d == Dir::C2S && *id == 0 && *r == Ok(Value::Null)));
    let pings = c
        .invocations
        .iter()
        .filter(|(d, id, a)| *d == Dir::C2S && *id == 1 && a.is_empty())
        .count();
    assert_eq!(pings, 4);
    assert!(c.frames.contains(&ServerFrame::Heartbeat));
    if full {
        let reg: Vec<_> = c.requests.iter().filter(|r| r.1 == "register").collect();
        assert_eq!(reg.len(), 1);
        let (dir, _, req) = reg[0];
        assert_eq!(*dir, Dir::C2S);
        assert!(req.kite.validate_for_registration().is_ok());
        let auth = req.authentication.as_ref().unwrap();
        assert_eq!(auth.kind, "kiteKey");
        assert_eq!(kitekey_sub(auth), "alice");
        assert_eq!(
            req.with_args,
            vec![json!({"url": "http://127.0.0.1:3638/kite"})]
        );
        // Both sides use callback id 0 for their own response callback.
        assert!(c.responses.iter().any(|(d, id, r)| *d == Dir::S2C
            && *id == 0
            && *r == Ok(json!({"url": "http://127.0.0.1:3638/kite", "heartbeatInterval": 0}))));
    }
}

#[test]
fn register_kontrol() {
    check_register_and_heartbeats("register_kontrol.txt", true);
}

#[test]
fn heartbeat_ws() {
    check_register_and_heartbeats("heartbeat_ws.txt", false);
}

#[test]
fn heartbeat_http() {
    let events = parse_capture("heartbeat_http.txt");
    assert!(
        dnode_messages(&events).0.is_empty(),
        "no dnode on this path"
    );
    let bodies: Vec<&Event> = events.iter().filter(|e| e.kind == Kind::HttpBody).collect();
    let register = bodies
        .iter()
        .find(|e| e.dir == Some(Dir::C2S) && e.request_path == "/register")
        .unwrap();
    assert_eq!(register.payload.len(), register.bytes);
    let body = json(&register.payload);
    let kite: Kite = serde_json::from_value(body["kite"].clone()).unwrap();
    assert!(kite.validate_for_registration().is_ok());
    assert_eq!(
        kite.to_string(),
        "/alice/capturehttp/math/1.0.0/unknown/vm/627a1efb-3b06-4576-bfb1-8a2d5ac14bdd"
    );
    let auth: Authentication = serde_json::from_value(body["auth"].clone()).unwrap();
    assert_eq!(auth.kind, "kiteKey");
    assert_eq!(kitekey_sub(&auth), kite.username);
    let reply = bodies
        .iter()
        .find(|e| e.dir == Some(Dir::S2C) && e.request_path == "/register")
        .unwrap();
    assert_eq!(
        json(&reply.payload),
        json!({"url": "http://127.0.0.1:3639/kite", "heartbeatInterval": 10})
    );
    let pongs = bodies
        .iter()
        .filter(|e| e.request_path.starts_with("/heartbeat?id=") && e.payload == "pong")
        .count();
    assert_eq!(pongs, 2);
}

#[test]
fn heartbeat_http_registeragain() {
    let events = parse_capture("heartbeat_http_registeragain.txt");
    assert!(dnode_messages(&events).0.is_empty());
    let body = events.iter().find(|e| e.kind == Kind::HttpBody).unwrap();
    assert_eq!(body.payload, "registeragain");
    assert!(body.request_path.starts_with("/heartbeat?id="));
}

#[test]
fn getkites() {
    let c = check_capture("getkites.txt");
    assert_eq!(c.requests.len(), 1);
    let (_, method, req) = &c.requests[0];
    assert_eq!(method, "getKites");
    let query: KontrolQuery = serde_json::from_value(req.with_args[0]["query"].clone()).unwrap();
    assert_eq!(query.to_string(), "/alice/unknown/math////");
    assert!(query.validate(true).is_ok());
    let result = c.responses[0].2.clone().unwrap();
    let kites = result["kites"].as_array().unwrap();
    assert_eq!(kites.len(), 1);
    let kite: Kite = serde_json::from_value(kites[0]["kite"].clone()).unwrap();
    assert!(query.matches(&kite));
    let claims = jwt_claims(kites[0]["token"].as_str().unwrap());
    assert_eq!(claims["aud"], json!(query.audience()));
    assert_eq!(claims["sub"], json!(req.kite.username));
}

#[test]
fn gettoken() {
    let c = check_capture("gettoken.txt");
    assert_eq!(c.requests.len(), 1);
    let (_, method, req) = &c.requests[0];
    assert_eq!(method, "getToken");
    let query: KontrolQuery = serde_json::from_value(req.with_args[0].clone()).unwrap();
    assert_eq!(query.audience(), "/alice/unknown/math");
    let token = c.responses[0].2.clone().unwrap();
    let claims = jwt_claims(token.as_str().unwrap());
    assert_eq!(claims["aud"], json!(query.audience()));
    assert_eq!(claims["sub"], json!("bob"));
}

#[test]
fn xhr_square_noauth() {
    let (method, req, outcome) = single_call("xhr_square_noauth.txt");
    assert_eq!(method, "square");
    assert_eq!(req.with_args, vec![json!(7)]);
    assert_eq!(outcome, Ok(json!(49)));
}

#[test]
fn xhr_countdown_callbacks() {
    let c = check_capture("xhr_countdown_callbacks.txt");
    assert_eq!(c.requests.len(), 1);
    assert_eq!(c.invocations.len(), 3);
    assert_eq!(c.responses.len(), 1);
    // Three messages arrived batched in one poll response.
    assert!(c
        .frames
        .iter()
        .any(|f| matches!(f, ServerFrame::Messages(m) if m.len() == 3)));
}

#[test]
fn sockjs_websocket_handmade() {
    let events = parse_capture("sockjs_websocket_handmade.txt");
    let (messages, frames) = dnode_messages(&events);
    let limits = Limits::default();
    let client: Vec<&Captured> = messages.iter().filter(|m| m.dir == Dir::C2S).collect();
    assert_eq!(
        client.len(),
        4,
        "two messages in one frame, two more, and an empty [] frame"
    );
    check_request(&client[0].text);
    check_request(&client[1].text);
    // A hand-made request with only a responseCallback: not a full Go request, but it
    // decodes and earns a methodNotFound reply.
    let mut nosuch = Message::decode(&client[2].text, &limits).unwrap();
    nosuch.unscrub(&limits);
    assert_eq!(envelope::response_callback_of(&nosuch.arguments), Some(5));
    let req = Request::from_arguments(nosuch.arguments).unwrap();
    assert_eq!(req.kite, Kite::default());
    // No options object: no reply possible.
    let mut bare = Message::decode(&client[3].text, &limits).unwrap();
    bare.unscrub(&limits);
    assert_eq!(envelope::response_callback_of(&bare.arguments), None);
    assert!(Request::from_arguments(bare.arguments).is_err());

    let server: Vec<&Captured> = messages.iter().filter(|m| m.dir == Dir::S2C).collect();
    assert_eq!(server.len(), 3);
    assert_eq!(
        check_response(&server[0].text),
        Err(KiteError::method_not_found("nosuch"))
    );
    assert_eq!(check_response(&server[1].text), Ok(json!(25)));
    assert_eq!(check_response(&server[2].text), Ok(json!(25)));
    assert_eq!(frames[0], ServerFrame::Open);
}

#[test]
fn sockjs_websocket_malformed_frame() {
    let events = parse_capture("sockjs_websocket_malformed_frame.txt");
    let (messages, frames) = dnode_messages(&events);
    // Our lenient frame decoder accepts the single-string frame; its content is no dnode
    // message, so it is dropped.
    let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
    assert!(texts.contains(&"not-an-array"));
    assert!(matches!(
        Message::decode("not-an-array", &Limits::default()),
        Err(DecodeError::Json(_))
    ));
    check_request(texts[0]);
    assert_eq!(
        check_response(texts.last().copied().unwrap()),
        Ok(json!(25))
    );
    // The Go server ended the session with an empty frame.
    assert_eq!(frames.last(), Some(&ServerFrame::Empty));
}

#[test]
fn raw_websocket_no_sockjs_framing() {
    let events = parse_capture("raw_websocket_no_sockjs_framing.txt");
    assert!(dnode_messages(&events).0.is_empty());
    let req = events.iter().find(|e| e.kind == Kind::HttpRequest).unwrap();
    assert_eq!(req.payload, "GET /kite/websocket HTTP/1.1");
    let body = events.iter().find(|e| e.kind == Kind::HttpBody).unwrap();
    assert_eq!(body.payload, "404 page not found");
}

#[test]
fn sockjs_http_endpoints() {
    let events = parse_capture("sockjs_http_endpoints.txt");
    let bodies: Vec<&Event> = events.iter().filter(|e| e.kind == Kind::HttpBody).collect();
    let body_for = |path: &str, dir: Dir| {
        bodies
            .iter()
            .find(|e| e.request_path == path && e.dir == Some(dir))
            .unwrap()
            .payload
            .clone()
    };
    assert_eq!(body_for("/kite", Dir::S2C), "Welcome to SockJS!");
    let info = json(&body_for("/kite/info", Dir::S2C));
    assert_eq!(info["websocket"], json!(true));
    assert_eq!(info["origins"], json!(["*:*"]));
    // xhr_send to an unknown session: a valid client frame whose message is no dnode.
    let sent = body_for("/kite/000/nosession/xhr_send", Dir::C2S);
    let msgs = kite_protocol::sockjs::decode_client_frame(&sent).unwrap();
    assert_eq!(msgs, vec!["x"]);
    assert!(Message::decode(&msgs[0], &Limits::default()).is_err());
}

/// Every capture file has a test above; this keeps the list honest when files are added.
#[test]
fn every_capture_is_covered() {
    let covered = [
        "countdown_callbacks.txt",
        "echo_args.txt",
        "fail_error.txt",
        "getkites.txt",
        "gettoken.txt",
        "heartbeat_http.txt",
        "heartbeat_http_registeragain.txt",
        "heartbeat_ws.txt",
        "kite_ping.txt",
        "missing_method.txt",
        "raw_websocket_no_sockjs_framing.txt",
        "register_kontrol.txt",
        "sockjs_http_endpoints.txt",
        "sockjs_websocket_handmade.txt",
        "sockjs_websocket_malformed_frame.txt",
        "square_kitekey_auth.txt",
        "square_missing_auth_rejected.txt",
        "square_noauth.txt",
        "square_token_auth.txt",
        "xhr_countdown_callbacks.txt",
        "xhr_square_noauth.txt",
    ];
    let mut files: Vec<String> = std::fs::read_dir(kite_testkit::vectors::dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".txt"))
        .collect();
    files.sort();
    assert_eq!(files, covered);
}
