//! The bounded dnode decoder: one serde pass over the text that checks the callback ids,
//! counts and path shapes while parsing, so oversized or malformed `callbacks`/`links`
//! are rejected before they are built.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::value::RawValue;
use serde_json::Value;

use super::{
    json_type_name, Callbacks, DecodeError, Limits, Link, Message, Method, Path, PathElement,
};

/// Where a visitor leaves a typed error before returning a serde error that aborts parsing.
type Slot<'a> = &'a Cell<Option<DecodeError>>;

/// Largest integer a path element or method may be when written as a float (2^53).
const MAX_SAFE_FLOAT: f64 = 9_007_199_254_740_992.0;

pub(super) fn decode(text: &str, limits: &Limits) -> Result<Message, DecodeError> {
    let parts = decode_parts(text, limits)?;
    let arguments = parts.arguments_value()?;
    let method = match parts.method {
        PartsMethod::Name(n) => Method::Name(n.into_owned()),
        PartsMethod::Callback(id) => Method::Callback(id),
    };
    Ok(Message {
        method,
        arguments,
        callbacks: parts.callbacks,
        links: parts.links,
    })
}

/// The method of a message decoded by [`decode_parts`], borrowing its name from the text
/// when it has no escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PartsMethod<'a> {
    Name(Cow<'a, str>),
    Callback(u64),
}

/// A message whose `arguments` are left as raw JSON text: the caller decides how to
/// parse them once the method and callbacks are known (a typed request envelope, a
/// response, or a generic [`Value`]).
#[derive(Debug)]
pub(crate) struct Parts<'a> {
    pub method: PartsMethod<'a>,
    /// `None` when absent or `null` (or decoded early); otherwise the raw text of a JSON
    /// array (checked).
    pub arguments: Option<&'a RawValue>,
    /// The arguments decoded as soon as they were met (see [`decode_parts_with`]).
    pub early: Option<Early<'a>>,
    pub callbacks: Callbacks,
    pub links: Vec<Link>,
}

impl Parts<'_> {
    /// The arguments as a [`Value`] array (`[]` when absent or `null`).
    pub fn arguments_value(&self) -> Result<Value, DecodeError> {
        match self.arguments {
            None => Ok(Value::Array(Vec::new())),
            Some(raw) => Ok(serde_json::from_str(raw.get())?),
        }
    }
}

/// Decodes a message within `limits`, validating everything but leaving `arguments` as
/// raw text (whose JSON syntax is checked; its nesting depth is checked when it is parsed).
pub(crate) fn decode_parts<'a>(text: &'a str, limits: &Limits) -> Result<Parts<'a>, DecodeError> {
    decode_parts_with(text, limits, false)
}

/// [`decode_parts`]; with `early`, arguments that follow a `method` are decoded right away
/// as a request envelope or a response ([`Parts::early`]) instead of being kept as raw
/// text. Such a decode fails on any shape the typed decoders do not take; the caller then
/// decodes again without `early`.
pub(crate) fn decode_parts_with<'a>(
    text: &'a str,
    limits: &Limits,
    early: bool,
) -> Result<Parts<'a>, DecodeError> {
    if text.len() > limits.max_message_bytes {
        return Err(DecodeError::TooLarge {
            size: text.len(),
            max: limits.max_message_bytes,
        });
    }
    let slot = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let raw = match (MessageSeed {
        limits,
        slot: &slot,
        early,
    })
    .deserialize(&mut de)
    .and_then(|raw| de.end().map(|()| raw))
    {
        Ok(raw) => raw,
        Err(e) => return Err(slot.take().unwrap_or(DecodeError::Json(e))),
    };
    let method = match raw.method {
        None => return Err(DecodeError::MissingMethod),
        Some(RawMethod::Name(n)) => PartsMethod::Name(n),
        Some(RawMethod::Id(id)) => PartsMethod::Callback(id),
        Some(RawMethod::Unsupported(what)) => return Err(DecodeError::UnsupportedMethod(what)),
    };
    let arguments = match raw.arguments {
        None => None,
        Some(a) => match a.get().as_bytes().first() {
            Some(b'[') => Some(a),
            Some(b'n') => None,
            _ => {
                let other: Value = serde_json::from_str(a.get())?;
                return Err(DecodeError::InvalidArguments(json_type_name(&other)));
            }
        },
    };
    Ok(Parts {
        method,
        arguments,
        early: raw.early,
        callbacks: raw.callbacks.unwrap_or_default(),
        links: raw.links.unwrap_or_default(),
    })
}

