//! dnode messages (PROTOCOL.md 3): the wire shape, a bounded decoder, a one-pass encoder,
//! function scrubbing/unscrubbing ([`scrub`], [`unscrub`]) and a table for local callbacks
//! ([`CallbackTable`]).
//!
//! A message is `{"method": <name or callback id>, "arguments": [...], "callbacks":
//! {"<id>": [path...]}}` (plus `links`, which only kite.js sends).
//!
//! ```
//! use kite_protocol::dnode::{self, Limits, Message, Method};
//! use serde_json::json;
//!
//! // Outgoing: functions are markers in the arguments tree until scrubbed.
//! let mut args = json!([{"withArgs": [3, dnode::function_marker(0)]}]);
//! let mut next_id = 0;
//! let scrubbed = dnode::scrub(&mut args, &mut next_id);
//! let msg = Message::new(
//!     Method::Name("squareCB".into()),
//!     args,
//!     dnode::Callbacks::from_scrubbed(&scrubbed),
//! );
//! let text = msg.encode();
//! assert_eq!(
//!     text,
//!     r#"{"method":"squareCB","arguments":[{"withArgs":[3,"[Function]"]}],"callbacks":{"0":[0,"withArgs",1]}}"#
//! );
//!
//! // Incoming: parse with limits, then put callback markers where the functions were.
//! let mut msg = Message::decode(&text, &Limits::default()).unwrap();
//! let report = msg.unscrub(&Limits::default());
//! assert_eq!(report.installed, 1);
//! let marker = msg.arguments[0]["withArgs"][1].as_str().unwrap();
//! assert_eq!(dnode::parse_callback_marker(marker), Some(0));
//! ```

pub(crate) mod decode;
pub(crate) mod scrub;
mod table;

use std::fmt::{self, Write as _};

use serde_json::Value;

pub use scrub::{
    apply_links, callback_marker, function_marker, parse_callback_marker, parse_function_marker,
    scrub, unscrub, ScrubbedFunction, UnscrubReport, CIRCULAR_PLACEHOLDER, FUNCTION_PLACEHOLDER,
};
pub use table::{CallbackTable, CallbackTableError, Lifetime, Taken, DEFAULT_MAX_LIVE_CALLBACKS};

/// The JSON nesting depth beyond which decoding fails (serde_json's fixed recursion
/// limit). Deeper input is an error, never a stack overflow.
pub const MAX_JSON_DEPTH: usize = 128;

/// Bounds applied when decoding (and unscrubbing) one incoming message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted message text, in bytes. Default 16 MiB.
    pub max_message_bytes: usize,
    /// Most entries in `callbacks`. Default 4096.
    pub max_callbacks: usize,
    /// Most elements in one callback or link path; longer paths are treated as unusable.
    /// Default 128 (deeper paths cannot point anywhere, see [`MAX_JSON_DEPTH`]).
    pub max_path_len: usize,
    /// Most entries in `links`. Default 1024.
    pub max_links: usize,
    /// Most JSON values copied in total when applying `links`; links beyond the budget are
    /// ignored. Default 65536.
    pub max_linked_values: usize,
}

impl Limits {
    /// Default for [`Limits::max_message_bytes`]: 16 MiB.
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
    /// Default for [`Limits::max_callbacks`].
    pub const DEFAULT_MAX_CALLBACKS: usize = 4096;
    /// Default for [`Limits::max_path_len`].
    pub const DEFAULT_MAX_PATH_LEN: usize = 128;
    /// Default for [`Limits::max_links`].
    pub const DEFAULT_MAX_LINKS: usize = 1024;
    /// Default for [`Limits::max_linked_values`].
    pub const DEFAULT_MAX_LINKED_VALUES: usize = 65_536;
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            max_callbacks: Self::DEFAULT_MAX_CALLBACKS,
            max_path_len: Self::DEFAULT_MAX_PATH_LEN,
            max_links: Self::DEFAULT_MAX_LINKS,
            max_linked_values: Self::DEFAULT_MAX_LINKED_VALUES,
        }
    }
}

/// The `method` of a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// A named method of the receiver (`"square"`, `"kite.ping"`).
    Name(String),
    /// The id of a callback the receiver sent earlier (responses and user callbacks).
    Callback(u64),
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Name(n) => f.write_str(n),
            Method::Callback(id) => write!(f, "{id}"),
        }
    }
}

/// One element of a callback or link path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathElement {
    /// An object key, or an array index written as a string (kite.js sends `"0"`).
    Key(String),
    /// An array index written as a JSON integer (Go and Rust send these).
    Index(u64),
}

