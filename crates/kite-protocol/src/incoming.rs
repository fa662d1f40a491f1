//! Incoming messages decoded for a kite runtime in one step: the dnode message, the
//! request envelope (PROTOCOL.md 4.1) or the response (4.2), with callbacks installed.
//!
//! [`decode`] is equivalent to [`Message::decode`], [`Message::unscrub`] and then
//! [`Request::from_arguments`] (for calls) or [`decode_response`] (for responses), but
//! messages in the usual shape are decoded straight from the text into typed parts: the
//! caller's identity and credentials borrow from the text ([`KiteRef`],
//! [`AuthenticationRef`]) and no JSON tree is built for the envelope. Anything unusual
//! (kite.js `links`, callbacks outside `responseCallback` and `withArgs`, type errors)
//! takes the general path, so the results are always the same.
//!
//! Three readers are tried in turn: a hand-written one for the usual request and response
//! (strings without escapes, the standard keys; `scan.rs`), a typed `serde_json` pass,
//! and the general decoder. Each hands anything it does not take to the next.
//!
//! ```
//! use kite_protocol::dnode::{Callbacks, Limits, PathElement};
//! use kite_protocol::envelope::{encode_call_message, kite_json};
//! use kite_protocol::incoming::{self, Incoming};
//! use kite_protocol::Kite;
//! use serde_json::json;
//!
//! let me = Kite { name: "client".into(), ..Default::default() };
//! let callbacks: Callbacks =
//!     [(0, vec![PathElement::Index(0), "responseCallback".into()])].into_iter().collect();
//! let text = encode_call_message("square", &kite_json(&me), None, &json!([4]), &callbacks);
//!
//! let limits = Limits::default();
//! let Incoming::Call(call) = incoming::decode(&text, &limits).unwrap() else {
//!     panic!("a call");
//! };
//! assert_eq!(call.method, "square");
//! let request = call.request.unwrap();
//! assert_eq!(request.kite.name, "client");
//! assert_eq!(request.with_args, vec![json!(4)]);
//! assert_eq!(request.response_callback, Some(0));
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::dnode::decode::{decode_parts, decode_parts_with, Early, Parts, PartsMethod};
use crate::dnode::scrub::{place, Placed};
use crate::dnode::{
    callback_marker, parse_callback_marker, DecodeError, Limits, Message, Method, PathElement,
    UnscrubReport,
};
use crate::envelope::{decode_response, Authentication, Request, RequestError};
use crate::error::KiteError;
use crate::identity::Kite;

mod scan;

/// The keys of a request's options object that [`RequestRef`] has fields for; any other
/// key goes to [`RequestRef::fields`].
pub const STANDARD_KEYS: [&str; 4] = ["kite", "authentication", "withArgs", "responseCallback"];

/// One decoded incoming message.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // A short-lived value on the stack; boxing would allocate.
pub enum Incoming<'a> {
    /// A call of a named method (a request).
    Call(IncomingCall<'a>),
    /// An invocation of one of the receiver's callbacks: a response to its call, or a
    /// function it passed. Which one is up to the receiver's callback table, so the
    /// arguments are decoded on demand ([`IncomingCallback::arguments`] or
    /// [`IncomingCallback::response`]).
    Callback(IncomingCallback<'a>),
}

/// A call of a named method.
#[derive(Debug)]
pub struct IncomingCall<'a> {
    /// The method name.
    pub method: Cow<'a, str>,
    /// The request, or why it is not one (answer it through
    /// [`RequestError::response_callback`] when there is one).
    pub request: Result<RequestRef<'a>, RequestError>,
    /// What installing the callbacks did.
    pub report: UnscrubReport,
    /// How the request's `kite` object was read (see [`decode_escaped_after`]).
    pub kite_text: KiteText<'a>,
    /// How the request's `authentication` object was read (see [`decode_escaped_known`]):
    /// [`KiteText::Repeated`] leaves [`RequestRef::authentication`] `None`, the credential
    /// being the previous request's; only an object (not `null`) is [`KiteText::Read`].
    pub authentication_text: KiteText<'a>,
}

/// The texts of a connection's previous request that the next may repeat byte for byte
/// (see [`decode_escaped_known`]): its `kite` and `authentication` objects as they were
/// written in the escaped form (their [`KiteText::Read`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Known<'p> {
    /// The previous `kite` object.
    pub kite: Option<&'p str>,
    /// The previous `authentication` object.
    pub authentication: Option<&'p str>,
}