/// Arguments decoded by a typed decoder while parsing the message.
#[derive(Debug)]
pub(crate) enum Early<'a> {
    /// The options of a call of a named method.
    Request(crate::incoming::Options<'a>),
    /// A response `[{"error", "result"}]`: its outcome, or `None` for another shape.
    Response(Option<Result<Value, crate::error::KiteError>>),
}

#[derive(Default)]
struct RawMessage<'a> {
    method: Option<RawMethod<'a>>,
    arguments: Option<&'a RawValue>,
    early: Option<Early<'a>>,
    callbacks: Option<Callbacks>,
    links: Option<Vec<Link>>,
}

struct MessageSeed<'a> {
    limits: &'a Limits,
    slot: Slot<'a>,
    early: bool,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_> {
    type Value = RawMessage<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawMessage<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_> {
    type Value = RawMessage<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a dnode message object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawMessage<'de>, A::Error> {
        let mut raw = RawMessage::default();
        while let Some(key) = map.next_key::<TopKey>()? {
            match key {
                TopKey::Method => raw.method = Some(map.next_value()?),
                TopKey::Arguments => match (&raw.method, self.early) {
                    (Some(RawMethod::Name(_)), true) => {
                        raw.early = Some(Early::Request(
                            map.next_value_seed(crate::incoming::OneOptions)?,
                        ));
                        raw.arguments = None;
                    }
                    (Some(RawMethod::Id(_)), true) => {
                        raw.early = Some(Early::Response(
                            map.next_value_seed(crate::incoming::FastResponse)?,
                        ));
                        raw.arguments = None;
                    }
                    _ => {
                        raw.arguments = Some(map.next_value()?);
                        raw.early = None;
                    }
                },
                TopKey::Callbacks => {
                    raw.callbacks = Some(map.next_value_seed(CallbacksSeed {
                        limits: self.limits,
                        slot: self.slot,
                    })?)
                }
                TopKey::Links => {
                    raw.links = Some(map.next_value_seed(LinksSeed {
                        limits: self.limits,
                        slot: self.slot,
                    })?)
                }
                TopKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(raw)
    }
}

enum TopKey {
    Method,
    Arguments,
    Callbacks,
    Links,
    Other,
}

impl<'de> de::Deserialize<'de> for TopKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TopKey, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TopKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TopKey, E> {
                Ok(match v {
                    "method" => TopKey::Method,
                    "arguments" => TopKey::Arguments,
                    "callbacks" => TopKey::Callbacks,
                    "links" => TopKey::Links,
                    _ => TopKey::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// Drains the rest of a sequence.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Drains the rest of a map.
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

enum RawMethod<'a> {
    Name(Cow<'a, str>),
    Id(u64),
    Unsupported(String),
}

impl<'de> de::Deserialize<'de> for RawMethod<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawMethod<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMethod<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a method name or callback id")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<RawMethod<'de>, E> {
                Ok(RawMethod::Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawMethod<'de>, E> {
                Ok(RawMethod::Name(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawMethod<'de>, E> {
                Ok(RawMethod::Name(Cow::Owned(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawMethod<'de>, E> {
                Ok(RawMethod::Id(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawMethod<'de>, E> {
                Ok(match u64::try_from(v) {
                    Ok(id) => RawMethod::Id(id),
                    Err(_) => RawMethod::Unsupported(v.to_string()),
                })
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawMethod<'de>, E> {
                Ok(if v.fract() == 0.0 && (0.0..=MAX_SAFE_FLOAT).contains(&v) {
                    // Exact: an integral float no larger than 2^53.
                    RawMethod::Id(v as u64)
                } else {
                    RawMethod::Unsupported(v.to_string())
                })
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawMethod<'de>, E> {
                Ok(RawMethod::Unsupported(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawMethod<'de>, E> {
                Ok(RawMethod::Unsupported("null".to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawMethod<'de>, A::Error> {
                drain_seq(seq)?;
                Ok(RawMethod::Unsupported("an array".to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawMethod<'de>, A::Error> {
                drain_map(map)?;
                Ok(RawMethod::Unsupported("an object".to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

struct CallbacksSeed<'a> {
    limits: &'a Limits,
    slot: Slot<'a>,
}

impl<'de> DeserializeSeed<'de> for CallbacksSeed<'_> {
    type Value = Callbacks;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Callbacks, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CallbacksSeed<'_> {
    type Value = Callbacks;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a callbacks object")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Callbacks, E> {
        Ok(Callbacks::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Callbacks, A::Error> {
        let mut callbacks = Callbacks::default();
        while let Some(id) = map.next_key_seed(CallbackIdSeed)? {
            let id = match id {
                Ok(id) => id,
                Err(text) => {
                    self.slot.set(Some(DecodeError::InvalidCallbackId(text)));
                    return Err(A::Error::custom("invalid callback id"));
                }
            };
            if callbacks.entries.len() + callbacks.invalid.len() >= self.limits.max_callbacks {
                self.slot.set(Some(DecodeError::TooManyCallbacks {
                    max: self.limits.max_callbacks,
                }));
                return Err(A::Error::custom("too many callbacks"));
            }
            match map.next_value_seed(PathSeed {
                max_len: self.limits.max_path_len,
            })? {
                Some(path) => callbacks.entries.push((id, path)),
                None => callbacks.invalid.push(id),
            }
        }
        Ok(callbacks)
    }
}

/// A callback id key: `Ok(id)` for a decimal unsigned integer, else `Err(key text)`
/// (shortened).
struct CallbackIdSeed;

impl<'de> DeserializeSeed<'de> for CallbackIdSeed {
    type Value = Result<u64, String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for CallbackIdSeed {
    type Value = Result<u64, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a callback id")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(id) = v.parse::<u64>() {
                return Ok(Ok(id));
            }
        }
        let mut shown: String = v.chars().take(32).collect();
        if shown.len() < v.len() {
            shown.push('…');
        }
        Ok(Err(shown))
    }
}

/// A path: `Some(path)` when it is an array of strings and non-negative integers no
/// longer than `max_len`, else `None` (the whole value is consumed either way).
struct PathSeed {
    max_len: usize,
}

impl<'de> DeserializeSeed<'de> for PathSeed {
    type Value = Option<Path>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Path>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PathSeed {
    type Value = Option<Path>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a callback path")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Path>, A::Error> {
        let mut path = Vec::new();
        let mut valid = true;
        while let Some(elem) = seq.next_element::<RawElement>()? {
            match elem {
                RawElement::Valid(e) if valid && path.len() < self.max_len => path.push(e),
                _ => valid = false,
            }
        }
        Ok(valid.then_some(path))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<Path>, A::Error> {
        drain_map(map)?;
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Option<Path>, E> {
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<Path>, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<Path>, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<Path>, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<Path>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<Path>, E> {
        Ok(None)
    }
}

enum RawElement {
    Valid(PathElement),
    Invalid,
}

impl<'de> de::Deserialize<'de> for RawElement {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawElement, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawElement;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path element")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawElement, E> {
                Ok(RawElement::Valid(PathElement::Key(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawElement, E> {
                Ok(RawElement::Valid(PathElement::Key(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawElement, E> {
                Ok(RawElement::Valid(PathElement::Index(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawElement, E> {
                Ok(match u64::try_from(v) {
                    Ok(i) => RawElement::Valid(PathElement::Index(i)),
                    Err(_) => RawElement::Invalid,
                })
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawElement, E> {
                Ok(if v.fract() == 0.0 && (0.0..=MAX_SAFE_FLOAT).contains(&v) {
                    RawElement::Valid(PathElement::Index(v as u64))
                } else {
                    RawElement::Invalid
                })
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawElement, E> {
                Ok(RawElement::Invalid)
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawElement, E> {
                Ok(RawElement::Invalid)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawElement, A::Error> {
                drain_seq(seq)?;
                Ok(RawElement::Invalid)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawElement, A::Error> {
                drain_map(map)?;
                Ok(RawElement::Invalid)
            }
        }
        d.deserialize_any(V)
    }
}

/// `links`: an array of `{from, to}`; anything else (including `null`) means no links;
/// malformed entries are skipped.
struct LinksSeed<'a> {
    limits: &'a Limits,
    slot: Slot<'a>,
}

impl<'de> DeserializeSeed<'de> for LinksSeed<'_> {
    type Value = Vec<Link>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Link>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LinksSeed<'_> {
    type Value = Vec<Link>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a links array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Link>, A::Error> {
        let mut links = Vec::new();
        let mut count = 0usize;
        loop {
            if count >= self.limits.max_links {
                // One more element means too many.
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    self.slot.set(Some(DecodeError::TooManyLinks {
                        max: self.limits.max_links,
                    }));
                    return Err(A::Error::custom("too many links"));
                }
                return Ok(links);
            }
            match seq.next_element_seed(LinkSeed {
                max_len: self.limits.max_path_len,
            })? {
                None => return Ok(links),
                Some(link) => {
                    count += 1;
                    links.extend(link);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<Link>, A::Error> {
        drain_map(map)?;
        Ok(Vec::new())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Vec<Link>, E> {
        Ok(Vec::new())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Vec<Link>, E> {
        Ok(Vec::new())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Vec<Link>, E> {
        Ok(Vec::new())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Vec<Link>, E> {
        Ok(Vec::new())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Vec<Link>, E> {
        Ok(Vec::new())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<Link>, E> {
        Ok(Vec::new())
    }
}

/// One link: `Some` when it is an object whose `from` and `to` are valid paths.
struct LinkSeed {
    max_len: usize,
}

impl<'de> DeserializeSeed<'de> for LinkSeed {
    type Value = Option<Link>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Link>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LinkSeed {
    type Value = Option<Link>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a link")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Link>, A::Error> {
        let (mut from, mut to) = (None, None);
        while let Some(key) = map.next_key::<LinkKey>()? {
            let seed = PathSeed {
                max_len: self.max_len,
            };
            match key {
                LinkKey::From => from = map.next_value_seed(seed)?,
                LinkKey::To => to = map.next_value_seed(seed)?,
                LinkKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(from.zip(to).map(|(from, to)| Link { from, to }))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Option<Link>, A::Error> {
        drain_seq(seq)?;
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Option<Link>, E> {
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<Link>, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<Link>, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<Link>, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<Link>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<Link>, E> {
        Ok(None)
    }
}

enum LinkKey {
    From,
    To,
    Other,
}

impl<'de> de::Deserialize<'de> for LinkKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LinkKey, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = LinkKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LinkKey, E> {
                Ok(match v {
                    "from" => LinkKey::From,
                    "to" => LinkKey::To,
                    _ => LinkKey::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(text: &str) -> Result<Message, DecodeError> {
        Message::decode(text, &Limits::default())
    }

    #[test]
    fn decodes_go_and_js_shapes() {
        let m = decode(r#"{"method":"square","arguments":[{"withArgs":[4]}],"callbacks":{"0":[0,"responseCallback"]}}"#).unwrap();
        assert_eq!(m.method, Method::Name("square".into()));
        assert_eq!(m.arguments, json!([{"withArgs":[4]}]));
        assert_eq!(
            m.callbacks.get(0).unwrap(),
            &vec![
                PathElement::Index(0),
                PathElement::Key("responseCallback".into())
            ]
        );
        let m = decode(r#"{"arguments":[],"callbacks":{"0":["0","responseCallback"]},"links":[],"method":3,"extra":{"x":[1]}}"#).unwrap();
        assert_eq!(m.method, Method::Callback(3));
        assert_eq!(m.callbacks.get(0).unwrap()[0], PathElement::Key("0".into()));
        let m = decode(r#"{"method":"call"}"#).unwrap();
        assert_eq!(m.arguments, json!([]));
        assert!(m.callbacks.is_empty());
        let m = decode(r#"{"method":2.0,"arguments":null,"callbacks":null,"links":null}"#).unwrap();
        assert_eq!(m.method, Method::Callback(2));
        assert_eq!(m.arguments, json!([]));
    }

    #[test]
    fn unsupported_methods_are_distinguishable() {
        for (text, what) in [
            (r#"{"method":true}"#, "true"),
            (r#"{"method":-1}"#, "-1"),
            (r#"{"method":1.5}"#, "1.5"),
            (r#"{"method":null}"#, "null"),
            (r#"{"method":[1,[2]]}"#, "an array"),
            (r#"{"method":{"a":{}}}"#, "an object"),
        ] {
            match decode(text) {
                Err(DecodeError::UnsupportedMethod(w)) => assert_eq!(w, what, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            decode(r#"{"arguments":[]}"#),
            Err(DecodeError::MissingMethod)
        ));
    }

    #[test]
    fn rejects_bad_shapes() {
        for text in [
            "",
            "x",
            "[]",
            "5",
            "\"m\"",
            "{\"method\":\"a\"} x",
            "{\"method\":\"a\",}",
        ] {
            assert!(
                matches!(decode(text), Err(DecodeError::Json(_))),
                "{text:?}"
            );
        }
        assert!(matches!(
            decode(r#"{"method":"a","arguments":{"x":1}}"#),
            Err(DecodeError::InvalidArguments("an object"))
        ));
        assert!(matches!(
            decode(r#"{"method":"a","callbacks":[[0]]}"#),
            Err(DecodeError::Json(_))
        ));
        for id in ["x", "-1", "", "+1", " 1", "1.0", "18446744073709551616"] {
            let text = format!(r#"{{"method":"a","callbacks":{{"{id}":[0]}}}}"#);
            match decode(&text) {
                Err(DecodeError::InvalidCallbackId(shown)) => assert_eq!(shown, id),
                other => panic!("{id:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn unusable_paths_are_kept_apart() {
        let m = decode(
            r#"{"method":"a","callbacks":{"1":[0,true],"2":"0","3":[-1],"4":[0.5],"5":[[0]],"6":[],"7":[0,{"a":1}],"8":[1.0,"x"]}}"#,
        )
        .unwrap();
        assert_eq!(m.callbacks.invalid_ids(), &[1, 2, 3, 4, 5, 7]);
        assert_eq!(m.callbacks.get(6).unwrap(), &Vec::<PathElement>::new());
        assert_eq!(
            m.callbacks.get(8).unwrap(),
            &vec![PathElement::Index(1), PathElement::Key("x".into())]
        );
        let limits = Limits {
            max_path_len: 2,
            ..Limits::default()
        };
        let m = Message::decode(
            r#"{"method":"a","callbacks":{"1":[0,1,2],"2":[0,1]}}"#,
            &limits,
        )
        .unwrap();
        assert_eq!(m.callbacks.invalid_ids(), &[1]);
        assert_eq!(m.callbacks.len(), 1);
    }

    #[test]
    fn links_are_parsed_leniently() {
        let m = decode(r#"{"method":"a","links":[{"from":["0"],"to":["0","b",1]},{"from":[true],"to":[]},5,{"to":[1]}]}"#).unwrap();
        assert_eq!(
            m.links,
            vec![Link {
                from: vec!["0".into()],
                to: vec!["0".into(), "b".into(), 1.into()]
            }]
        );
        let m = decode(r#"{"method":"a","links":{"from":[0]}}"#).unwrap();
        assert!(m.links.is_empty());
        let limits = Limits {
            max_links: 2,
            ..Limits::default()
        };
        assert!(Message::decode(r#"{"method":"a","links":[1,2]}"#, &limits).is_ok());
        assert!(matches!(
            Message::decode(r#"{"method":"a","links":[1,2,3]}"#, &limits),
            Err(DecodeError::TooManyLinks { max: 2 })
        ));
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_message_bytes: 10,
            max_callbacks: 2,
            ..Limits::default()
        };
        assert!(matches!(
            Message::decode(r#"{"method":"abcdef"}"#, &limits),
            Err(DecodeError::TooLarge { size: 19, max: 10 })
        ));
        let limits = Limits {
            max_callbacks: 2,
            ..Limits::default()
        };
        assert!(
            Message::decode(r#"{"method":"a","callbacks":{"0":[0],"1":[1]}}"#, &limits).is_ok()
        );
        assert!(matches!(
            Message::decode(
                r#"{"method":"a","callbacks":{"0":[0],"1":[1],"2":"bad"}}"#,
                &limits
            ),
            Err(DecodeError::TooManyCallbacks { max: 2 })
        ));
        let deep = format!(r#"{{"method":"a","arguments":{}}}"#, "[".repeat(100_000));
        assert!(matches!(decode(&deep), Err(DecodeError::Json(_))));
        let deep_path = format!(
            r#"{{"method":"a","callbacks":{{"0":[{}]}}}}"#,
            "[".repeat(100_000)
        );
        assert!(matches!(decode(&deep_path), Err(DecodeError::Json(_))));
    }
}
