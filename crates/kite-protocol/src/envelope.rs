//! The kite request/response envelope (PROTOCOL.md 4.1–4.3, 11.4).
//!
//! A request is a dnode call whose `arguments` hold one options object
//! `{kite, authentication, withArgs, responseCallback}`; the response is a call of the
//! `responseCallback` with one `{error, result}` object.
//!
//! ```
//! use kite_protocol::dnode::{self, Message};
//! use kite_protocol::envelope::{self, Request};
//! use kite_protocol::{Kite, KiteError};
//! use serde_json::json;
//!
//! // Client: build the arguments, scrub, send.
//! let me = Kite { name: "client".into(), ..Default::default() };
//! let mut args = envelope::encode_request(&me, None, vec![json!(4)], 0);
//! let mut next_id = 0;
//! let scrubbed = dnode::scrub(&mut args, &mut next_id);
//! let text = Message::new(
//!     dnode::Method::Name("square".into()),
//!     args,
//!     dnode::Callbacks::from_scrubbed(&scrubbed),
//! )
//! .encode();
//!
//! // Server: decode, unscrub, read the options.
//! let limits = dnode::Limits::default();
//! let mut msg = Message::decode(&text, &limits).unwrap();
//! msg.unscrub(&limits);
//! let req = Request::from_arguments(msg.arguments).unwrap();
//! assert_eq!(req.with_args, vec![json!(4)]);
//! assert_eq!(req.kite.name, "client");
//! let reply = envelope::encode_response(Ok(json!(16)));
//! assert_eq!(reply, json!({"error": null, "result": 16}));
//!
//! // Client: read the reply's arguments.
//! assert_eq!(envelope::decode_response(json!([reply])), Ok(json!(16)));
//! assert_eq!(
//!     envelope::decode_response(json!([{"error": {"type": "x", "message": "m"}}])),
//!     Err(KiteError::new("x", "m"))
//! );
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::dnode::{function_marker, json_type_name, parse_callback_marker};
use crate::error::KiteError;
use crate::identity::{Kite, FIELD_KEYS};
use crate::sockjs::Escaped;

/// Credentials: `{"type": ..., "key": ...}` (PROTOCOL.md 6.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Authentication {
    /// Credential type (`type` on the wire): `kiteKey`, `token`, `sessionID`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The credential itself (a JWT for `kiteKey` and `token`).
    pub key: String,
}

impl Authentication {
    /// Credentials of type `kind` with `key`.
    pub fn new(kind: impl Into<String>, key: impl Into<String>) -> Authentication {
        Authentication {
            kind: kind.into(),
            key: key.into(),
        }
    }
}

/// A decoded request: the options object of `arguments[0]`, after
/// [`unscrub`](crate::dnode::unscrub).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// The caller's claimed identity (`kite`; missing keys and `null`s are empty).
    pub kite: Kite,
    /// The credentials, if any (`authentication` absent or `null` → `None`).
    pub authentication: Option<Authentication>,
    /// The method's arguments, normalised: `null`/absent → `[]`, a non-array `x` → `[x]`.
    pub with_args: Vec<Value>,
    /// The peer's callback id found at `responseCallback`, if a callback was installed
    /// there.
    pub response_callback: Option<u64>,
}

/// Why `arguments` is not a usable request. The server answers with
/// [`RequestError::to_kite_error`] through [`RequestError::response_callback`] when there
/// is one, and drops the message otherwise (PROTOCOL.md 4.3 step 5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// What is wrong, e.g. `Invalid request: "kite" must be an object, not a number`.
    pub message: String,
    /// The response callback, when `arguments[0]` is an object with one.
    pub response_callback: Option<u64>,
}

impl RequestError {
    /// The `argumentError` to reply with.
    pub fn to_kite_error(&self) -> KiteError {
        KiteError::argument(self.message.clone())
    }
}

/// The peer's callback id at `arguments[0].responseCallback`, when `arguments[0]` is an
/// object and [`unscrub`](crate::dnode::unscrub) installed a callback there. Decides
/// whether an unknown method gets a `methodNotFound` reply (PROTOCOL.md 4.3 step 4).
pub fn response_callback_of(arguments: &Value) -> Option<u64> {
    match arguments.get(0)?.get("responseCallback")? {
        Value::String(s) => parse_callback_marker(s),
        _ => None,
    }
}

/// A string field of `parent` (`kite`, `authentication`); the error names
/// `parent.field`. Nothing is formatted unless it fails.
fn string_field(value: Value, parent: &str, field: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        Value::Null => Ok(String::new()),
        other => Err(format!(
            "Invalid request: \"{parent}.{field}\" must be a string, not {}",
            json_type_name(&other)
        )),
    }
}

fn decode_kite(value: Value) -> Result<Kite, String> {
    let mut map = match value {
        Value::Null => return Ok(Kite::default()),
        Value::Object(m) => m,
        other => {
            return Err(format!(
                "Invalid request: \"kite\" must be an object, not {}",
                json_type_name(&other)
            ))
        }
    };
    let mut take = |i: usize| -> Result<String, String> {
        let key = FIELD_KEYS[i];
        match map.remove(key) {
            None => Ok(String::new()),
            Some(v) => string_field(v, "kite", key),
        }
    };
    Ok(Kite {
        username: take(0)?,
        environment: take(1)?,
        name: take(2)?,
        version: take(3)?,
        region: take(4)?,
        hostname: take(5)?,
        id: take(6)?,
    })
}