impl PathElement {
    /// The array index this element denotes: an `Index`, or a `Key` holding a decimal
    /// number as JavaScript writes it (`"0"`, `"12"`; not `"01"`, `"-1"`, `"+1"`).
    pub fn as_index(&self) -> Option<usize> {
        match self {
            PathElement::Index(i) => usize::try_from(*i).ok(),
            PathElement::Key(k) if is_canonical_decimal(k) => k.parse().ok(),
            PathElement::Key(_) => None,
        }
    }

    /// Whether two elements address the same place (`0` and `"0"` do).
    pub fn same_place(&self, other: &PathElement) -> bool {
        match (self, other) {
            (PathElement::Key(a), PathElement::Key(b)) => a == b,
            (PathElement::Index(a), PathElement::Index(b)) => a == b,
            (PathElement::Index(i), PathElement::Key(k))
            | (PathElement::Key(k), PathElement::Index(i)) => {
                is_canonical_decimal(k) && k.parse::<u64>().ok() == Some(*i)
            }
        }
    }
}

impl From<&str> for PathElement {
    fn from(s: &str) -> PathElement {
        PathElement::Key(s.to_string())
    }
}

impl From<u64> for PathElement {
    fn from(i: u64) -> PathElement {
        PathElement::Index(i)
    }
}

/// `0`, or digits without a leading zero (how JavaScript writes an array index).
fn is_canonical_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// A path from the root of the `arguments` array; its first element is the index into
/// `arguments`.
pub type Path = Vec<PathElement>;

/// Whether two paths address the same place, element by element ([`PathElement::same_place`]).
pub fn same_path(a: &[PathElement], b: &[PathElement]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_place(y))
}

/// The `callbacks` of a message: id → path, in wire order. Ids whose path was unusable
/// on receipt (not an array, an element that is neither string nor non-negative integer,
/// longer than [`Limits::max_path_len`]) are kept apart in [`Callbacks::invalid_ids`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Callbacks {
    entries: Vec<(u64, Path)>,
    invalid: Vec<u64>,
}

impl Callbacks {
    /// No callbacks.
    pub fn new() -> Callbacks {
        Callbacks::default()
    }

    /// The callbacks recorded by [`scrub`].
    pub fn from_scrubbed(scrubbed: &[ScrubbedFunction]) -> Callbacks {
        Callbacks {
            entries: scrubbed.iter().map(|s| (s.id, s.path.clone())).collect(),
            invalid: Vec::new(),
        }
    }

    /// Adds `id → path`.
    pub fn push(&mut self, id: u64, path: Path) {
        self.entries.push((id, path));
    }

    /// The usable entries in wire order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u64, &Path)> + '_ {
        self.entries.iter().map(|(id, p)| (*id, p))
    }

    /// The path of callback `id` (the first one, if the id is repeated).
    pub fn get(&self, id: u64) -> Option<&Path> {
        self.entries.iter().find(|(i, _)| *i == id).map(|(_, p)| p)
    }

    /// Number of usable entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no usable entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Ids received with an unusable path.
    pub fn invalid_ids(&self) -> &[u64] {
        &self.invalid
    }

    /// Appends the usable entries as the JSON object of a message's `callbacks` key
    /// (`{"<id>":[path...],...}`, wire order).
    pub fn encode_into(&self, out: &mut String) {
        out.push('{');
        for (i, (id, path)) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            write_u64(out, id);
            out.push_str("\":[");
            for (j, e) in path.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                match e {
                    PathElement::Key(k) => write_json_string(out, k),
                    PathElement::Index(n) => write_u64(out, *n),
                }
            }
            out.push(']');
        }
        out.push('}');
    }
}

impl FromIterator<(u64, Path)> for Callbacks {
    fn from_iter<I: IntoIterator<Item = (u64, Path)>>(iter: I) -> Callbacks {
        Callbacks {
            entries: iter.into_iter().collect(),
            invalid: Vec::new(),
        }
    }
}

/// A kite.js cycle link: the value at `from` also appears at `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Path of the referenced value.
    pub from: Path,
    /// Where the reference appears (holding `"[Circular]"` on the wire).
    pub to: Path,
}

/// One dnode message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Named method or callback id.
    pub method: Method,
    /// The positional arguments. Always a JSON array after [`Message::decode`] (a missing
    /// or `null` `arguments` becomes `[]`); [`Message::encode`] writes whatever it holds.
    pub arguments: Value,
    /// Functions inside `arguments`.
    pub callbacks: Callbacks,
    /// kite.js cycle links (never sent by us, see [`apply_links`]).
    pub links: Vec<Link>,
}

