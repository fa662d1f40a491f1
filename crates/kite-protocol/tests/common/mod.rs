//! Helpers shared by the integration tests: reading the wire captures in `crates/kite-testkit/vectors/`
//! and checking Go's messages against our encoder.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;

use kite_protocol::dnode::{
    self, function_marker, parse_callback_marker, Callbacks, Limits, Message, Method,
};
use kite_protocol::envelope::{self, Request};
use kite_protocol::sockjs::{self, ServerFrame};
use serde_json::Value;

/// Direction of a captured event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to server.
    C2S,
    /// Server to client.
    S2C,
}

/// What was captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A WebSocket text frame.
    WsText,
    /// HTTP request headers; the payload is the request line.
    HttpRequest,
    /// An HTTP body.
    HttpBody,
    /// Anything else (OPEN, EOF, CLOSED, WS close frames, response headers...).
    Other(String),
}

/// One line of the wire log with its payload.
#[derive(Debug, Clone)]
pub struct Event {
    /// Connection number.
    pub conn: u32,
    /// Direction (`None` for OPEN/CLOSED).
    pub dir: Option<Dir>,
    /// Event kind.
    pub kind: Kind,
    /// Byte count from the log.
    pub bytes: usize,
    /// The payload lines, joined with `\n`.
    pub payload: String,
    /// For HTTP bodies: the path of the latest request on that connection.
    pub request_path: String,
}

pub use kite_testkit::vectors::read as read_vector;

/// Parses a capture file's wire log.
pub fn parse_capture(name: &str) -> Vec<Event> {
    let text = read_vector(name);
    let lines: Vec<&str> = text.lines().collect();
    let mut events = Vec::new();
    let mut last_request: HashMap<u32, String> = HashMap::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if !line.starts_with("[+") {
            continue;
        }
        let rest = &line[line.find("] conn#").expect("conn marker") + 7..];
        let (conn, rest) = rest.split_once(' ').expect("conn number");
        let conn: u32 = conn.parse().expect("conn number");
        let (dir, rest) = match rest.split_once(' ') {
            Some(("C->S", r)) => (Some(Dir::C2S), r),
            Some(("S->C", r)) => (Some(Dir::S2C), r),
            _ => (None, rest),
        };
        let open = rest.rfind('(').expect("byte count");
        let bytes: usize = rest[open + 1..]
            .trim_end_matches(" bytes)")
            .parse()
            .expect("byte count");
        let descr = rest[..open].trim();
        let kind = if descr.starts_with("WS-FRAME text") {
            Kind::WsText
        } else if descr == "HTTP-REQUEST-HEADERS" {
            Kind::HttpRequest
        } else if descr == "HTTP-BODY" {
            Kind::HttpBody
        } else {
            Kind::Other(descr.to_string())
        };
        let start = i;
        while i < lines.len() && !lines[i].starts_with("[+") {
            i += 1;
        }
        let payload = if bytes == 0 && matches!(kind, Kind::WsText | Kind::HttpBody) {
            String::new()
        } else {
            lines[start..i].join("\n")
        };
        let payload = match kind {
            Kind::HttpRequest => {
                let request_line = payload.lines().next().unwrap_or("").to_string();
                let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                last_request.insert(conn, path);
                request_line
            }
            Kind::WsText | Kind::HttpBody => payload,
            Kind::Other(_) => String::new(),
        };
        events.push(Event {
            conn,
            dir,
            request_path: last_request.get(&conn).cloned().unwrap_or_default(),
            kind,
            bytes,
            payload,
        });
    }
    events
}

/// A dnode message found in a capture.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Who sent it.
    pub dir: Dir,
    /// The message text.
    pub text: String,
}

/// Every dnode message carried in WebSocket frames and SockJS XHR bodies, in order,
/// decoded with our frame codec. Also returns the server frame types seen.
pub fn dnode_messages(events: &[Event]) -> (Vec<Captured>, Vec<ServerFrame>) {
    let mut out = Vec::new();
    let mut frames = Vec::new();
    for e in events {
        let Some(dir) = e.dir else { continue };
        let sockjs_body = e.request_path.ends_with("/xhr") || e.request_path.ends_with("/xhr_send");
        let framed = match e.kind {
            Kind::WsText => true,
            Kind::HttpBody => sockjs_body,
            _ => false,
        };
        if !framed {
            continue;
        }
        match dir {
            Dir::C2S => {
                for text in sockjs::decode_client_frame(&e.payload).expect("client frame") {
                    out.push(Captured { dir, text });
                }
            }
            Dir::S2C => {
                let frame = sockjs::decode_server_frame(&e.payload).expect("server frame");
                if let ServerFrame::Messages(msgs) = &frame {
                    for text in msgs {
                        out.push(Captured {
                            dir,
                            text: text.clone(),
                        });
                    }
                }
                frames.push(frame);
            }
        }
    }
    (out, frames)
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON")
}