fn decode_authentication(value: Value) -> Result<Option<Authentication>, String> {
    let mut map = match value {
        Value::Null => return Ok(None),
        Value::Object(m) => m,
        other => {
            return Err(format!(
                "Invalid request: \"authentication\" must be an object, not {}",
                json_type_name(&other)
            ))
        }
    };
    let mut take = |key: &str| match map.remove(key) {
        None => Ok(String::new()),
        Some(v) => string_field(v, "authentication", key),
    };
    Ok(Some(Authentication {
        kind: take("type")?,
        key: take("key")?,
    }))
}

impl Request {
    /// Decodes the request from a call's `arguments` (after unscrubbing): exactly one
    /// element, an object whose `kite` is an object (or `null`/absent) of string fields and
    /// whose `authentication` is an object of string fields or `null`/absent. `withArgs` is
    /// normalised (`null`/absent → `[]`, non-array → one-element list). Unknown keys are
    /// ignored; an object lacking every field (`[{}]`) is a valid request.
    pub fn from_arguments(arguments: Value) -> Result<Request, RequestError> {
        let response_callback = response_callback_of(&arguments);
        let fail = |message: String| RequestError {
            message,
            response_callback,
        };
        let mut args = match arguments {
            Value::Array(a) => a,
            other => {
                return Err(fail(format!(
                    "Invalid request: arguments must be an array, not {}",
                    json_type_name(&other)
                )))
            }
        };
        if args.len() != 1 {
            return Err(fail(format!(
                "Invalid request: expected exactly one argument (the options object), got {}",
                args.len()
            )));
        }
        let mut options = match args.pop() {
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(fail(format!(
                    "Invalid request: options must be an object, not {}",
                    json_type_name(&other)
                )))
            }
            None => return Err(fail("Invalid request: no options".to_string())),
        };
        let kite = decode_kite(options.remove("kite").unwrap_or(Value::Null)).map_err(fail)?;
        let authentication =
            decode_authentication(options.remove("authentication").unwrap_or(Value::Null))
                .map_err(fail)?;
        let with_args = match options.remove("withArgs") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a,
            Some(other) => vec![other],
        };
        Ok(Request {
            kite,
            authentication,
            with_args,
            response_callback,
        })
    }
}

fn kite_to_value(kite: &Kite) -> Value {
    Value::Object(
        kite.fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect(),
    )
}

/// Builds a request's `arguments` (`[options]`) the way our clients send it: `kite`,
/// `authentication` (`null` when none), `withArgs` (always an array, `[]` for none) and
/// `responseCallback` = [`function_marker`]`(response_marker)`. Functions inside
/// `with_args` are function markers too; [`scrub`](crate::dnode::scrub) the result before
/// sending (with sorted object keys, `responseCallback` gets the lowest id, as with Go).
pub fn encode_request(
    kite: &Kite,
    authentication: Option<&Authentication>,
    with_args: Vec<Value>,
    response_marker: usize,
) -> Value {
    let mut options = Map::new();
    options.insert("kite".into(), kite_to_value(kite));
    let auth = match authentication {
        Some(a) => {
            let mut m = Map::new();
            m.insert("type".into(), Value::String(a.kind.clone()));
            m.insert("key".into(), Value::String(a.key.clone()));
            Value::Object(m)
        }
        None => Value::Null,
    };
    options.insert("authentication".into(), auth);
    options.insert("withArgs".into(), Value::Array(with_args));
    options.insert(
        "responseCallback".into(),
        Value::String(function_marker(response_marker)),
    );
    Value::Array(vec![Value::Object(options)])
}

/// The caller identity as sent in a request's `kite` key: compact JSON with the seven
/// fields in sorted key order, exactly what [`encode_request`] writes there. Runtimes
/// compute it once per identity and pass it to [`encode_call_message`].
pub fn kite_json(kite: &Kite) -> String {
    kite_to_value(kite).to_string()
}

/// A credential as sent in a request's `authentication` key: `{"key":...,"type":...}`
/// (sorted keys, as [`encode_request`] writes it). Computed once per credential.
pub fn authentication_json(auth: &Authentication) -> String {
    let mut out = String::with_capacity(auth.key.len() + auth.kind.len() + 20);
    out.push_str("{\"key\":");
    crate::dnode::write_json_string(&mut out, &auth.key);
    out.push_str(",\"type\":");
    crate::dnode::write_json_string(&mut out, &auth.kind);
    out.push('}');
    out
}

/// A constant piece of JSON syntax in both forms (see [`syntax!`]).
#[derive(Clone, Copy)]
struct Syntax {
    plain: &'static str,
    escaped: &'static [u8],
}

/// The escaped length of `s`: a backslash before every quote (constants hold no other
/// character that needs an escape; [`escape_syntax`] checks).
const fn escaped_len(s: &str) -> usize {
    let b = s.as_bytes();
    let mut n = b.len();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            n += 1;
        }
        i += 1;
    }
    n
}

/// `s` escaped, at compile time. Fails to compile for a constant holding a backslash, a
/// control character or non-ASCII (which would need other escapes).
const fn escape_syntax<const N: usize>(s: &str) -> [u8; N] {
    let b = s.as_bytes();
    let mut out = [0u8; N];
    let (mut i, mut o) = (0, 0);
    while i < b.len() {
        assert!(b[i] != b'\\' && b[i] >= 0x20 && b[i] < 0x80);
        if b[i] == b'"' {
            out[o] = b'\\';
            o += 1;
        }
        out[o] = b[i];
        o += 1;
        i += 1;
    }
    out
}

/// A constant [`Syntax`], escaped at compile time.
macro_rules! syntax {
    ($s:literal) => {{
        const PLAIN: &str = $s;
        const ESCAPED: [u8; escaped_len(PLAIN)] = escape_syntax::<{ escaped_len(PLAIN) }>(PLAIN);
        Syntax {
            plain: PLAIN,
            escaped: &ESCAPED,
        }
    }};
}