/// Why an incoming message was rejected. Every variant means "drop the message" (log at
/// debug); none warrants a reply (PROTOCOL.md 3.4, 4.3).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The text is longer than [`Limits::max_message_bytes`].
    #[error("dnode message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the text.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, not an object, nested deeper than [`MAX_JSON_DEPTH`], or `callbacks` of
    /// the wrong JSON type.
    #[error("malformed dnode message: {0}")]
    Json(#[from] serde_json::Error),
    /// No `method` key.
    #[error("dnode message has no method")]
    MissingMethod,
    /// `method` is neither a string nor a non-negative integer (e.g. `true`, `-1`, `1.5`).
    #[error("unsupported dnode method {0}")]
    UnsupportedMethod(String),
    /// `arguments` is present but neither an array nor `null`.
    #[error("dnode arguments must be an array, not {0}")]
    InvalidArguments(&'static str),
    /// A `callbacks` key is not a decimal unsigned integer (e.g. `"x"`, `"-1"`).
    #[error("invalid dnode callback id {0:?}")]
    InvalidCallbackId(String),
    /// More than [`Limits::max_callbacks`] entries in `callbacks`.
    #[error("more than {max} callbacks in one dnode message")]
    TooManyCallbacks {
        /// The limit.
        max: usize,
    },
    /// More than [`Limits::max_links`] entries in `links`.
    #[error("more than {max} links in one dnode message")]
    TooManyLinks {
        /// The limit.
        max: usize,
    },
    /// A message in the escaped form of a SockJS frame's string could not be unescaped
    /// (see [`incoming::decode_escaped`](crate::incoming::decode_escaped)).
    #[error("cannot unescape the message: {0}")]
    Escape(#[from] crate::sockjs::FrameError),
}

/// Short name of a JSON value's type for error messages (`"a string"`, `"an object"`, ...).
pub fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Values nested deeper than this are written by `serde_json` (see [`write_json_value`]).
const WRITE_DEPTH: usize = 32;

/// Appends `v` as compact JSON: the same bytes as its `Display` (`serde_json`), written
/// straight into `out` instead of through the formatting machinery.
pub(crate) fn write_json_value(out: &mut String, v: &Value) {
    write_value_at(out, v, 0)
}

fn write_value_at(out: &mut String, v: &Value, depth: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => write_u64(out, u),
            (None, Some(i)) => {
                out.push('-');
                write_u64(out, i.unsigned_abs());
            }
            // Floats: serde_json's own shortest form.
            _ => {
                let _ = write!(out, "{n}");
            }
        },
        Value::String(s) => write_json_string(out, s),
        _ if depth >= WRITE_DEPTH => {
            let _ = write!(out, "{v}");
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value_at(out, item, depth + 1);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(out, k);
                out.push(':');
                write_value_at(out, item, depth + 1);
            }
            out.push('}');
        }
    }
}

/// Appends `s` as a JSON string literal.
pub(crate) fn write_json_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends `n` in decimal, as `Display` writes it, without the formatting machinery.
pub(crate) fn write_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

impl Message {
    /// A message from its parts (no links).
    pub fn new(method: Method, arguments: Value, callbacks: Callbacks) -> Message {
        Message {
            method,
            arguments,
            callbacks,
            links: Vec::new(),
        }
    }

    /// A call of a named method.
    pub fn call(method: impl Into<String>, arguments: Vec<Value>, callbacks: Callbacks) -> Message {
        Message::new(
            Method::Name(method.into()),
            Value::Array(arguments),
            callbacks,
        )
    }

    /// An invocation of the peer's callback `id` (responses too).
    pub fn callback(id: u64, arguments: Vec<Value>, callbacks: Callbacks) -> Message {
        Message::new(Method::Callback(id), Value::Array(arguments), callbacks)
    }

    /// Decodes one message within `limits`. Missing `arguments`/`callbacks`/`links` are
    /// empty, unknown keys are ignored, callback paths may use strings or integers.
    pub fn decode(text: &str, limits: &Limits) -> Result<Message, DecodeError> {
        decode::decode(text, limits)
    }