/// How a request's `kite` (or `authentication`) object was read by
/// [`decode_escaped_after`] or [`decode_escaped_known`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KiteText<'a> {
    /// Read the general way: nothing to remember.
    #[default]
    Unknown,
    /// Read from the escaped form: its text there, to hand to the next
    /// [`decode_escaped_after`] of the same connection.
    Read(&'a str),
    /// The very text the decoder was given: the same identity as that request's, and
    /// [`RequestRef::kite`] is left empty.
    Repeated,
}

impl IncomingCall<'_> {
    /// The caller's response callback, whether the request is valid or not.
    pub fn response_callback(&self) -> Option<u64> {
        match &self.request {
            Ok(r) => r.response_callback,
            Err(e) => e.response_callback,
        }
    }
}

/// The caller's identity as sent (`kite`), borrowing from the message text where it can.
/// Missing keys and `null`s are empty, as in [`Request::kite`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)] // The seven fields of `Kite`.
pub struct KiteRef<'a> {
    pub username: Cow<'a, str>,
    pub environment: Cow<'a, str>,
    pub name: Cow<'a, str>,
    pub version: Cow<'a, str>,
    pub region: Cow<'a, str>,
    pub hostname: Cow<'a, str>,
    pub id: Cow<'a, str>,
}

impl<'a> KiteRef<'a> {
    /// Whether every field equals `kite`'s.
    pub fn matches(&self, kite: &Kite) -> bool {
        self.id == kite.id.as_str()
            && self.name == kite.name.as_str()
            && self.username == kite.username.as_str()
            && self.environment == kite.environment.as_str()
            && self.version == kite.version.as_str()
            && self.region == kite.region.as_str()
            && self.hostname == kite.hostname.as_str()
    }

    /// An owned copy.
    pub fn to_kite(&self) -> Kite {
        Kite {
            username: self.username.clone().into_owned(),
            environment: self.environment.clone().into_owned(),
            name: self.name.clone().into_owned(),
            version: self.version.clone().into_owned(),
            region: self.region.clone().into_owned(),
            hostname: self.hostname.clone().into_owned(),
            id: self.id.clone().into_owned(),
        }
    }

    fn field_mut(&mut self, key: &str) -> Option<&mut Cow<'a, str>> {
        Some(match key {
            "username" => &mut self.username,
            "environment" => &mut self.environment,
            "name" => &mut self.name,
            "version" => &mut self.version,
            "region" => &mut self.region,
            "hostname" => &mut self.hostname,
            "id" => &mut self.id,
            _ => return None,
        })
    }
}

impl From<Kite> for KiteRef<'static> {
    fn from(k: Kite) -> KiteRef<'static> {
        KiteRef {
            username: Cow::Owned(k.username),
            environment: Cow::Owned(k.environment),
            name: Cow::Owned(k.name),
            version: Cow::Owned(k.version),
            region: Cow::Owned(k.region),
            hostname: Cow::Owned(k.hostname),
            id: Cow::Owned(k.id),
        }
    }
}

/// Credentials as sent (`authentication`), borrowing from the message text where it can.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthenticationRef<'a> {
    /// Credential type (`type` on the wire).
    pub kind: Cow<'a, str>,
    /// The credential.
    pub key: Cow<'a, str>,
}

impl AuthenticationRef<'_> {
    /// An owned copy.
    pub fn to_authentication(&self) -> Authentication {
        Authentication {
            kind: self.kind.clone().into_owned(),
            key: self.key.clone().into_owned(),
        }
    }
}

/// A request: [`Request`] with the identity and credentials borrowed, plus the options
/// object's other keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRef<'a> {
    /// The caller's claimed identity.
    pub kite: KiteRef<'a>,
    /// The credentials, if any.
    pub authentication: Option<AuthenticationRef<'a>>,
    /// The method's arguments, normalised as in [`Request::with_args`], callbacks installed.
    pub with_args: Vec<Value>,
    /// The caller's response callback.
    pub response_callback: Option<u64>,
    /// Keys of the options object besides [`STANDARD_KEYS`] (e.g. `deadline`,
    /// `traceparent`).
    pub fields: Map<String, Value>,
}