/// The keys of a request's options object that [`encode_request`] writes, in sorted order.
/// Extra fields with these names are not written by the call encoders (the standard value
/// wins).
pub const STANDARD_OPTION_KEYS: [&str; 4] =
    ["authentication", "kite", "responseCallback", "withArgs"];

/// The `callbacks` of a call message.
#[derive(Clone, Copy, Debug)]
pub enum CallCallbacks<'a> {
    /// Only the response callback, with this id: `{"<id>":[0,"responseCallback"]}`,
    /// written without building a [`Callbacks`](crate::dnode::Callbacks) list.
    Response(u64),
    /// These callbacks: the response callback (path `[0,"responseCallback"]`) and the
    /// functions of `withArgs` with paths from the root of `arguments`.
    List(&'a crate::dnode::Callbacks),
}

/// The complete text of a call message, written in one pass without building the options
/// object as a JSON tree. Byte for byte what [`encode_request`], then
/// [`scrub`](crate::dnode::scrub) and [`Message::encode`](crate::dnode::Message::encode)
/// produce:
///
/// `{"method":<method>,"arguments":[{"authentication":<auth_json or null>,"kite":<kite_json>,"responseCallback":"[Function]","withArgs":<with_args>}],"callbacks":<callbacks>}`.
///
/// `kite_json` comes from [`kite_json`], `auth_json` from [`authentication_json`] (both
/// trusted to be valid JSON); `with_args` must already be scrubbed, and `callbacks` must
/// hold the response callback (path `[0,"responseCallback"]`) and the functions of
/// `with_args` with paths from the root of `arguments`. `with_args` is the argument array
/// (anything else is written as it is).
pub fn encode_call_message(
    method: &str,
    kite_json: &str,
    auth_json: Option<&str>,
    with_args: &Value,
    callbacks: &crate::dnode::Callbacks,
) -> String {
    plain_call(
        method,
        kite_json,
        auth_json,
        with_args,
        CallCallbacks::List(callbacks),
        &Map::new(),
    )
}

/// [`encode_call_message`] for the usual call whose only callback is the response
/// callback `response_callback` (`"callbacks":{"<id>":[0,"responseCallback"]}`), without
/// building a [`Callbacks`](crate::dnode::Callbacks) list. Byte for byte the same text.
pub fn encode_plain_call_message(
    method: &str,
    kite_json: &str,
    auth_json: Option<&str>,
    with_args: &Value,
    response_callback: u64,
) -> String {
    plain_call(
        method,
        kite_json,
        auth_json,
        with_args,
        CallCallbacks::Response(response_callback),
        &Map::new(),
    )
}

/// [`encode_call_message`] with extra `fields` in the options object next to `withArgs`
/// (a call's `deadline`, `traceparent`, ...), still in one pass. Byte for byte what
/// [`encode_request`] with the fields inserted into its options object, then
/// [`scrub`](crate::dnode::scrub) and [`Message::encode`](crate::dnode::Message::encode)
/// produce: every key in sorted order, fields named like a [`STANDARD_OPTION_KEYS`] left
/// out. The fields are data: they are written as they are, never scrubbed for functions.
///
/// ```
/// use kite_protocol::envelope::{encode_call_message_with_fields, kite_json, CallCallbacks};
/// use kite_protocol::Kite;
/// use serde_json::{json, Map};
///
/// let me = kite_json(&Kite { name: "client".into(), ..Default::default() });
/// let mut fields = Map::new();
/// fields.insert("deadline".into(), json!(1500));
/// let text = encode_call_message_with_fields(
///     "square", &me, None, &json!([4]), CallCallbacks::Response(1), &fields,
/// );
/// assert!(text.starts_with(r#"{"method":"square","arguments":[{"authentication":null,"deadline":1500,"kite":{"#));
/// ```
pub fn encode_call_message_with_fields(
    method: &str,
    kite_json: &str,
    auth_json: Option<&str>,
    with_args: &Value,
    callbacks: CallCallbacks<'_>,
    fields: &Map<String, Value>,
) -> String {
    plain_call(method, kite_json, auth_json, with_args, callbacks, fields)
}

/// [`encode_call_message`] in the escaped form a SockJS frame carries: the same message as
/// [`Escaped::new`] of that text. `kite` and `auth` are the escaped forms of the
/// [`kite_json`] and [`authentication_json`] texts (escaped once per identity and
/// credential, then copied into every request as they are).
///
/// ```
/// use kite_protocol::dnode::Callbacks;
/// use kite_protocol::envelope::{encode_call_message, encode_call_message_escaped, kite_json};
/// use kite_protocol::sockjs::Escaped;
/// use kite_protocol::Kite;
/// use serde_json::json;
///
/// let me = kite_json(&Kite { name: "client".into(), ..Default::default() });
/// let plain = encode_call_message("square", &me, None, &json!([4]), &Callbacks::new());
/// let escaped =
///     encode_call_message_escaped("square", &Escaped::new(&me), None, &json!([4]), &Callbacks::new());
/// assert_eq!(escaped, Escaped::new(&plain));
/// ```
pub fn encode_call_message_escaped(
    method: &str,
    kite: &Escaped,
    auth: Option<&Escaped>,
    with_args: &Value,
    callbacks: &crate::dnode::Callbacks,
) -> Escaped {
    escaped_call(
        method,
        kite,
        auth,
        with_args,
        CallCallbacks::List(callbacks),
        &Map::new(),
    )
}