/// The callbacks of an encoded message as a sorted list of paths (JSON arrays).
fn callback_paths(message: &Value) -> Vec<String> {
    let mut paths: Vec<String> = message["callbacks"]
        .as_object()
        .expect("callbacks object")
        .values()
        .map(Value::to_string)
        .collect();
    paths.sort();
    paths
}

/// Asserts that two encoded messages are the same call: same keys, method and arguments,
/// and callbacks at the same paths (ids may differ).
pub fn assert_same_call(ours: &str, go: &str) {
    let (o, g) = (json(ours), json(go));
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&o), keys(&g), "keys\nours: {ours}\ngo:   {go}");
    assert_eq!(o["method"], g["method"], "method");
    assert_eq!(
        o["arguments"], g["arguments"],
        "arguments\nours: {ours}\ngo:   {go}"
    );
    assert_eq!(callback_paths(&o), callback_paths(&g), "callback paths");
}

/// Replaces callback markers with function markers (numbered from 1, 0 being reserved for
/// the response callback), as if the caller had passed its own functions there.
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

/// What a captured request decoded to.
pub struct DecodedRequest {
    pub method: String,
    pub request: Request,
}

/// Decodes a Go request, rebuilds it with our encoder and checks both are the same call.
pub fn check_request(go: &str) -> DecodedRequest {
    let limits = Limits::default();
    let mut msg = Message::decode(go, &limits).expect("decode request");
    let Method::Name(method) = msg.method.clone() else {
        panic!("not a request: {go}")
    };
    let report = msg.unscrub(&limits);
    assert_eq!(
        report.installed,
        msg.callbacks.len(),
        "every callback installed"
    );
    assert_eq!(report.invalid + report.missing, 0);
    let request = Request::from_arguments(msg.arguments).expect("request options");
    assert!(request.response_callback.is_some(), "response callback");

    let mut with_args = Value::Array(request.with_args.clone());
    let mut next_fn = 1;
    callbacks_to_functions(&mut with_args, &mut next_fn);
    let Value::Array(with_args) = with_args else {
        unreachable!()
    };
    let mut args =
        envelope::encode_request(&request.kite, request.authentication.as_ref(), with_args, 0);
    let mut next_id = 0;
    let scrubbed = dnode::scrub(&mut args, &mut next_id);
    assert_eq!(scrubbed.len(), next_fn, "one callback per function");
    let ours = Message::new(
        Method::Name(method.clone()),
        args,
        Callbacks::from_scrubbed(&scrubbed),
    )
    .encode();
    assert_same_call(&ours, go);
    DecodedRequest { method, request }
}

/// Decodes a Go response, re-encodes the outcome with our encoder and checks equality.
pub fn check_response(go: &str) -> Result<Value, kite_protocol::KiteError> {
    let limits = Limits::default();
    let msg = Message::decode(go, &limits).expect("decode response");
    let Method::Callback(id) = msg.method else {
        panic!("not a callback: {go}")
    };
    assert!(msg.callbacks.is_empty());
    let outcome = envelope::decode_response(msg.arguments);
    let ours = Message::callback(
        id,
        vec![envelope::encode_response(outcome.clone())],
        Callbacks::new(),
    )
    .encode();
    assert_eq!(json(&ours), json(go), "ours: {ours}\ngo:   {go}");
    outcome
}

/// Decodes a plain callback invocation and checks our encoding of the same call.
pub fn check_invocation(go: &str) -> (u64, Vec<Value>) {
    let msg = Message::decode(go, &Limits::default()).expect("decode invocation");
    let Method::Callback(id) = msg.method else {
        panic!("not a callback: {go}")
    };
    let Value::Array(args) = msg.arguments else {
        unreachable!()
    };
    let ours = Message::callback(id, args.clone(), Callbacks::new()).encode();
    assert_eq!(json(&ours), json(go));
    (id, args)
}

/// Whether a message is a response (one `{error, result}` argument).
pub fn is_response(text: &str) -> bool {
    let v = json(text);
    v["method"].is_u64()
        && v["arguments"].as_array().is_some_and(|a| {
            a.len() == 1
                && a[0]
                    .as_object()
                    .is_some_and(|o| o.contains_key("error") && o.contains_key("result"))
        })
}

/// Tiny base64url decoder for JWT payloads.
pub fn base64url_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("bad base64url"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// The claims of a JWT.
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&base64url_decode(payload)).expect("claims JSON")
}