/// An invocation of one of the receiver's callbacks.
#[derive(Debug)]
pub struct IncomingCallback<'a> {
    /// The callback id.
    pub id: u64,
    parts: Parts<'a>,
    limits: &'a Limits,
    text: &'a str,
    /// `text` is in the escaped form ([`decode_escaped`]).
    escaped: bool,
}

impl IncomingCallback<'_> {
    /// The arguments for a function the receiver passed, with callbacks installed and
    /// links applied (as [`Message::unscrub`]).
    pub fn arguments(mut self) -> Result<(Vec<Value>, UnscrubReport), DecodeError> {
        if self.escaped {
            // Read as a response from the escaped form: read again from the plain text.
            let mut plain = String::with_capacity(self.text.len());
            crate::sockjs::unescape_into(self.text, &mut plain)?;
            return arguments_of(self.id, decode_parts(&plain, self.limits)?, self.limits);
        }
        if self.parts.early.is_some() {
            // Decoded as a response while parsing: read the arguments again as a tree.
            self.parts = decode_parts(self.text, self.limits)?;
        }
        arguments_of(self.id, self.parts, self.limits)
    }
}

/// The arguments of callback `id` from its decoded `parts` (see
/// [`IncomingCallback::arguments`]).
fn arguments_of(
    id: u64,
    parts: Parts<'_>,
    limits: &Limits,
) -> Result<(Vec<Value>, UnscrubReport), DecodeError> {
    let mut msg = Message {
        method: Method::Callback(id),
        arguments: parts.arguments_value()?,
        callbacks: parts.callbacks,
        links: parts.links,
    };
    let report = msg.unscrub(limits);
    let args = match msg.arguments {
        Value::Array(a) => a,
        other => vec![other],
    };
    Ok((args, report))
}

impl IncomingCallback<'_> {
    /// The outcome of a call, read as [`decode_response`] reads it. A `{"error", "result"}`
    /// response without callbacks is decoded without a JSON tree around the result.
    pub fn response(mut self) -> Result<(Result<Value, KiteError>, UnscrubReport), DecodeError> {
        let plain = self.parts.callbacks.is_empty()
            && self.parts.callbacks.invalid_ids().is_empty()
            && self.parts.links.is_empty();
        // Only the outcome is taken out (not the whole early value, which is large).
        if let (true, Some(Early::Response(outcome))) = (plain, &mut self.parts.early) {
            if let Some(outcome) = outcome.take() {
                return Ok((outcome, UnscrubReport::default()));
            }
        }
        if self.escaped {
            let (args, report) = self.arguments()?;
            return Ok((decode_response(Value::Array(args)), report));
        }
        if self.parts.early.is_some() {
            // Another shape, or callbacks to install: read the arguments as a tree.
            self.parts = decode_parts(self.text, self.limits)?;
        }
        if plain {
            if let Some(raw) = self.parts.arguments {
                let mut de = serde_json::Deserializer::from_str(raw.get());
                if let Ok(Some(outcome)) = FastResponse.deserialize(&mut de) {
                    return Ok((outcome, UnscrubReport::default()));
                }
            }
        }
        let (args, report) = self.arguments()?;
        Ok((decode_response(Value::Array(args)), report))
    }
}

/// Decodes one incoming message within `limits` (see the [module docs](self)).
pub fn decode<'a>(text: &'a str, limits: &'a Limits) -> Result<Incoming<'a>, DecodeError> {
    // The usual request and response, read by hand.
    if let Some((method, request, report)) = scan::request::<false>(text, limits) {
        return Ok(Incoming::Call(IncomingCall {
            method: Cow::Borrowed(method),
            request: Ok(request),
            report,
            kite_text: KiteText::Unknown,
            authentication_text: KiteText::Unknown,
        }));
    }
    if let Some(callback) = scanned_response::<false>(text, limits) {
        return Ok(Incoming::Callback(callback));
    }
    decode_general(text, limits)
}

/// The usual response, read by hand (from the escaped form if `E`).
fn scanned_response<'a, const E: bool>(
    text: &'a str,
    limits: &'a Limits,
) -> Option<IncomingCallback<'a>> {
    let (id, outcome) = scan::response::<E>(text, limits)?;
    Some(IncomingCallback {
        id,
        parts: Parts {
            method: PartsMethod::Callback(id),
            arguments: None,
            early: Some(Early::Response(Some(outcome))),
            callbacks: Default::default(),
            links: Vec::new(),
        },
        limits,
        text,
        escaped: E,
    })
}