/// [`encode_plain_call_message`] in the escaped form; see [`encode_call_message_escaped`].
pub fn encode_plain_call_message_escaped(
    method: &str,
    kite: &Escaped,
    auth: Option<&Escaped>,
    with_args: &Value,
    response_callback: u64,
) -> Escaped {
    escaped_call(
        method,
        kite,
        auth,
        with_args,
        CallCallbacks::Response(response_callback),
        &Map::new(),
    )
}

/// [`encode_call_message_with_fields`] in the escaped form; see
/// [`encode_call_message_escaped`].
pub fn encode_call_message_with_fields_escaped(
    method: &str,
    kite: &Escaped,
    auth: Option<&Escaped>,
    with_args: &Value,
    callbacks: CallCallbacks<'_>,
    fields: &Map<String, Value>,
) -> Escaped {
    escaped_call(method, kite, auth, with_args, callbacks, fields)
}

/// A call message in the escaped form.
fn escaped_call(
    method: &str,
    kite: &Escaped,
    auth: Option<&Escaped>,
    with_args: &Value,
    callbacks: CallCallbacks<'_>,
    fields: &Map<String, Value>,
) -> Escaped {
    let mut out = EscapedWriter::for_call(method, kite, auth, fields.len());
    call_message(&mut out, method, kite, auth, with_args, callbacks, fields);
    out.finish()
}

/// A call message as plain text.
fn plain_call(
    method: &str,
    kite_json: &str,
    auth_json: Option<&str>,
    with_args: &Value,
    callbacks: CallCallbacks<'_>,
    fields: &Map<String, Value>,
) -> String {
    let auth_len = auth_json.map_or(4, str::len);
    let mut out =
        String::with_capacity(method.len() + kite_json.len() + auth_len + 192 + 80 * fields.len());
    call_message(
        &mut out, method, kite_json, auth_json, with_args, callbacks, fields,
    );
    out
}

/// Writes a call message: `kite` and `auth` are in the writer's form.
fn call_message<W: Writer + ?Sized>(
    w: &mut W,
    method: &str,
    kite: &W::Piece,
    auth: Option<&W::Piece>,
    with_args: &Value,
    callbacks: CallCallbacks<'_>,
    fields: &Map<String, Value>,
) {
    w.syntax(syntax!("{\"method\":"));
    w.name(method);
    w.syntax(syntax!(",\"arguments\":[{"));
    if fields.is_empty() {
        // The usual call: the standard keys alone.
        w.syntax(syntax!("\"authentication\":"));
        match auth {
            Some(auth) => w.piece(auth),
            None => w.syntax(syntax!("null")),
        }
        w.syntax(syntax!(",\"kite\":"));
        w.piece(kite);
        w.syntax(syntax!(
            ",\"responseCallback\":\"[Function]\",\"withArgs\":"
        ));
        w.plain(|out| crate::dnode::write_json_value(out, with_args));
    } else {
        // Extra fields go between the standard keys, in sorted key order as the options
        // tree (a `BTreeMap`) would write them.
        let mut sorted = Vec::new();
        let extra: &mut dyn Iterator<Item = (&String, &Value)> = if fields.keys().is_sorted() {
            &mut fields.iter()
        } else {
            sorted.extend(fields.iter());
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            &mut sorted.iter().copied()
        };
        let mut extra = extra
            .filter(|(k, _)| !STANDARD_OPTION_KEYS.contains(&k.as_str()))
            .peekable();
        let mut first = true;
        let mut fields_before = |w: &mut W, key: Option<&str>| {
            while let Some((k, v)) = extra.next_if(|(k, _)| key.is_none_or(|key| k.as_str() < key))
            {
                if !first {
                    w.syntax(syntax!(","));
                }
                first = false;
                w.name(k);
                w.syntax(syntax!(":"));
                w.value(v);
            }
            if key.is_some() && !first {
                w.syntax(syntax!(","));
            }
            first = false;
        };
        fields_before(w, Some("authentication"));
        w.syntax(syntax!("\"authentication\":"));
        match auth {
            Some(auth) => w.piece(auth),
            None => w.syntax(syntax!("null")),
        }
        fields_before(w, Some("kite"));
        w.syntax(syntax!("\"kite\":"));
        w.piece(kite);
        fields_before(w, Some("responseCallback"));
        w.syntax(syntax!("\"responseCallback\":\"[Function]\""));
        fields_before(w, Some("withArgs"));
        w.syntax(syntax!("\"withArgs\":"));
        w.plain(|out| crate::dnode::write_json_value(out, with_args));
        fields_before(w, None);
    }
    w.syntax(syntax!("}],\"callbacks\":"));
    match callbacks {
        CallCallbacks::Response(id) => {
            w.syntax(syntax!("{\""));
            w.number(id);
            w.syntax(syntax!("\":[0,\"responseCallback\"]}}"));
        }
        CallCallbacks::List(callbacks) => {
            w.plain(|out| callbacks.encode_into(out));
            w.syntax(syntax!("}"));
        }
    }
}

/// The complete text of a response message (an invocation of the caller's callback
/// `callback` with `[{"error":...,"result":...}]`), written in one pass. Byte for byte
/// what [`encode_response`] then [`Message::encode`](crate::dnode::Message::encode)
/// produce.
/// `result` must already be scrubbed; `callbacks` paths start at the root of `arguments`
/// (`[0,"result",...]`).
pub fn encode_response_message(
    callback: u64,
    outcome: Result<&Value, &KiteError>,
    callbacks: &crate::dnode::Callbacks,
) -> String {
    // Room for the usual small result (`{"method":N,"arguments":[{"error":null,
    // "result":...}],"callbacks":{}}` is ~70 bytes) without growing.
    let mut out = String::with_capacity(128);
    response_message(&mut out, callback, outcome, callbacks);
    out
}