    /// Encodes the message in one pass, keys in Go's order `method, arguments,
    /// callbacks` (`links` is never written).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(64);
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded message to `out` (see [`Message::encode`]).
    pub fn encode_into(&self, out: &mut String) {
        out.push_str("{\"method\":");
        match &self.method {
            Method::Name(n) => write_json_string(out, n),
            Method::Callback(id) => write_u64(out, *id),
        }
        out.push_str(",\"arguments\":");
        write_json_value(out, &self.arguments);
        out.push_str(",\"callbacks\":");
        self.callbacks.encode_into(out);
        out.push('}');
    }

    /// Replaces every callback path's value with a callback marker ([`unscrub`]), then
    /// applies non-cyclic `links` within [`Limits::max_linked_values`] ([`apply_links`]).
    pub fn unscrub(&mut self, limits: &Limits) -> UnscrubReport {
        let mut report = unscrub(&mut self.arguments, &self.callbacks);
        let (applied, ignored) =
            apply_links(&mut self.arguments, &self.links, limits.max_linked_values);
        report.links_applied = applied;
        report.links_ignored = ignored;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[\\x00-\\x7f]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("[\\x00-\\x7f]{0,4}|\\PC{0,3}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        // A fixed seed keeps CI deterministic.
        #![proptest_config(ProptestConfig {
            cases: 2048,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x7772_6974),
            ..ProptestConfig::default()
        })]

        #[test]
        fn values_are_written_as_serde_json_writes_them(v in any_value()) {
            let mut out = String::from("x");
            write_json_value(&mut out, &v);
            prop_assert_eq!(&out[1..], serde_json::to_string(&v).unwrap());
        }
    }

    #[test]
    fn write_value_matches_display() {
        // Deeper than WRITE_DEPTH: the rest is written by serde_json.
        let mut deep = json!([1, {"a": "b"}]);
        for i in 0..100 {
            deep = if i % 2 == 0 {
                json!([deep, i])
            } else {
                json!({ "k": deep })
            };
        }
        let values = [
            deep,
            json!(-0.0),
            json!({}),
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(16),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(-1),
            json!(16.0),
            json!(-0.5),
            json!(1e300),
            json!(""),
            json!("q\"\\\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}\u{2028}é"),
            json!([]),
            json!([4, -4, 4.5, "x", null, true, [1, [2]], {"a": [1, "b"]}]),
            json!({"k": "v", "n": 1}),
            json!([[[]]]),
        ];
        for v in values {
            let mut out = String::from("prefix");
            write_json_value(&mut out, &v);
            assert_eq!(out, format!("prefix{v}"));
        }
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::MAX / 10, u64::MAX] {
            let mut out = String::new();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        write_json_string(&mut out, "a\"b\\c\nd\u{1}\u{7f}é\u{2028}");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001\u{7f}é\u{2028}\"");
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}\u{7f}é\u{2028}");
    }

    #[test]
    fn encodes_in_go_key_order() {
        let msg = Message::callback(
            0,
            vec![json!({"error": null, "result": 49})],
            Callbacks::new(),
        );
        assert_eq!(
            msg.encode(),
            r#"{"method":0,"arguments":[{"error":null,"result":49}],"callbacks":{}}"#
        );
        let cbs: Callbacks = [
            (0, vec![PathElement::Index(0), "responseCallback".into()]),
            (
                1,
                vec![0.into(), "withArgs".into(), 0.into(), "on\"Tick".into()],
            ),
        ]
        .into_iter()
        .collect();
        let msg = Message::call("count\"down", vec![json!({})], cbs);
        assert_eq!(
            msg.encode(),
            r#"{"method":"count\"down","arguments":[{}],"callbacks":{"0":[0,"responseCallback"],"1":[0,"withArgs",0,"on\"Tick"]}}"#
        );
    }

    #[test]
    fn path_elements_compare_by_place() {
        assert!(PathElement::Index(0).same_place(&"0".into()));
        assert!(PathElement::Index(12).same_place(&"12".into()));
        assert!(!PathElement::Index(1).same_place(&"01".into()));
        assert!(!PathElement::Index(1).same_place(&"x".into()));
        assert_eq!(PathElement::Key("7".into()).as_index(), Some(7));
        assert_eq!(PathElement::Key("-7".into()).as_index(), None);
        assert_eq!(PathElement::Key("07".into()).as_index(), None);
        assert_eq!(PathElement::Key("0".into()).as_index(), Some(0));
        assert_eq!(PathElement::Key("".into()).as_index(), None);
        assert!(same_path(
            &[0.into(), "a".into()],
            &["0".into(), "a".into()]
        ));
        assert!(!same_path(&[0.into()], &[0.into(), "a".into()]));
    }
}