/// [`decode`] for a message in the escaped form of a SockJS frame's string
/// ([`Escaped`](crate::sockjs::Escaped), as [`split_messages`](crate::sockjs::split_messages)
/// gives them): the usual request and response are read from that form as they are,
/// their quotes being `\"`, which saves unescaping them first; anything else is unescaped into `scratch` and decoded
/// from there. The result is always [`decode`]'s of the unescaped text.
///
/// ```
/// use kite_protocol::dnode::{Callbacks, Limits};
/// use kite_protocol::envelope::{encode_plain_call_message, kite_json};
/// use kite_protocol::incoming::{self, Incoming};
/// use kite_protocol::sockjs::Escaped;
/// use kite_protocol::Kite;
/// use serde_json::json;
///
/// let me = kite_json(&Kite { name: "client".into(), ..Default::default() });
/// let text = encode_plain_call_message("square", &me, None, &json!([4]), 1);
/// let escaped = Escaped::new(&text);
/// let (limits, mut scratch) = (Limits::default(), String::new());
/// let Incoming::Call(call) = incoming::decode_escaped(escaped.as_str(), &mut scratch, &limits)
///     .unwrap() else { panic!("a call") };
/// assert_eq!(call.method, "square");
/// assert_eq!(call.request.unwrap().with_args, vec![json!(4)]);
/// ```
pub fn decode_escaped<'a>(
    escaped: &'a str,
    scratch: &'a mut String,
    limits: &'a Limits,
) -> Result<Incoming<'a>, DecodeError> {
    decode_escaped_after(escaped, scratch, limits, None)
}

/// [`decode_escaped`] for the next message of a connection whose previous request had the
/// `kite` object `previous_kite` (the [`KiteText::Read`] of that request). Callers send
/// the same identity with every request: when the bytes are the same, the object is passed
/// over rather than read, [`IncomingCall::kite_text`] is [`KiteText::Repeated`] and
/// [`RequestRef::kite`] is left empty (the caller reuses what it made of the previous
/// one). Otherwise the result is [`decode_escaped`]'s.
///
/// ```
/// use kite_protocol::dnode::Limits;
/// use kite_protocol::envelope::{encode_plain_call_message, kite_json};
/// use kite_protocol::incoming::{self, Incoming, KiteText};
/// use kite_protocol::sockjs::Escaped;
/// use kite_protocol::Kite;
/// use serde_json::json;
///
/// let me = kite_json(&Kite { name: "client".into(), ..Default::default() });
/// let first = Escaped::new(&encode_plain_call_message("square", &me, None, &json!([4]), 1));
/// let second = Escaped::new(&encode_plain_call_message("square", &me, None, &json!([5]), 2));
/// let (limits, mut scratch) = (Limits::default(), String::new());
/// let Incoming::Call(call) = incoming::decode_escaped(first.as_str(), &mut scratch, &limits)
///     .unwrap() else { panic!("a call") };
/// let KiteText::Read(known) = call.kite_text else { panic!("read from the escaped form") };
/// let known = known.to_owned();
/// let mut scratch = String::new();
/// let Incoming::Call(next) =
///     incoming::decode_escaped_after(second.as_str(), &mut scratch, &limits, Some(&known))
///         .unwrap() else { panic!("a call") };
/// assert_eq!(next.kite_text, KiteText::Repeated);
/// assert_eq!(next.request.unwrap().with_args, vec![json!(5)]);
/// ```
pub fn decode_escaped_after<'a>(
    escaped: &'a str,
    scratch: &'a mut String,
    limits: &'a Limits,
    previous_kite: Option<&str>,
) -> Result<Incoming<'a>, DecodeError> {
    let known = Known {
        kite: previous_kite,
        authentication: None,
    };
    decode_escaped_known(escaped, scratch, limits, known)
}