/// [`encode_response_message`] in the escaped form a SockJS frame carries (the same
/// message as [`Escaped::new`] of that text).
pub fn encode_response_message_escaped(
    callback: u64,
    outcome: Result<&Value, &KiteError>,
    callbacks: &crate::dnode::Callbacks,
) -> Escaped {
    let mut out = EscapedWriter::with_capacity(160);
    response_message(&mut out, callback, outcome, callbacks);
    out.finish()
}

fn response_message<W: Writer + ?Sized>(
    w: &mut W,
    callback: u64,
    outcome: Result<&Value, &KiteError>,
    callbacks: &crate::dnode::Callbacks,
) {
    w.syntax(syntax!("{\"method\":"));
    w.number(callback);
    w.syntax(syntax!(",\"arguments\":[{\"error\":"));
    match outcome {
        Ok(result) => {
            w.syntax(syntax!("null,\"result\":"));
            w.plain(|out| crate::dnode::write_json_value(out, result));
        }
        Err(e) => {
            w.plain(|out| crate::dnode::write_json_value(out, &e.to_value()));
            w.syntax(syntax!(",\"result\":null"));
        }
    }
    w.syntax(syntax!("}],\"callbacks\":"));
    if callbacks.is_empty() {
        w.syntax(syntax!("{}"));
    } else {
        w.plain(|out| callbacks.encode_into(out));
    }
    w.syntax(syntax!("}"));
}

/// Where the message encoders write: the plain text (`String`) or the escaped form
/// ([`EscapedWriter`]).
trait Writer {
    /// A cached piece of JSON in this writer's form.
    type Piece: ?Sized;
    /// JSON syntax (a constant from [`syntax!`]).
    fn syntax(&mut self, s: Syntax);
    /// A cached piece, copied as it is.
    fn piece(&mut self, p: &Self::Piece);
    /// JSON written as plain text by `write`.
    fn plain(&mut self, write: impl FnOnce(&mut String));
    /// A number.
    fn number(&mut self, n: u64) {
        self.plain(|out| crate::dnode::write_u64(out, n));
    }
    /// A string value.
    fn name(&mut self, s: &str) {
        self.plain(|out| crate::dnode::write_json_string(out, s));
    }
    /// Any JSON value (an extra field's).
    fn value(&mut self, v: &Value) {
        match v {
            Value::String(s) => self.name(s),
            Value::Number(n) if n.is_u64() => self.number(n.as_u64().unwrap_or_default()),
            _ => self.plain(|out| crate::dnode::write_json_value(out, v)),
        }
    }
}

impl Writer for String {
    type Piece = str;
    #[inline]
    fn syntax(&mut self, s: Syntax) {
        self.push_str(s.plain);
    }
    #[inline]
    fn piece(&mut self, p: &str) {
        self.push_str(p);
    }
    #[inline]
    fn plain(&mut self, write: impl FnOnce(&mut String)) {
        write(self)
    }
}

/// Writes a message in the escaped form: constants and cached pieces are escaped already,
/// only what `plain` writes is escaped here.
struct EscapedWriter {
    out: Vec<u8>,
}

impl EscapedWriter {
    fn with_capacity(n: usize) -> Self {
        EscapedWriter {
            out: Vec::with_capacity(n),
        }
    }

    /// Room for a call message with `fields` extra fields of the usual size (a
    /// `traceparent` takes 80 bytes escaped with its key) without growing.
    fn for_call(method: &str, kite: &Escaped, auth: Option<&Escaped>, fields: usize) -> Self {
        let auth_len = auth.map_or(4, Escaped::len);
        Self::with_capacity(2 * method.len() + kite.len() + auth_len + 256 + 96 * fields)
    }

    fn finish(self) -> Escaped {
        Escaped::from_escaped_bytes(self.out)
    }
}

impl Writer for EscapedWriter {
    type Piece = Escaped;
    #[inline]
    fn syntax(&mut self, s: Syntax) {
        self.out.extend_from_slice(s.escaped);
    }
    #[inline]
    fn piece(&mut self, p: &Escaped) {
        self.out.extend_from_slice(p.as_bytes());
    }
    #[inline]
    fn plain(&mut self, write: impl FnOnce(&mut String)) {
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                scratch.clear();
                write(&mut scratch);
                crate::sockjs::escape_into_buf(&scratch, &mut self.out);
                if scratch.capacity() > SCRATCH_KEEP {
                    *scratch = String::new();
                }
            }
            // Not reentrant; cannot happen, but a fresh buffer is always correct.
            Err(_) => {
                let mut scratch = String::new();
                write(&mut scratch);
                crate::sockjs::escape_into_buf(&scratch, &mut self.out);
            }
        })
    }

    #[inline]
    fn number(&mut self, n: u64) {
        // Digits need no escape.
        let mut buf = itoa::Buffer::new();
        self.out.extend_from_slice(buf.format(n).as_bytes());
    }

    #[inline]
    fn name(&mut self, s: &str) {
        // The usual method name has nothing to escape, as JSON or for SockJS.
        if s.bytes()
            .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
        {
            self.out.extend_from_slice(b"\\\"");
            self.out.extend_from_slice(s.as_bytes());
            self.out.extend_from_slice(b"\\\"");
        } else {
            self.plain(|out| crate::dnode::write_json_string(out, s));
        }
    }
}

