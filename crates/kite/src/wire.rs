//! dnode messages as the runtime needs them: parsing incoming messages (liberally, with
//! limits), installing callback markers (unscrub), replacing local-function markers
//! (scrub) and encoding outgoing messages (PROTOCOL.md 3).

use serde::Serialize;
use serde_json::{Map, Value};

/// Prefix of the marker string a serialized local [`crate::Function`] leaves in a value; the
/// rest is its index in the message's list of local functions.
pub(crate) const FN_MARKER: &str = "\u{0}kite-fn:";
/// Prefix of the marker string put where the peer sent a callback; the rest is its id.
pub(crate) const CB_MARKER: &str = "\u{0}kite-cb:";

/// Most callbacks one incoming message may declare; more → the message is dropped.
pub(crate) const MAX_CALLBACKS_PER_MESSAGE: usize = 1024;
/// Longest callback path accepted.
pub(crate) const MAX_PATH_LEN: usize = 64;

pub(crate) fn function_marker(n: usize) -> String {
    format!("{FN_MARKER}{n}")
}

pub(crate) fn callback_marker(id: u64) -> String {
    format!("{CB_MARKER}{id}")
}

pub(crate) fn parse_function_marker(s: &str) -> Option<usize> {
    s.strip_prefix(FN_MARKER)?.parse().ok()
}

pub(crate) fn parse_callback_marker(s: &str) -> Option<u64> {
    s.strip_prefix(CB_MARKER)?.parse().ok()
}

/// The `method` of an incoming message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MethodRef {
    /// A named method of ours.
    Name(String),
    /// One of our callbacks.
    Callback(u64),
    /// Anything else (negative/fractional numbers, booleans...): dropped.
    Other,
}

/// A parsed incoming message, callback markers installed.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub method: MethodRef,
    pub arguments: Vec<Value>,
}

/// Why an incoming message was dropped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("message is not a JSON object")]
    NotObject,
    #[error("arguments is not an array")]
    ArgumentsNotArray,
    #[error("callbacks is not an object")]
    CallbacksNotObject,
    #[error("invalid callback id {0:?}")]
    BadCallbackId(String),
    #[error("too many callbacks ({0})")]
    TooManyCallbacks(usize),
}

/// Parses one dnode message and installs callback markers at their paths.
pub(crate) fn parse(text: &str) -> Result<Incoming, ParseError> {
    let value: Value = serde_json::from_str(text)?;
    let Value::Object(mut obj) = value else {
        return Err(ParseError::NotObject);
    };
    let method = match obj.get("method") {
        Some(Value::String(s)) => MethodRef::Name(s.clone()),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(id) => MethodRef::Callback(id),
            None => MethodRef::Other,
        },
        _ => MethodRef::Other,
    };
    let mut arguments = match obj.remove("arguments") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ParseError::ArgumentsNotArray),
    };
    match obj.remove("callbacks") {
        None | Some(Value::Null) => {}
        Some(Value::Object(cbs)) => {
            if cbs.len() > MAX_CALLBACKS_PER_MESSAGE {
                return Err(ParseError::TooManyCallbacks(cbs.len()));
            }
            // Validate every id first: one bad key drops the whole message (4.3 step 2).
            let mut parsed = Vec::with_capacity(cbs.len());
            for (key, path) in cbs {
                let id = parse_callback_id(&key).ok_or(ParseError::BadCallbackId(key))?;
                parsed.push((id, path));
            }
            for (id, path) in parsed {
                if let Value::Array(path) = path {
                    if !install(&mut arguments, &path, id) {
                        tracing::debug!(id, "ignoring unusable callback path");
                    }
                }
            }
        }
        Some(_) => return Err(ParseError::CallbacksNotObject),
    }
    Ok(Incoming { method, arguments })
}

fn parse_callback_id(key: &str) -> Option<u64> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse().ok()
}