/// [`decode_escaped_after`] told both the `kite` and the `authentication` object of the
/// connection's previous request (each its [`KiteText::Read`]). A credential repeated byte
/// for byte (a token travels with every call, and is most of the request) is passed over
/// too: [`IncomingCall::authentication_text`] is [`KiteText::Repeated`] and
/// [`RequestRef::authentication`] is `None` (the caller reuses the previous credential).
///
/// ```
/// use kite_protocol::dnode::Limits;
/// use kite_protocol::envelope::{authentication_json, encode_plain_call_message, kite_json, Authentication};
/// use kite_protocol::incoming::{self, Incoming, KiteText, Known};
/// use kite_protocol::sockjs::Escaped;
/// use kite_protocol::Kite;
/// use serde_json::json;
///
/// let me = kite_json(&Kite { name: "client".into(), ..Default::default() });
/// let token = authentication_json(&Authentication::new("token", "eyJhbGciOi.x.y"));
/// let call = |n| Escaped::new(&encode_plain_call_message("square", &me, Some(&token), &json!([n]), n));
/// let (first, second) = (call(4), call(5));
/// let (limits, mut scratch) = (Limits::default(), String::new());
/// let Incoming::Call(c) = incoming::decode_escaped(first.as_str(), &mut scratch, &limits)
///     .unwrap() else { panic!("a call") };
/// let KiteText::Read(auth) = c.authentication_text else { panic!("read") };
/// assert_eq!(c.request.unwrap().authentication.unwrap().kind, "token");
/// let known = Known { kite: None, authentication: Some(auth) };
/// let mut scratch = String::new();
/// let Incoming::Call(next) =
///     incoming::decode_escaped_known(second.as_str(), &mut scratch, &limits, known)
///         .unwrap() else { panic!("a call") };
/// assert_eq!(next.authentication_text, KiteText::Repeated);
/// assert!(next.request.unwrap().authentication.is_none());
/// ```
pub fn decode_escaped_known<'a>(
    escaped: &'a str,
    scratch: &'a mut String,
    limits: &'a Limits,
    known: Known<'_>,
) -> Result<Incoming<'a>, DecodeError> {
    if let Some((method, request, report, texts)) =
        scan::request_after::<true>(escaped, limits, known)
    {
        return Ok(Incoming::Call(IncomingCall {
            method: Cow::Borrowed(method),
            request: Ok(request),
            report,
            kite_text: texts.kite,
            authentication_text: texts.authentication,
        }));
    }
    if let Some(callback) = scanned_response::<true>(escaped, limits) {
        return Ok(Incoming::Callback(callback));
    }
    scratch.clear();
    scratch.reserve(escaped.len());
    crate::sockjs::unescape_into(escaped, scratch)?;
    decode(scratch, limits)
}

/// [`decode`] without the hand-written reader of [`scan`].
fn decode_general<'a>(text: &'a str, limits: &'a Limits) -> Result<Incoming<'a>, DecodeError> {
    // First try: arguments after the method (Go's and our order) are decoded typed in the
    // same pass.
    if let Ok(mut parts) = decode_parts_with(text, limits, true) {
        // Matched by reference: `Parts` is large, and a response keeps its early outcome.
        match (&parts.early, &parts.method) {
            (None, _) => return from_parts(text, parts, limits),
            (Some(Early::Request(_)), PartsMethod::Name(_)) => {
                if let Some(Early::Request(options)) = parts.early.take() {
                    if let Some((request, report)) = fast_request(&parts, options) {
                        if let PartsMethod::Name(name) = parts.method {
                            return Ok(Incoming::Call(IncomingCall {
                                method: name,
                                request: Ok(request),
                                report,
                                kite_text: KiteText::Unknown,
                                authentication_text: KiteText::Unknown,
                            }));
                        }
                    }
                }
            }
            (Some(Early::Response(_)), &PartsMethod::Callback(id)) => {
                return Ok(Incoming::Callback(IncomingCallback {
                    id,
                    parts,
                    limits,
                    text,
                    escaped: false,
                }));
            }
            // A repeated `method` key changed its kind: read everything again.
            (Some(_), _) => {}
        }
    }
    from_parts(text, decode_parts(text, limits)?, limits)
}