thread_local! {
    /// Where [`EscapedWriter::plain`] writes the plain JSON it escapes: one per thread,
    /// reused by every message.
    static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A scratch buffer larger than this after a message is given back.
const SCRATCH_KEEP: usize = 64 << 10;

/// The response object `{"error": ..., "result": ...}`, both keys always present (Go
/// style): `error` is `null` on success, `result` is `null` on error. A result may
/// contain function markers; scrub the reply's arguments before sending.
pub fn encode_response(outcome: Result<Value, KiteError>) -> Value {
    let (error, result) = match outcome {
        Ok(result) => (Value::Null, result),
        Err(e) => (e.to_value(), Value::Null),
    };
    let mut m = Map::new();
    m.insert("error".into(), error);
    m.insert("result".into(), result);
    Value::Object(m)
}

fn error_or(err: Value, result: Value) -> Result<Value, KiteError> {
    if err.is_null() {
        Ok(result)
    } else {
        Err(KiteError::from_value(&err))
    }
}

/// Decodes the `arguments` of a response callback invocation, accepting every shape Go
/// and kite.js peers send (PROTOCOL.md 4.2, 11.4), decided in this order:
///
/// 1. one object element with an `error` or `result` key → canonical `{error, result}`;
/// 2. `[]` or `[null]` → success without result (`null`);
/// 3. two elements → `(err, result)`;
/// 4. any other single element → `err`.
///
/// A non-null error becomes `Err` ([`KiteError::from_value`]: type from its `type`, else
/// `genericError`). More than two elements, or `arguments` that is not an array, is
/// `invalidResponse` (`Invalid array length`).
pub fn decode_response(arguments: Value) -> Result<Value, KiteError> {
    let mut args = match arguments {
        Value::Array(a) => a,
        _ => return Err(KiteError::invalid_response("Invalid array length")),
    };
    match args.len() {
        0 => Ok(Value::Null),
        1 => match args.pop().unwrap_or(Value::Null) {
            Value::Object(mut m) if m.contains_key("error") || m.contains_key("result") => {
                let err = m.remove("error").unwrap_or(Value::Null);
                error_or(err, m.remove("result").unwrap_or(Value::Null))
            }
            Value::Null => Ok(Value::Null),
            other => Err(KiteError::from_value(&other)),
        },
        2 => {
            let result = args.pop().unwrap_or(Value::Null);
            let err = args.pop().unwrap_or(Value::Null);
            error_or(err, result)
        }
        _ => Err(KiteError::invalid_response("Invalid array length")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dnode::callback_marker;
    use serde_json::json;

    fn req(v: Value) -> Result<Request, RequestError> {
        Request::from_arguments(v)
    }

    #[test]
    fn normalises_with_args() {
        let cb = callback_marker(3);
        for (with_args, expected) in [
            (json!(null), json!([])),
            (json!([]), json!([])),
            (json!([1, "a"]), json!([1, "a"])),
            (json!(5), json!([5])),
            (json!({"a": 1}), json!([{"a": 1}])),
            (json!("s"), json!(["s"])),
        ] {
            let r = req(json!([{"withArgs": with_args, "responseCallback": cb}])).unwrap();
            assert_eq!(Value::Array(r.with_args), expected);
            assert_eq!(r.response_callback, Some(3));
        }
        let r = req(json!([{}])).unwrap();
        assert_eq!(r, Request::default());
    }

    #[test]
    fn decodes_kite_and_authentication() {
        let r = req(json!([{
            "kite": {"name": "math", "username": null, "extra": 5},
            "authentication": {"type": "token", "key": "k", "x": 1},
            "responseCallback": "[Function]"
        }]))
        .unwrap();
        assert_eq!(r.kite.name, "math");
        assert_eq!(r.kite.username, "");
        assert_eq!(r.authentication, Some(Authentication::new("token", "k")));
        assert_eq!(r.response_callback, None, "no callback installed");
        let r = req(json!([{"authentication": null}])).unwrap();
        assert_eq!(r.authentication, None);
        let r = req(json!([{"authentication": {}}])).unwrap();
        assert_eq!(r.authentication, Some(Authentication::default()));
    }

    #[test]
    fn wrong_types_are_argument_errors() {
        let cb = callback_marker(8);
        let cases = [
            (
                json!([]),
                "expected exactly one argument (the options object), got 0",
            ),
            (
                json!([{}, {}]),
                "expected exactly one argument (the options object), got 2",
            ),
            (json!([5]), "options must be an object, not a number"),
            (json!({"a": 1}), "arguments must be an array, not an object"),
            (
                json!([{"kite": 5}]),
                "\"kite\" must be an object, not a number",
            ),
            (
                json!([{"kite": {"name": 1}}]),
                "\"kite.name\" must be a string, not a number",
            ),
            (
                json!([{"authentication": "abc"}]),
                "\"authentication\" must be an object, not a string",
            ),
            (
                json!([{"authentication": {"type": []}}]),
                "\"authentication.type\" must be a string, not an array",
            ),
            (
                json!([{"authentication": {"key": true}}]),
                "\"authentication.key\" must be a string, not a boolean",
            ),
        ];
        for (args, text) in cases {
            let e = req(args.clone()).unwrap_err();
            assert_eq!(e.message, format!("Invalid request: {text}"), "{args}");
            assert_eq!(e.response_callback, None);
            assert_eq!(e.to_kite_error().kind, "argumentError");
        }
        let e = req(json!([{"kite": 5, "responseCallback": cb}, 2])).unwrap_err();
        assert_eq!(e.response_callback, Some(8));
        assert_eq!(
            response_callback_of(&json!([{"responseCallback": callback_marker(2)}])),
            Some(2)
        );
        assert_eq!(response_callback_of(&json!([])), None);
        assert_eq!(response_callback_of(&json!([5])), None);
    }

    #[test]
    fn encodes_requests_like_go() {
        let kite = Kite {
            name: "c".into(),
            ..Default::default()
        };
        let args = encode_request(&kite, None, vec![], 2);
        assert_eq!(
            args,
            json!([{
                "kite": {"username":"","environment":"","name":"c","version":"","region":"","hostname":"","id":""},
                "authentication": null,
                "withArgs": [],
                "responseCallback": function_marker(2)
            }])
        );
        let auth = Authentication::new("kiteKey", "jwt");
        let args = encode_request(&kite, Some(&auth), vec![json!(1)], 0);
        assert_eq!(
            args[0]["authentication"],
            json!({"type": "kiteKey", "key": "jwt"})
        );
        assert_eq!(
            serde_json::to_value(&auth).unwrap(),
            json!({"type": "kiteKey", "key": "jwt"})
        );
    }

    #[test]
    fn one_pass_messages_match_the_tree_encoding() {
        use crate::dnode::{scrub, Callbacks, Message, Method};
        let kite = Kite {
            username: "a\"b".into(),
            name: "c\u{2028}\u{1}".into(),
            id: "x".into(),
            ..Default::default()
        };
        for auth in [None, Some(Authentication::new("token", "j\\w\nt"))] {
            let with_args = vec![
                json!(1),
                json!({"f": function_marker(1), "s": "q\""}),
                json!([function_marker(2)]),
            ];
            let mut tree = encode_request(&kite, auth.as_ref(), with_args.clone(), 0);
            let mut next = 5;
            let scrubbed = scrub(&mut tree, &mut next);
            let expected = Message::new(
                Method::Name("sq\"are".into()),
                tree,
                Callbacks::from_scrubbed(&scrubbed),
            )
            .encode();
            let mut wa = Value::Array(with_args);
            let mut next = 6;
            let mut cbs = Callbacks::new();
            cbs.push(5, vec![0.into(), "responseCallback".into()]);
            for s in scrub(&mut wa, &mut next) {
                let mut path = vec![0.into(), "withArgs".into()];
                path.extend(s.path);
                cbs.push(s.id, path);
            }
            let got = encode_call_message(
                "sq\"are",
                &kite_json(&kite),
                auth.as_ref().map(authentication_json).as_deref(),
                &wa,
                &cbs,
            );
            assert_eq!(got, expected);
            // The escaped form: the same message as escaping the whole text.
            let kite_escaped = Escaped::new(&kite_json(&kite));
            let auth_escaped = auth.as_ref().map(|a| Escaped::new(&authentication_json(a)));
            let got = encode_call_message_escaped(
                "sq\"are",
                &kite_escaped,
                auth_escaped.as_ref(),
                &wa,
                &cbs,
            );
            assert_eq!(got, Escaped::new(&expected));

            // Without functions in the arguments: the plain form is the same text.
            let plain_args = vec![json!(4), json!({"s": "q\""}), json!([-1.5, ["x"]])];
            let mut tree = encode_request(&kite, auth.as_ref(), plain_args.clone(), 0);
            let mut next = 12;
            let scrubbed = scrub(&mut tree, &mut next);
            let expected = Message::new(
                Method::Name("square".into()),
                tree,
                Callbacks::from_scrubbed(&scrubbed),
            )
            .encode();
            let got = encode_plain_call_message(
                "square",
                &kite_json(&kite),
                auth.as_ref().map(authentication_json).as_deref(),
                &Value::Array(plain_args.clone()),
                12,
            );
            assert_eq!(got, expected);
            let got = encode_plain_call_message_escaped(
                "square",
                &kite_escaped,
                auth_escaped.as_ref(),
                &Value::Array(plain_args),
                12,
            );
            assert_eq!(got, Escaped::new(&expected));
        }
        for outcome in [
            Ok(json!({"a": [1, "x\u{7f}"]})),
            Ok(json!(16)),
            Ok(json!(-2.5)),
            Ok(json!(["a\"", [1, 2], null, false])),
            Err(KiteError::generic("bad \"x\"").with_id("7")),
        ] {
            let expected =
                Message::callback(9, vec![encode_response(outcome.clone())], Callbacks::new())
                    .encode();
            let got = encode_response_message(9, outcome.as_ref(), &Callbacks::new());
            assert_eq!(got, expected);
            let got = encode_response_message_escaped(9, outcome.as_ref(), &Callbacks::new());
            assert_eq!(got, Escaped::new(&expected));
        }
        // A response that passes functions back.
        let mut callbacks = Callbacks::new();
        callbacks.push(4, vec![0.into(), "result".into(), "f\u{2028}".into()]);
        let result = json!({"f\u{2028}": "[Function]"});
        let plain = encode_response_message(3, Ok(&result), &callbacks);
        assert!(
            plain.ends_with("\"callbacks\":{\"4\":[0,\"result\",\"f\u{2028}\"]}}"),
            "{plain}"
        );
        assert_eq!(
            encode_response_message_escaped(3, Ok(&result), &callbacks),
            Escaped::new(&plain)
        );
    }

    #[test]
    fn one_pass_messages_with_fields_match_the_tree_encoding() {
        use crate::dnode::{scrub, Callbacks, Message, Method};
        let kite = Kite {
            username: "a\"b".into(),
            name: "n".into(),
            ..Default::default()
        };
        // Keys before, between and after every standard key, and standard names (ignored).
        let field_sets: Vec<Vec<(&str, Value)>> = vec![
            vec![],
            vec![("deadline", json!(1500))],
            vec![
                ("deadline", json!(29999)),
                (
                    "traceparent",
                    json!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ),
            ],
            vec![
                ("Zed", json!(null)),
                ("_x", json!([1, {"k\"": "v\u{2028}"}])),
                ("authentication", json!("ignored")),
                ("b", json!(true)),
                ("kite", json!({"forged": 1})),
                ("kitf", json!(-2.5)),
                ("responseCallback", json!(7)),
                ("withArgs", json!([])),
                ("withArgt", json!({})),
                ("zz", json!("end")),
            ],
            vec![("zz", json!(1))],
            vec![("A", json!(1))],
        ];
        for auth in [None, Some(Authentication::new("token", "j\\w\nt"))] {
            for set in &field_sets {
                let fields: Map<String, Value> = set
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect();
                let with_args = vec![json!(4), json!({"f": function_marker(1)})];
                let mut tree = encode_request(&kite, auth.as_ref(), with_args.clone(), 0);
                if let Some(Value::Object(options)) = tree.get_mut(0) {
                    for (k, v) in &fields {
                        if !STANDARD_OPTION_KEYS.contains(&k.as_str()) {
                            options.insert(k.clone(), v.clone());
                        }
                    }
                }
                let mut next = 5;
                let scrubbed = scrub(&mut tree, &mut next);
                let expected = Message::new(
                    Method::Name("square".into()),
                    tree,
                    Callbacks::from_scrubbed(&scrubbed),
                )
                .encode();
                let mut wa = Value::Array(with_args);
                let mut next = 6;
                let mut cbs = Callbacks::new();
                cbs.push(5, vec![0.into(), "responseCallback".into()]);
                for s in scrub(&mut wa, &mut next) {
                    let mut path = vec![0.into(), "withArgs".into()];
                    path.extend(s.path);
                    cbs.push(s.id, path);
                }
                let kite_text = kite_json(&kite);
                let auth_text = auth.as_ref().map(authentication_json);
                let got = encode_call_message_with_fields(
                    "square",
                    &kite_text,
                    auth_text.as_deref(),
                    &wa,
                    CallCallbacks::List(&cbs),
                    &fields,
                );
                assert_eq!(got, expected, "fields {set:?}");
                serde_json::from_str::<Value>(&got).expect("valid JSON");
                let got = encode_call_message_with_fields_escaped(
                    "square",
                    &Escaped::new(&kite_text),
                    auth_text.as_deref().map(Escaped::new).as_ref(),
                    &wa,
                    CallCallbacks::List(&cbs),
                    &fields,
                );
                assert_eq!(got, Escaped::new(&expected), "fields {set:?}");

                // Only the response callback.
                let plain = Value::Array(vec![json!(4)]);
                let mut tree = encode_request(&kite, auth.as_ref(), vec![json!(4)], 0);
                if let Some(Value::Object(options)) = tree.get_mut(0) {
                    for (k, v) in &fields {
                        if !STANDARD_OPTION_KEYS.contains(&k.as_str()) {
                            options.insert(k.clone(), v.clone());
                        }
                    }
                }
                let mut next = 9;
                let scrubbed = scrub(&mut tree, &mut next);
                let expected = Message::new(
                    Method::Name("square".into()),
                    tree,
                    Callbacks::from_scrubbed(&scrubbed),
                )
                .encode();
                let got = encode_call_message_with_fields(
                    "square",
                    &kite_text,
                    auth_text.as_deref(),
                    &plain,
                    CallCallbacks::Response(9),
                    &fields,
                );
                assert_eq!(got, expected, "fields {set:?}");
            }
        }
        // Fields are data: a function marker in one is written as the string it is.
        let mut fields = Map::new();
        fields.insert("s".into(), json!(function_marker(0)));
        let text = encode_call_message_with_fields(
            "m",
            &kite_json(&kite),
            None,
            &json!([]),
            CallCallbacks::Response(1),
            &fields,
        );
        assert!(
            text.contains(r#""s":"\u0000kite-fn:0","withArgs""#),
            "{text}"
        );
        assert!(
            text.ends_with(r#""callbacks":{"1":[0,"responseCallback"]}}"#),
            "{text}"
        );
    }

    #[test]
    fn encodes_responses_with_both_keys() {
        assert_eq!(
            encode_response(Ok(json!(null))),
            json!({"error": null, "result": null})
        );
        let e = KiteError::generic("negative argument").with_id("3fa9c07d12e4b856");
        assert_eq!(
            encode_response(Err(e)).to_string(),
            r#"{"error":{"code":"","id":"3fa9c07d12e4b856","message":"negative argument","type":"genericError"},"result":null}"#
        );
    }

    #[test]
    fn decodes_every_response_shape() {
        let ok = |v: Value| decode_response(v).unwrap();
        let err = |v: Value| decode_response(v).unwrap_err();
        assert_eq!(ok(json!([{"error": null, "result": 16}])), json!(16));
        assert_eq!(ok(json!([{"result": "pong"}])), json!("pong"));
        assert_eq!(ok(json!([{"error": null}])), json!(null));
        assert_eq!(ok(json!([])), json!(null));
        assert_eq!(ok(json!([null])), json!(null));
        assert_eq!(ok(json!([null, "pong"])), json!("pong"));
        assert_eq!(
            err(
                json!([{"error": {"type": "methodNotFound", "message": "Method not found: x", "code": "", "id": ""}, "result": null}])
            ),
            KiteError::method_not_found("x")
        );
        assert_eq!(err(json!([{"error": {}}])), KiteError::generic("{}"));
        assert_eq!(
            err(json!([{"message": "boom"}, 1])),
            KiteError::generic("boom")
        );
        assert_eq!(err(json!(["boom"])), KiteError::generic("boom"));
        assert_eq!(
            err(json!([{"other": 1}])),
            KiteError::generic(r#"{"other":1}"#)
        );
        assert_eq!(
            err(json!([1, 2, 3])),
            KiteError::invalid_response("Invalid array length")
        );
        assert_eq!(
            err(json!({})),
            KiteError::invalid_response("Invalid array length")
        );
    }
}