fn index_of(elem: &Value) -> Option<usize> {
    match elem {
        Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
}

fn key_of(elem: &Value) -> Option<String> {
    match elem {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Puts the callback marker for `id` at `path` inside `arguments`. Unusable paths (empty,
/// out of range, through a scalar or a missing key, wrong element types) are ignored.
fn install(arguments: &mut [Value], path: &[Value], id: u64) -> bool {
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return false;
    }
    let Some(first) = index_of(&path[0]) else {
        return false;
    };
    let Some(mut cur) = arguments.get_mut(first) else {
        return false;
    };
    for elem in &path[1..] {
        cur = match cur {
            Value::Array(a) => match index_of(elem).and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            Value::Object(o) => match key_of(elem) {
                // The last key may be absent (the peer may not have put a placeholder).
                Some(k) => o.entry(k).or_insert(Value::Null),
                None => return false,
            },
            _ => return false,
        };
    }
    *cur = Value::String(callback_marker(id));
    true
}

/// One element of a callback path as we send it: integers for array indexes (Q4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum PathElem {
    Index(usize),
    Key(String),
}

/// A local function found in an outgoing value.
#[derive(Debug)]
pub(crate) struct Scrubbed {
    /// Index into the message's list of local functions.
    pub function: usize,
    /// Path from the root of `arguments`.
    pub path: Vec<PathElem>,
}

/// Replaces every local-function marker in `arguments` by `"[Function]"` and reports where.
/// Callback markers that came from the peer (a remote function sent back) are replaced by
/// `null`: Go cannot forward them either (3.2).
pub(crate) fn scrub(arguments: &mut [Value]) -> Vec<Scrubbed> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    for (i, v) in arguments.iter_mut().enumerate() {
        path.push(PathElem::Index(i));
        scrub_value(v, &mut path, &mut out);
        path.pop();
    }
    out
}

fn scrub_value(v: &mut Value, path: &mut Vec<PathElem>, out: &mut Vec<Scrubbed>) {
    match v {
        Value::String(s) => {
            if let Some(n) = parse_function_marker(s) {
                out.push(Scrubbed {
                    function: n,
                    path: path.clone(),
                });
                *v = Value::String("[Function]".to_string());
            } else if parse_callback_marker(s).is_some() {
                *v = Value::Null;
            }
        }
        Value::Array(a) => {
            for (i, e) in a.iter_mut().enumerate() {
                path.push(PathElem::Index(i));
                scrub_value(e, path, out);
                path.pop();
            }
        }
        Value::Object(o) => {
            for (k, e) in o.iter_mut() {
                path.push(PathElem::Key(k.clone()));
                scrub_value(e, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The `method` of an outgoing message.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum OutMethod<'a> {
    Name(&'a str),
    Callback(u64),
}

#[derive(Serialize)]
struct OutMessage<'a> {
    method: OutMethod<'a>,
    arguments: &'a [Value],
    callbacks: &'a Map<String, Value>,
}

/// Encodes an outgoing message. `callbacks` maps decimal ids to paths.
pub(crate) fn encode(
    method: OutMethod<'_>,
    arguments: &[Value],
    callbacks: &Map<String, Value>,
) -> Result<String, serde_json::Error> {
    serde_json::to_string(&OutMessage {
        method,
        arguments,
        callbacks,
    })
}

/// The options object of a request (PROTOCOL.md 4.1), decoded leniently.
#[derive(Debug)]
pub(crate) struct Options {
    pub kite: Option<Value>,
    pub authentication: Option<Value>,
    pub with_args: Vec<Value>,
}

/// Why the options object is unusable (→ `argumentError`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum OptionsError {
    #[error("Invalid array length")]
    Arity,
    #[error("request options are not an object")]
    NotObject,
    #[error("kite field is not an object")]
    Kite,
    #[error("authentication field is not an object")]
    Authentication,
}

/// Finds the response callback of a request's first argument, if any.
pub(crate) fn response_callback_of(arguments: &[Value]) -> Option<u64> {
    match arguments.first()? {
        Value::Object(o) => match o.get("responseCallback")? {
            Value::String(s) => parse_callback_marker(s),
            _ => None,
        },
        _ => None,
    }
}

/// Decodes the options object; normalizes `withArgs` (null/missing → `[]`, scalar → `[x]`).
pub(crate) fn options(arguments: Vec<Value>) -> Result<Options, OptionsError> {
    if arguments.len() != 1 {
        return Err(OptionsError::Arity);
    }
    let Some(Value::Object(mut o)) = arguments.into_iter().next() else {
        return Err(OptionsError::NotObject);
    };
    let kite = match o.remove("kite") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v),
        Some(_) => return Err(OptionsError::Kite),
    };
    let authentication = match o.remove("authentication") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v),
        Some(_) => return Err(OptionsError::Authentication),
    };
    let with_args = match o.remove("withArgs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(v) => vec![v],
    };
    Ok(Options {
        kite,
        authentication,
        with_args,
    })
}