/// A message whose arguments are raw text (or absent).
fn from_parts<'a>(
    text: &'a str,
    parts: Parts<'a>,
    limits: &'a Limits,
) -> Result<Incoming<'a>, DecodeError> {
    let name = match parts.method {
        PartsMethod::Callback(id) => {
            return Ok(Incoming::Callback(IncomingCallback {
                id,
                parts,
                limits,
                text,
                escaped: false,
            }))
        }
        PartsMethod::Name(ref n) => n.clone(),
    };
    if let Some(raw) = parts.arguments.filter(|_| fast_eligible(&parts)) {
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let options = OneOptions
            .deserialize(&mut de)
            .ok()
            .filter(|_| de.end().is_ok());
        if let Some((request, report)) = options.and_then(|o| fast_request(&parts, o)) {
            return Ok(Incoming::Call(IncomingCall {
                method: name,
                request: Ok(request),
                report,
                kite_text: KiteText::Unknown,
                authentication_text: KiteText::Unknown,
            }));
        }
    }
    // The general path: a JSON tree, unscrubbed, then read.
    let mut msg = Message {
        method: Method::Callback(0),
        arguments: parts.arguments_value()?,
        callbacks: parts.callbacks,
        links: parts.links,
    };
    let report = msg.unscrub(limits);
    let fields = take_extra_fields(&mut msg.arguments);
    let request = Request::from_arguments(msg.arguments).map(|r| RequestRef {
        kite: r.kite.into(),
        authentication: r.authentication.map(|a| AuthenticationRef {
            kind: Cow::Owned(a.kind),
            key: Cow::Owned(a.key),
        }),
        with_args: r.with_args,
        response_callback: r.response_callback,
        fields,
    });
    Ok(Incoming::Call(IncomingCall {
        method: name,
        request,
        report,
        kite_text: KiteText::Unknown,
        authentication_text: KiteText::Unknown,
    }))
}

/// Moves the non-standard keys out of a request's options object.
fn take_extra_fields(arguments: &mut Value) -> Map<String, Value> {
    let mut extra = Map::new();
    if let Some(Value::Object(options)) = arguments.get_mut(0) {
        if options.keys().any(|k| !STANDARD_KEYS.contains(&k.as_str())) {
            let keys: Vec<String> = options
                .keys()
                .filter(|k| !STANDARD_KEYS.contains(&k.as_str()))
                .cloned()
                .collect();
            for k in keys {
                if let Some(v) = options.remove(&k) {
                    extra.insert(k, v);
                }
            }
        }
    }
    extra
}

/// Where a callback of the usual shape goes.
enum Target<'p> {
    ResponseCallback,
    /// Inside `withArgs`, at this path below it (never empty).
    WithArgs(&'p [PathElement]),
}

fn target(path: &[PathElement]) -> Option<Target<'_>> {
    let (first, rest) = path.split_first()?;
    if first.as_index() != Some(0) {
        return None;
    }
    match rest.split_first()? {
        (PathElement::Key(k), []) if k == "responseCallback" => Some(Target::ResponseCallback),
        (PathElement::Key(k), below) if k == "withArgs" && !below.is_empty() => {
            Some(Target::WithArgs(below))
        }
        _ => None,
    }
}

/// Whether the fast path can take the message: no links, and every callback at
/// `responseCallback` or inside `withArgs`. Checked before the options are decoded, so
/// a message that cannot take it is not decoded typed for nothing.
fn fast_eligible(parts: &Parts<'_>) -> bool {
    parts.links.is_empty() && parts.callbacks.iter().all(|(_, p)| target(p).is_some())
}

/// The request in the usual shape, decoded without a JSON tree for the envelope; `None`
/// sends the message down the general path.
fn fast_request<'a>(
    parts: &Parts<'a>,
    options: Options<'a>,
) -> Option<(RequestRef<'a>, UnscrubReport)> {
    if !fast_eligible(parts) {
        return None;
    }

    let mut report = UnscrubReport {
        invalid: parts.callbacks.invalid_ids().len(),
        ..UnscrubReport::default()
    };
    let mut response_callback = None;
    let mut with_args = options.with_args;
    for (id, path) in parts.callbacks.iter() {
        match target(path)? {
            Target::ResponseCallback => {
                response_callback = Some(id);
                report.installed += 1;
            }
            Target::WithArgs(below) => match with_args.as_mut() {
                None => report.missing += 1,
                Some(w) => match place(w, below, Value::String(callback_marker(id))) {
                    Placed::Done => report.installed += 1,
                    Placed::Missing => report.missing += 1,
                    Placed::Invalid => report.invalid += 1,
                },
            },
        }
    }
    if response_callback.is_none() {
        response_callback = options
            .response_callback
            .as_deref()
            .and_then(parse_callback_marker);
    }
    let with_args = match with_args {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(other) => vec![other],
    };
    Some((
        RequestRef {
            kite: options.kite,
            authentication: options.authentication,
            with_args,
            response_callback,
            fields: options.fields,
        },
        report,
    ))
}

/// The options object as decoded by the fast path.
#[derive(Debug, Default)]
pub(crate) struct Options<'a> {
    kite: KiteRef<'a>,
    authentication: Option<AuthenticationRef<'a>>,
    with_args: Option<Value>,
    /// The `responseCallback` value when it is a string.
    response_callback: Option<Cow<'a, str>>,
    fields: Map<String, Value>,
}

/// A string that borrows from the text when it has no escapes; `null` is empty. Other
/// types fail (the general path then produces the error message).
struct Text<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or null")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed("")))
            }
        }
        d.deserialize_any(V)
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// `[options]`: exactly one element, an object.
pub(crate) struct OneOptions;

impl<'de> DeserializeSeed<'de> for OneOptions {
    type Value = Options<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Options<'de>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for OneOptions {
    type Value = Options<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[options]")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Options<'de>, A::Error> {
        let options = seq
            .next_element_seed(OptionsSeed)?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(2, &self));
        }
        Ok(options)
    }
}

struct OptionsSeed;

impl<'de> DeserializeSeed<'de> for OptionsSeed {
    type Value = Options<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Options<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OptionsSeed {
    type Value = Options<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an options object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Options<'de>, A::Error> {
        let mut o = Options::default();
        // A repeated key replaces the earlier value, as in a JSON tree.
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match key.as_ref() {
                "kite" => o.kite = map.next_value_seed(KiteSeed)?,
                "authentication" => o.authentication = map.next_value_seed(AuthSeed)?,
                "withArgs" => o.with_args = Some(map.next_value()?),
                "responseCallback" => {
                    let raw: &'de RawValue = map.next_value()?;
                    o.response_callback = if raw.get().starts_with('"') {
                        serde_json::from_str::<Text<'de>>(raw.get())
                            .ok()
                            .map(|t| t.0)
                    } else {
                        None
                    };
                }
                _ => {
                    let v: Value = map.next_value()?;
                    o.fields.insert(key.into_owned(), v);
                }
            }
        }
        Ok(o)
    }
}

/// `kite`: an object of string (or `null`) fields, or `null`.
struct KiteSeed;

impl<'de> DeserializeSeed<'de> for KiteSeed {
    type Value = KiteRef<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<KiteRef<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KiteSeed {
    type Value = KiteRef<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a kite object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<KiteRef<'de>, E> {
        Ok(KiteRef::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KiteRef<'de>, A::Error> {
        let mut k = KiteRef::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match k.field_mut(&key) {
                Some(slot) => *slot = map.next_value::<Text<'de>>()?.0,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(k)
    }
}

/// `authentication`: an object of string (or `null`) fields, or `null` (→ `None`).
struct AuthSeed;

impl<'de> DeserializeSeed<'de> for AuthSeed {
    type Value = Option<AuthenticationRef<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AuthSeed {
    type Value = Option<AuthenticationRef<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an authentication object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut a = AuthenticationRef::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match key.as_ref() {
                "type" => a.kind = map.next_value::<Text<'de>>()?.0,
                "key" => a.key = map.next_value::<Text<'de>>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(a))
    }
}

/// `[{"error": ..., "result": ...}]` with at least one of the two keys: `Some(outcome)`.
/// Any other shape: `None` (the general path reads it).
pub(crate) struct FastResponse;

impl<'de> DeserializeSeed<'de> for FastResponse {
    type Value = Option<Result<Value, KiteError>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for FastResponse {
    type Value = Option<Result<Value, KiteError>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[response]")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let Some(outcome) = seq.next_element_seed(ResponseObject)? else {
            return Ok(None);
        };
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Ok(None);
        }
        Ok(outcome)
    }
}

struct ResponseObject;

impl<'de> DeserializeSeed<'de> for ResponseObject {
    type Value = Option<Result<Value, KiteError>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ResponseObject {
    type Value = Option<Result<Value, KiteError>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a response object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut error, mut result) = (None, None);
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match key.as_ref() {
                "error" => error = Some(map.next_value::<Value>()?),
                "result" => result = Some(map.next_value::<Value>()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if error.is_none() && result.is_none() {
            return Ok(None);
        }
        Ok(Some(match error {
            None | Some(Value::Null) => Ok(result.unwrap_or(Value::Null)),
            Some(e) => Err(KiteError::from_value(&e)),
        }))
    }
}