/// Decodes a response's arguments liberally (PROTOCOL.md 11.4): one object with `error` or
/// `result` → canonical; `[]` / `[null]` → success without result; two elements →
/// `(err, result)`; any other single element → `err`.
pub(crate) fn response(mut arguments: Vec<Value>) -> Result<Value, crate::KiteError> {
    let (err, result) = match arguments.len() {
        0 => (Value::Null, Value::Null),
        1 => match arguments.pop().unwrap_or(Value::Null) {
            Value::Object(mut o) if o.contains_key("error") || o.contains_key("result") => (
                o.remove("error").unwrap_or(Value::Null),
                o.remove("result").unwrap_or(Value::Null),
            ),
            Value::Null => (Value::Null, Value::Null),
            other => (other, Value::Null),
        },
        2 => {
            let result = arguments.pop().unwrap_or(Value::Null);
            let err = arguments.pop().unwrap_or(Value::Null);
            (err, result)
        }
        _ => return Err(crate::KiteError::invalid_response("Invalid array length")),
    };
    if err.is_null() {
        return Ok(result);
    }
    Err(crate::KiteError::from_value(&err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_go_request() {
        let text = r#"{"method":"countdown","arguments":[{"kite":{"name":"c"},"authentication":null,"responseCallback":"[Function]","withArgs":[{"from":3,"onTick":"[Function]"}]}],"callbacks":{"0":[0,"responseCallback"],"1":[0,"withArgs",0,"onTick"]}}"#;
        let m = parse(text).unwrap();
        assert_eq!(m.method, MethodRef::Name("countdown".into()));
        assert_eq!(response_callback_of(&m.arguments), Some(0));
        let opts = options(m.arguments).unwrap();
        assert_eq!(opts.with_args[0]["onTick"], json!(callback_marker(1)));
    }

    #[test]
    fn parse_js_paths_and_bad_ids() {
        let text = r#"{"arguments":[{"withArgs":5,"responseCallback":"[Function]"}],"callbacks":{"0":["0","responseCallback"]},"links":[],"method":"square"}"#;
        let m = parse(text).unwrap();
        assert_eq!(response_callback_of(&m.arguments), Some(0));
        let opts = options(m.arguments).unwrap();
        assert_eq!(opts.with_args, vec![json!(5)]);
        assert!(parse(r#"{"method":"x","arguments":[],"callbacks":{"-1":[0]}}"#).is_err());
        // unusable paths are ignored
        let m = parse(r#"{"method":"x","arguments":[1],"callbacks":{"0":[5],"1":[],"2":[0,"a"]}}"#)
            .unwrap();
        assert_eq!(m.arguments, vec![json!(1)]);
        assert_eq!(parse(r#"{"method":-1}"#).unwrap().method, MethodRef::Other);
    }

    #[test]
    fn scrub_markers() {
        let mut args = vec![json!({"a":[1, function_marker(0)], "b": function_marker(1)})];
        let s = scrub(&mut args);
        assert_eq!(args[0], json!({"a":[1,"[Function]"],"b":"[Function]"}));
        assert_eq!(s.len(), 2);
        assert_eq!(
            serde_json::to_value(&s[0].path).unwrap(),
            json!([0, "a", 1])
        );
    }

    #[test]
    fn liberal_responses() {
        assert_eq!(
            response(vec![json!({"error":null,"result":16})]).unwrap(),
            json!(16)
        );
        assert_eq!(response(vec![]).unwrap(), json!(null));
        assert_eq!(
            response(vec![json!(null), json!("pong")]).unwrap(),
            json!("pong")
        );
        let e = response(vec![json!({"error":{"message":"x"}})]).unwrap_err();
        assert_eq!(e.kind, "genericError");
        let e = response(vec![json!("boom")]).unwrap_err();
        assert_eq!(e.message, "boom");
    }
}
