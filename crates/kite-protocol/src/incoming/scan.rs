//! A hand-written reader for the request in its usual shape, tried before the general
//! decoder: `{"method":"name","arguments":[{options}],"callbacks":{"7":[0,
//! "responseCallback"]},"links":[]}` with the keys in any order, the options' standard
//! keys and extra fields, and strings without escapes. It reads the envelope, the `kite`
//! and `authentication` objects and the keys of the options itself, one byte at a time
//! with long strings skipped in blocks, where `serde_json` costs a visitor call per token;
//! only the values of `withArgs` and of extra fields go through `serde_json`.
//!
//! It takes no decision of its own: anything outside that shape (an escape in a string,
//! another top-level key, a callback inside `withArgs`, links, a duplicate envelope key,
//! a deep value, bad JSON) returns `None` and the general decoder reads the message from
//! the start, so results and errors are the general decoder's. A test checks that both
//! agree on generated and mutated requests.

use std::borrow::Cow;

use serde_json::Value;

use super::{AuthenticationRef, KiteRef, KiteText, Known, RequestRef};
use crate::dnode::{parse_callback_marker, Limits, UnscrubReport};
use crate::error::KiteError;
use crate::sockjs::{first_byte, unescape_run_end, unescape_stops, word_at};

/// How deep `withArgs` or an extra field may nest here; deeper values go the general way
/// (whose limit counts from the top of the message).
const MAX_VALUE_DEPTH: usize = 32;

/// The request, if `text` is one in the usual shape.
pub(super) fn request<'a, const E: bool>(
    text: &'a str,
    limits: &Limits,
) -> Option<(&'a str, RequestRef<'a>, UnscrubReport)> {
    request_after::<E>(text, limits, Known::default())
        .map(|(method, r, report, _)| (method, r, report))
}

/// How the `kite` and `authentication` objects of a request were read.
#[derive(Debug, Default)]
pub(super) struct Texts<'a> {
    pub kite: KiteText<'a>,
    pub authentication: KiteText<'a>,
}

/// [`request`], told the `kite` and `authentication` objects of the connection's previous
/// request as they were written in this form (`known`, not empty): an identical one is
/// passed over instead of read ([`KiteText::Repeated`]; `kite` left empty, `authentication`
/// `None`); another is read, and its text returned in the escaped form ([`KiteText::Read`];
/// only when `E`, and for `authentication` only an object, not `null`).
pub(super) fn request_after<'a, const E: bool>(
    text: &'a str,
    limits: &Limits,
    known: Known<'_>,
) -> Option<(&'a str, RequestRef<'a>, UnscrubReport, Texts<'a>)> {
    let known = Known {
        kite: known.kite.filter(|k| E && !k.is_empty()),
        authentication: known.authentication.filter(|k| E && !k.is_empty()),
    };
    let mut texts = Texts::default();
    let mut method = None;
    // Filled in place (a large value, not to be moved through every layer); made only
    // when `arguments` is met, so a response costs nothing here.
    let mut out: Option<RequestRef<'a>> = None;
    let mut options = None;
    // The response callback's id, `Some(None)` for `"callbacks":{}`.
    let mut callbacks: Option<Option<u64>> = None;
    envelope::<E>(text, limits, |s, key| {
        match key {
            "method" if method.is_none() => method = Some(s.string()?),
            "arguments" if options.is_none() => {
                s.expect(b'[')?;
                let r = out.insert(RequestRef::default());
                options = Some(s.options(r, known, &mut texts)?);
                s.expect(b']')?;
            }
            "callbacks" if callbacks.is_none() => callbacks = Some(s.callbacks(limits)?),
            _ => return None,
        }
        Some(())
    })?;
    let method = method?;
    let options = options?;
    let mut out = out?;
    let mut report = UnscrubReport::default();
    let response_callback = match callbacks.flatten() {
        Some(id) => {
            report.installed = 1;
            Some(id)
        }
        None => options.response_callback.and_then(parse_callback_marker),
    };
    out.with_args = match options.with_args {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(other) => vec![other],
    };
    out.response_callback = response_callback;
    Some((method, out, report, texts))
}

/// The response `{"method":7,"arguments":[{"error":...,"result":...}],"callbacks":{}}`
/// (keys in any order, `links` empty if present, no other keys): the callback id and the
/// outcome, read as the general decoder's `response` reads it.
pub(super) fn response<const E: bool>(
    text: &str,
    limits: &Limits,
) -> Option<(u64, Result<Value, KiteError>)> {
    let mut id = None;
    let mut outcome = None;
    let mut callbacks = false;
    envelope::<E>(text, limits, |s, key| {
        match key {
            "method" if id.is_none() => id = Some(s.id()?),
            "arguments" if outcome.is_none() => {
                s.expect(b'[')?;
                outcome = Some(s.response_object()?);
                s.expect(b']')?;
            }
            "callbacks" if !callbacks => {
                s.expect(b'{')?;
                s.expect(b'}')?;
                callbacks = true;
            }
            _ => return None,
        }
        Some(())
    })?;
    Some((id?, outcome?))
}

/// The whole `text` as a message object within `limits`: `member` reads the value of each
/// key other than `links`, which may only be empty (and come once); nothing may follow.
fn envelope<'a, const E: bool>(
    text: &'a str,
    limits: &Limits,
    mut member: impl FnMut(&mut Scanner<'a, E>, &'a str) -> Option<()>,
) -> Option<()> {
    if text.len() > limits.max_message_bytes {
        return None;
    }
    let mut s = Scanner { text, i: 0 };
    let mut links = false;
    s.members(|s, key| {
        if key != "links" {
            return member(s, key);
        }
        if links {
            return None;
        }
        links = true;
        s.empty_array()
    })?;
    s.end()
}

/// What the options object holds besides what goes straight into the request.
#[derive(Default)]
struct Options<'a> {
    with_args: Option<Value>,
    response_callback: Option<&'a str>,
}

/// A canonical decimal number below 10^19 (no sign, no leading zero): the callback ids
/// this reader takes; others are the general decoder's to judge.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Powers of ten that are exact in an `f64`, as `serde_json` divides by them.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// A JSON number without an exponent and with at most 15 digits (`4`, `-1`, `16.0`,
/// `2.25`), as `serde_json` reads it: an integer is a `u64` (an `i64` if negative), a
/// decimal the `f64` of its digits divided by a power of ten, both exact here, so the one
/// rounding is `serde_json`'s. Anything else (`-0`, exponents, more digits) is `None`.
fn simple_number(b: &[u8]) -> Option<Value> {
    let (negative, digits) = match b {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, b),
    };
    let (int, frac) = match digits.iter().position(|&c| c == b'.') {
        Some(dot) => (&digits[..dot], Some(&digits[dot + 1..])),
        None => (digits, None),
    };
    let frac_len = frac.map_or(0, <[u8]>::len);
    if int.is_empty()
        || (int.len() > 1 && int[0] == b'0')
        || frac == Some(&[])
        || int.len() + frac_len > 15
    {
        return None;
    }
    let mut significand = 0u64;
    for &c in int.iter().chain(frac.unwrap_or(&[])) {
        if !c.is_ascii_digit() {
            return None;
        }
        significand = significand * 10 + u64::from(c - b'0');
    }
    if frac.is_some() {
        let f = significand as f64 / POW10[frac_len];
        return Some(Value::from(if negative { -f } else { f }));
    }
    match (negative, significand) {
        (false, n) => Some(Value::from(n)),
        // `-0` is a float there.
        (true, 0) => None,
        (true, n) => i64::try_from(n).ok().map(|n| Value::from(-n)),
    }
}

/// The contents of a JSON string with nothing to unescape (a `traceparent`, an id): in
/// the escaped form (`E`) quoted `\"...\"`, else `"..."`, with no backslash, quote or
/// control character inside. Such contents are the string's value in both forms; anything
/// else is `None` (left to `serde_json`).
fn plain_string<const E: bool>(raw: &str) -> Option<&str> {
    let inner = if E {
        raw.strip_prefix("\\\"")?.strip_suffix("\\\"")?
    } else {
        raw.strip_prefix('"')?.strip_suffix('"')?
    };
    if inner.bytes().any(|b| b == b'\\' || b == b'"' || b < 0x20) {
        return None;
    }
    Some(inner)
}

/// `[n,n,...]` of [`simple_number`]s, compact (the arguments of most calls).
fn number_array(b: &[u8]) -> Option<Value> {
    let inner = b.strip_prefix(b"[")?.strip_suffix(b"]")?;
    if inner.is_empty() {
        return Some(Value::Array(Vec::new()));
    }
    inner
        .split(|&c| c == b',')
        .map(simple_number)
        .collect::<Option<Vec<Value>>>()
        .map(Value::Array)
}

/// Reads `text` from `i`: plain JSON, or (`E`) the escaped form of a SockJS frame's string
/// ([`Escaped`](crate::sockjs::Escaped)), where the JSON's quotes are `\"`. In the escaped
/// form only strings without escapes of their own are read (`\\` in the text): anything
/// else returns `None`, and the caller unescapes the message and reads it plain.
struct Scanner<'a, const E: bool> {
    text: &'a str,
    i: usize,
}

impl<'a, const E: bool> Scanner<'a, E> {
    /// Bytes a quote of the JSON text takes here.
    const QUOTE: usize = if E { 2 } else { 1 };

    /// Whether a quote of the JSON text starts at `i`.
    #[inline(always)]
    fn quote_at(&self, i: usize) -> bool {
        let b = self.bytes();
        if E {
            b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'"')
        } else {
            b.get(i) == Some(&b'"')
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// Skips JSON whitespace.
    #[inline(always)]
    fn ws(&mut self) {
        let b = self.bytes();
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(self.i) {
            self.i += 1;
        }
    }

    /// Whether the next token is `c` (consumed if so).
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.bytes().get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    /// After an object member: `true` for a comma (another member follows), `false` for
    /// the closing brace.
    fn next_member(&mut self) -> Option<bool> {
        if self.eat(b',') {
            Some(true)
        } else {
            self.expect(b'}').map(|()| false)
        }
    }

    /// Only whitespace is left.
    fn end(&mut self) -> Option<()> {
        self.ws();
        (self.i == self.text.len()).then_some(())
    }

    /// A string without escapes or control characters (the opening quote is next).
    #[inline(always)]
    fn string(&mut self) -> Option<&'a str> {
        self.ws();
        if !self.quote_at(self.i) {
            return None;
        }
        let b = self.bytes();
        let start = self.i + Self::QUOTE;
        let mut i = start;
        loop {
            // A word at a time up to a quote, a backslash or a byte below 0x23; a long
            // string (a token) a block at a time.
            if let Some(v) = word_at(b, i) {
                let m = unescape_stops(v);
                if m == 0 {
                    i += 8;
                    if i - start >= 24 {
                        i = unescape_run_end(b, i);
                    }
                    continue;
                }
                i += first_byte(m);
            }
            match *b.get(i)? {
                b'"' if !E => break,
                b'\\' if E && b.get(i + 1) == Some(&b'"') => break,
                b'"' | b'\\' => return None,
                c if c < 0x20 => return None,
                _ => i += 1,
            }
        }
        self.i = i + Self::QUOTE;
        self.text.get(start..i)
    }

    /// An object key and its colon.
    fn key(&mut self) -> Option<&'a str> {
        let k = self.string()?;
        self.expect(b':')?;
        Some(k)
    }

    /// A callback id as a JSON number: see [`decimal`].
    fn id(&mut self) -> Option<u64> {
        self.ws();
        let b = self.bytes();
        let digits = b[self.i..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        let id = decimal(&b[self.i..self.i + digits])?;
        self.i += digits;
        Some(id)
    }

    /// The members of an object (the opening brace is next): `member` reads the value of
    /// each key.
    fn members(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            let key = self.key()?;
            member(self, key)?;
            if !self.next_member()? {
                return Some(());
            }
        }
    }

    /// `[]`.
    fn empty_array(&mut self) -> Option<()> {
        self.expect(b'[')?;
        self.expect(b']')
    }

    /// `{"error": ..., "result": ...}` with either key or both and no other: the outcome.
    fn response_object(&mut self) -> Option<Result<Value, KiteError>> {
        let (mut error, mut result) = (None, None);
        // A repeated key replaces the earlier value, as in the general decoder.
        self.members(|s, key| {
            match key {
                "error" => error = Some(s.null_or_value()?),
                "result" => result = Some(s.null_or_value()?),
                _ => return None,
            }
            Some(())
        })?;
        if error.is_none() && result.is_none() {
            return None;
        }
        Some(match error {
            None | Some(Value::Null) => Ok(result.unwrap_or(Value::Null)),
            Some(e) => Err(KiteError::from_value(&e)),
        })
    }

    /// [`Scanner::value`], with `null` read here.
    fn null_or_value(&mut self) -> Option<Value> {
        if self.null() {
            Some(Value::Null)
        } else {
            self.value()
        }
    }

    /// `null`, if it is next (consumed).
    fn null(&mut self) -> bool {
        self.ws();
        if self.bytes()[self.i..].starts_with(b"null") {
            self.i += 4;
            true
        } else {
            false
        }
    }

    /// A string, or `null` as the empty string (the general decoder's `Text`).
    fn text(&mut self) -> Option<&'a str> {
        if self.null() {
            Some("")
        } else {
            self.string()
        }
    }

    /// `{"7":[0,"responseCallback"]}` (at most that one entry; `"0"` for `0` too): the
    /// callback's id.
    fn callbacks(&mut self, limits: &Limits) -> Option<Option<u64>> {
        self.expect(b'{')?;
        if self.eat(b'}') {
            return Some(None);
        }
        if limits.max_callbacks < 1 || limits.max_path_len < 2 {
            return None;
        }
        let id = decimal(self.key()?.as_bytes())?;
        self.expect(b'[')?;
        // Index 0, as Go writes it or as a key (JavaScript).
        if !self.eat(b'0') && self.string()? != "0" {
            return None;
        }
        self.expect(b',')?;
        if self.string()? != "responseCallback" {
            return None;
        }
        self.expect(b']')?;
        self.expect(b'}')?;
        Some(Some(id))
    }

    /// The one options object of `arguments`: `kite`, `authentication` and extra fields
    /// go into `r`, the rest is returned.
    fn options(
        &mut self,
        r: &mut RequestRef<'a>,
        known: Known<'_>,
        texts: &mut Texts<'a>,
    ) -> Option<Options<'a>> {
        let mut o = Options::default();
        // A repeated key replaces the earlier value, as in the general decoder.
        self.members(|s, key| {
            match key {
                "kite" => {
                    s.ws();
                    let start = s.i;
                    let rest = s.text.get(start..)?;
                    match known.kite {
                        // The same bytes as a value read before: the same value.
                        Some(known) if rest.starts_with(known) => {
                            s.i += known.len();
                            r.kite = KiteRef::default();
                            texts.kite = KiteText::Repeated;
                        }
                        _ => {
                            s.kite(&mut r.kite)?;
                            texts.kite = if E {
                                KiteText::Read(s.text.get(start..s.i)?)
                            } else {
                                KiteText::Unknown
                            };
                        }
                    }
                }
                "authentication" => {
                    s.ws();
                    let start = s.i;
                    let rest = s.text.get(start..)?;
                    match known.authentication {
                        // The credential of the previous request, byte for byte (a token
                        // is most of a request): passed over.
                        Some(known) if rest.starts_with(known) => {
                            s.i += known.len();
                            r.authentication = None;
                            texts.authentication = KiteText::Repeated;
                        }
                        _ => {
                            r.authentication = s.authentication()?;
                            texts.authentication = match &r.authentication {
                                Some(_) if E => KiteText::Read(s.text.get(start..s.i)?),
                                _ => KiteText::Unknown,
                            };
                        }
                    }
                }
                "withArgs" => o.with_args = Some(s.value()?),
                "responseCallback" => {
                    s.ws();
                    o.response_callback = if s.quote_at(s.i) {
                        Some(s.string()?)
                    } else {
                        s.value()?;
                        None
                    };
                }
                key => {
                    let value = s.value()?;
                    r.fields.insert(key.to_owned(), value);
                }
            }
            Some(())
        })?;
        Some(o)
    }

    /// `kite`: `null` or an object of the seven string (or `null`) fields, into `k`
    /// (which it replaces).
    fn kite(&mut self, k: &mut KiteRef<'a>) -> Option<()> {
        *k = KiteRef::default();
        if self.null() {
            return Some(());
        }
        self.members(|s, key| {
            *k.field_mut(key)? = Cow::Borrowed(s.text()?);
            Some(())
        })
    }

    /// `authentication`: `null` or an object of `type` and `key`.
    fn authentication(&mut self) -> Option<Option<AuthenticationRef<'a>>> {
        if self.null() {
            return Some(None);
        }
        let mut a = AuthenticationRef::default();
        self.members(|s, key| {
            match key {
                "type" => a.kind = Cow::Borrowed(s.text()?),
                "key" => a.key = Cow::Borrowed(s.text()?),
                _ => return None,
            }
            Some(())
        })?;
        Some(Some(a))
    }

    /// Any JSON value, parsed by `serde_json` once its end is found (a small integer or
    /// a literal right here).
    fn value(&mut self) -> Option<Value> {
        self.ws();
        let start = self.i;
        self.skip_value()?;
        let raw = self.text.get(start..self.i)?;
        if let Some(s) = plain_string::<E>(raw) {
            return Some(Value::String(s.to_owned()));
        }
        if E && raw.contains('\\') {
            // Quotes escaped (the only escapes `skip_value` lets through here): parsed once
            // they are plain.
            return serde_json::from_str(&raw.replace("\\\"", "\"")).ok();
        }
        match raw.as_bytes() {
            b"null" => Some(Value::Null),
            b"true" => Some(Value::Bool(true)),
            b"false" => Some(Value::Bool(false)),
            bytes => match simple_number(bytes).or_else(|| number_array(bytes)) {
                Some(v) => Some(v),
                None => serde_json::from_str(raw).ok(),
            },
        }
    }

    /// Moves past one JSON value (strings may have escapes here; the syntax is checked by
    /// the parser that reads the value).
    fn skip_value(&mut self) -> Option<()> {
        let b = self.bytes();
        let mut depth = 0usize;
        loop {
            self.ws();
            match *b.get(self.i)? {
                b'"' if !E => self.skip_string()?,
                b'\\' if self.quote_at(self.i) => self.skip_string()?,
                b'"' | b'\\' => return None,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_VALUE_DEPTH {
                        return None;
                    }
                    self.i += 1;
                    continue;
                }
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    self.i += 1;
                }
                b',' | b':' => {
                    if depth == 0 {
                        return None;
                    }
                    self.i += 1;
                    continue;
                }
                _ => {
                    // A number or a literal: up to the next delimiter.
                    let end = b[self.i..]
                        .iter()
                        .position(|c| {
                            matches!(c, b',' | b'}' | b']' | b':' | b' ' | b'\t' | b'\n' | b'\r')
                        })
                        .map_or(b.len(), |n| self.i + n);
                    if end == self.i {
                        return None;
                    }
                    self.i = end;
                }
            }
            if depth == 0 {
                return Some(());
            }
        }
    }

    /// Moves past a string that may hold escapes (in the escaped form: none).
    fn skip_string(&mut self) -> Option<()> {
        let b = self.bytes();
        let mut i = self.i + Self::QUOTE;
        loop {
            i = unescape_run_end(b, i);
            match *b.get(i)? {
                b'"' if !E => break,
                b'\\' if !E => i += 2,
                b'\\' if b.get(i + 1) == Some(&b'"') => break,
                b'"' | b'\\' => return None,
                _ => i += 1,
            }
        }
        self.i = i + Self::QUOTE;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode_general, Incoming};
    use super::*;

    use crate::sockjs::Escaped;
    use crate::test_rng::Rng;

    /// Index-sized draws from the shared generator.
    trait Pick {
        fn upto(&mut self, n: usize) -> usize;
        fn pick<'t>(&mut self, items: &[&'t str]) -> &'t str;
    }

    impl Pick for Rng {
        /// A number below `n` (not zero).
        fn upto(&mut self, n: usize) -> usize {
            (self.next() >> 33) as usize % n
        }
        fn pick<'t>(&mut self, items: &[&'t str]) -> &'t str {
            items[self.upto(items.len())]
        }
    }

    /// JSON whitespace, mostly none.
    fn ws(rng: &mut Rng) -> &'static str {
        ["", "", "", " ", "\n ", "\t", "\r\n"][rng.upto(7)]
    }

    /// A JSON string literal: mostly plain, sometimes escaped, long or non-ASCII.
    fn string(rng: &mut Rng) -> String {
        match rng.upto(60) {
            0 => r#""a\"b""#.to_string(),
            1 => r#""\u00e9t\u00e9""#.to_string(),
            2..=9 => format!("\"{}\"", "tok.EN-_".repeat(1 + rng.upto(40))),
            10..=14 => "\"é€ \"".to_string(),
            15..=19 => "\"\"".to_string(),
            _ => format!(
                "\"{}\"",
                rng.pick(&["bench", "math", "1.0.0", "id-9f1c", "x y"])
            ),
        }
    }

    /// Any JSON value, up to `depth` levels of nesting.
    fn value(rng: &mut Rng, depth: usize) -> String {
        match rng.upto(if depth == 0 { 6 } else { 9 }) {
            0 => "null".into(),
            1 => rng.pick(&["true", "false"]).into(),
            2 => rng
                .pick(&["0", "-1", "4", "2.5", "1e3", "18446744073709551616"])
                .into(),
            3..=5 => string(rng),
            6 | 7 => {
                let n = rng.upto(4);
                let items: Vec<String> = (0..n).map(|_| value(rng, depth - 1)).collect();
                format!("[{}{}]", items.join(&format!(",{}", ws(rng))), ws(rng))
            }
            _ => {
                let n = rng.upto(3);
                let items: Vec<String> = (0..n)
                    .map(|_| format!("{}:{}{}", string(rng), ws(rng), value(rng, depth - 1)))
                    .collect();
                format!("{{{}}}", items.join(","))
            }
        }
    }

    /// An object of the given members, in a random order.
    fn object(rng: &mut Rng, mut members: Vec<String>) -> String {
        for k in (1..members.len()).rev() {
            members.swap(k, rng.upto(k + 1));
        }
        let sep = format!(",{}", ws(rng));
        format!("{{{}{}{}}}", ws(rng), members.join(&sep), ws(rng))
    }

    fn member(key: &str, value: String, rng: &mut Rng) -> String {
        format!("\"{key}\"{}:{}{value}", ws(rng), ws(rng))
    }

    /// A request, mostly in the usual shape, with every kind of deviation now and then.
    fn generated(rng: &mut Rng) -> String {
        let mut kite = Vec::new();
        for field in crate::identity::FIELD_KEYS {
            if rng.upto(8) != 0 {
                let v = if rng.upto(12) == 0 {
                    "null".to_string()
                } else {
                    string(rng)
                };
                kite.push(member(field, v, rng));
            }
        }
        if rng.upto(15) == 0 {
            kite.push(member("extra", value(rng, 1), rng));
        }
        let mut options = Vec::new();
        if rng.upto(10) != 0 {
            let k = match rng.upto(20) {
                0 => "null".to_string(),
                1 => "5".to_string(),
                _ => object(rng, kite),
            };
            options.push(member("kite", k, rng));
        }
        if rng.upto(2) == 0 {
            let mut auth = vec![
                member("type", string(rng), rng),
                member("key", string(rng), rng),
            ];
            if rng.upto(10) == 0 {
                auth.push(member("other", value(rng, 1), rng));
            }
            if rng.upto(10) == 0 {
                auth.pop();
            }
            let a = match rng.upto(12) {
                0 => "null".to_string(),
                1 => "[]".to_string(),
                _ => object(rng, auth),
            };
            options.push(member("authentication", a, rng));
        }
        if rng.upto(8) != 0 {
            let w = if rng.upto(3) == 0 {
                value(rng, 3)
            } else {
                format!("[{}]", value(rng, 2))
            };
            options.push(member("withArgs", w, rng));
        }
        if rng.upto(3) != 0 {
            let rc = match rng.upto(6) {
                0 => "7".to_string(),
                1 => "\"[Function 12]\"".to_string(),
                _ => "\"[Function]\"".to_string(),
            };
            options.push(member("responseCallback", rc, rng));
        }
        if rng.upto(4) == 0 {
            let key = rng.pick(&["deadline", "traceparent"]);
            options.push(member(key, value(rng, 1), rng));
        }
        if rng.upto(30) == 0 {
            // A repeated key: the later value wins, as in a JSON tree.
            options.push(member("withArgs", value(rng, 1), rng));
        }
        let mut top = Vec::new();
        let method = match rng.upto(25) {
            0 => "17".to_string(),
            1 => "null".to_string(),
            2 => r#""sq\u0075are""#.to_string(),
            _ => format!("\"{}\"", rng.pick(&["square", "kite.ping", "", "é"])),
        };
        if rng.upto(30) != 0 {
            top.push(member("method", method, rng));
        }
        let opts = object(rng, options);
        let arguments = match rng.upto(30) {
            0 => format!("[{opts},{opts}]"),
            1 => "[]".to_string(),
            2 => "null".to_string(),
            _ => format!("[{}{opts}{}]", ws(rng), ws(rng)),
        };
        top.push(member("arguments", arguments, rng));
        if rng.upto(6) != 0 {
            let id = if rng.upto(5) == 0 {
                rng.pick(&["01", "x", "-1", "99999999999999999999", ""])
            } else {
                rng.pick(&["0", "3", "12", "18446744073709551615"])
            };
            let path = match rng.upto(12) {
                0 => r#"[0,"withArgs",0]"#,
                1 | 5 => r#"["0","responseCallback"]"#,
                6 => r#"["00","responseCallback"]"#,
                2 => r#"[0,"responseCallback",1]"#,
                3 => "[0]",
                _ => r#"[0,"responseCallback"]"#,
            };
            let callbacks = match rng.upto(10) {
                0 => "{}".to_string(),
                1 => format!(r#"{{"{id}":{path},"4":[0,"withArgs",1]}}"#),
                _ => format!(r#"{{"{id}":{}{path}}}"#, ws(rng)),
            };
            top.push(member("callbacks", callbacks, rng));
        }
        if rng.upto(3) == 0 {
            let links = if rng.upto(10) == 0 {
                r#"[{"from":[0],"to":[1]}]"#
            } else {
                "[]"
            };
            top.push(member("links", links.to_string(), rng));
        }
        if rng.upto(25) == 0 {
            top.push(member("other", value(rng, 1), rng));
        }
        if rng.upto(40) == 0 {
            top.push(member("method", "\"again\"".to_string(), rng));
        }
        format!("{}{}{}", ws(rng), object(rng, top), ws(rng))
    }

    /// `text` with one character dropped, doubled or replaced by one of `replacements`.
    fn mutated(rng: &mut Rng, text: &str, replacements: &[char]) -> String {
        let mut m: Vec<char> = text.chars().collect();
        let at = rng.upto(m.len());
        match rng.upto(3) {
            0 => {
                m.remove(at);
            }
            1 => m.insert(at, m[at]),
            _ => m[at] = replacements[rng.upto(replacements.len())],
        }
        m.into_iter().collect()
    }

    /// What the general decoder makes of `text`, when it reads a request.
    fn general(text: &str, limits: &Limits) -> Option<String> {
        match decode_general(text, limits) {
            Ok(Incoming::Call(c)) => Some(format!("{:?} {:?} {:?}", c.method, c.request, c.report)),
            _ => None,
        }
    }

    fn scanned(text: &str, limits: &Limits) -> Option<String> {
        request::<false>(text, limits).map(|(method, request, report)| {
            format!(
                "{:?} {:?} {:?}",
                Cow::Borrowed(method),
                Ok::<_, ()>(request),
                report
            )
        })
    }

    #[test]
    fn agrees_with_the_general_decoder_on_generated_requests() {
        let limits = Limits::default();
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let (mut taken, mut total) = (0, 0);
        for round in 0..20_000 {
            let text = generated(&mut rng);
            total += 1;
            if let Some(fast) = scanned(&text, &limits) {
                taken += 1;
                assert_eq!(Some(fast), general(&text, &limits), "round {round}: {text}");
            }
            for _ in 0..4 {
                let m = mutated(
                    &mut rng,
                    &text,
                    &['{', '}', '[', ']', ',', ':', '"', '\\', '0', ' ', '\u{1}'],
                );
                if let Some(fast) = scanned(&m, &limits) {
                    assert_eq!(Some(fast), general(&m, &limits), "round {round}: {m}");
                }
            }
            // Truncated.
            let cut = rng.upto(text.len());
            if let Some(t) = text.get(..cut).filter(|t| t.trim_end() != text.trim_end()) {
                assert_eq!(scanned(t, &limits), None, "{t}");
            }
        }
        // A good share of the generated requests is in the usual shape (about a quarter:
        // each deviation is rare, but there are many); the reader must take those.
        assert!(taken * 5 > total, "taken {taken} of {total}");
    }

    /// A response, mostly in the usual shape.
    fn generated_response(rng: &mut Rng) -> String {
        let mut inner = Vec::new();
        if rng.upto(6) != 0 {
            let e = match rng.upto(8) {
                0 => r#"{"type":"genericError","message":"no"}"#.to_string(),
                1 => value(rng, 2),
                _ => "null".to_string(),
            };
            inner.push(member("error", e, rng));
        }
        if rng.upto(6) != 0 {
            inner.push(member("result", value(rng, 3), rng));
        }
        if rng.upto(20) == 0 {
            inner.push(member("other", value(rng, 1), rng));
        }
        let arguments = match rng.upto(20) {
            0 => "[]".to_string(),
            1 => format!("[{},1]", object(rng, inner)),
            _ => format!("[{}]", object(rng, inner)),
        };
        let id = match rng.upto(15) {
            0 => rng.pick(&["\"7\"", "-1", "1.5", "01", "1e2", "18446744073709551615"]),
            _ => rng.pick(&["0", "7", "123456789"]),
        };
        let mut top = vec![
            member("method", id.to_string(), rng),
            member("arguments", arguments, rng),
        ];
        if rng.upto(3) != 0 {
            let c = if rng.upto(10) == 0 {
                r#"{"1":[0,"result"]}"#
            } else {
                "{}"
            };
            top.push(member("callbacks", c.to_string(), rng));
        }
        if rng.upto(4) == 0 {
            top.push(member("links", "[]".to_string(), rng));
        }
        object(rng, top)
    }

    /// The callback id, the outcome and the arguments `decode` gives.
    fn callback_outcome(
        text: &str,
        limits: &Limits,
        decoder: for<'a> fn(&'a str, &'a Limits) -> Result<Incoming<'a>, crate::dnode::DecodeError>,
    ) -> Option<String> {
        let Ok(Incoming::Callback(cb)) = decoder(text, limits) else {
            return None;
        };
        let id = cb.id;
        let outcome = format!("{:?}", cb.response());
        let Ok(Incoming::Callback(cb)) = decoder(text, limits) else {
            return None;
        };
        Some(format!("{id} {outcome} {:?}", cb.arguments()))
    }

    #[test]
    fn agrees_with_the_general_decoder_on_generated_responses() {
        let limits = Limits::default();
        let mut rng = Rng(0x5eed_1234_abcd_0002);
        let mut taken = 0;
        for round in 0..20_000 {
            let text = generated_response(&mut rng);
            let mut texts = vec![text.clone()];
            for _ in 0..3 {
                let replacements = ['{', '}', '[', ']', ',', ':', '"', '0', ' ', 'n'];
                texts.push(mutated(&mut rng, &text, &replacements));
            }
            for t in &texts {
                if response::<false>(t, &limits).is_some() {
                    taken += 1;
                    assert_eq!(
                        callback_outcome(t, &limits, super::super::decode),
                        callback_outcome(t, &limits, decode_general),
                        "round {round}: {t}"
                    );
                }
            }
        }
        assert!(taken > 20_000, "taken {taken}");
    }

    /// Everything a decoder makes of `text`: the call, or the callback's outcome and
    /// arguments, or the error.
    fn summary(r: Result<Incoming<'_>, crate::dnode::DecodeError>) -> String {
        match r {
            Ok(Incoming::Call(c)) => format!("call {:?} {:?} {:?}", c.method, c.request, c.report),
            Ok(Incoming::Callback(cb)) => {
                let id = cb.id;
                format!("callback {id} {:?}", cb.response())
            }
            Err(e) => format!("error {e}"),
        }
    }

    /// `decode_escaped` of `escaped` is `decode` of its unescaped text; the escaped
    /// reader's result, where it takes one, is the general decoder's. Returns whether the
    /// escaped reader took it.
    fn check_escaped(escaped: &str, limits: &Limits) -> bool {
        let mut plain = String::new();
        let mut scratch = String::new();
        let got = summary(super::super::decode_escaped(escaped, &mut scratch, limits));
        if crate::sockjs::unescape_into(escaped, &mut plain).is_err() {
            assert!(got.starts_with("error cannot unescape"), "{escaped}: {got}");
            return false;
        }
        assert_eq!(
            got,
            summary(super::super::decode(&plain, limits)),
            "{escaped}"
        );
        let Some((method, request, report)) = request::<true>(escaped, limits) else {
            return false;
        };
        let fast = format!(
            "{:?} {:?} {:?}",
            Cow::Borrowed(method),
            Ok::<_, ()>(request),
            report
        );
        assert_eq!(Some(fast), general(&plain, limits), "{escaped}");
        true
    }

    /// A frame of two messages with the body `escaped` splits as serde_json reads it
    /// (and, for a body we escaped, into `text`; only `\\u` escapes are left to the slow way).
    fn check_frame(escaped: &str, text: Option<&str>) {
        let frame = format!("[\"{escaped}\",\"{escaped}\"]");
        let mut out = Vec::new();
        let split = crate::sockjs::split_messages(&frame, &mut out).map(|()| {
            out.iter()
                .map(|e| e.to_plain().expect("unescapes"))
                .collect::<Vec<_>>()
        });
        let want = serde_json::from_str::<Vec<String>>(&frame).ok();
        if split.is_some() || !escaped.contains("\\u") && text.is_some() {
            assert_eq!(split, want, "{frame}");
        }
        if let (Some(text), false) = (text, escaped.contains("\\u")) {
            assert_eq!(split, Some(vec![text.to_string(), text.to_string()]));
        }
    }

    #[test]
    fn reads_the_escaped_form_as_the_unescaped_text() {
        let limits = Limits::default();
        let mut rng = Rng(0x5eed_1234_abcd_0002);
        let (mut taken, mut plain_taken, mut responses) = (0, 0, 0);
        for round in 0..20_000 {
            let text = if round % 2 == 0 {
                generated(&mut rng)
            } else {
                generated_response(&mut rng)
            };
            let escaped = Escaped::new(&text);
            let e = escaped.as_str();
            check_escaped(e, &limits);
            check_frame(e, Some(&text));
            // Compact, as peers send it (whitespace would be escaped, `\n`, and such a
            // text is read the plain way): whatever the plain reader takes without other
            // escapes than quotes, the escaped one takes too.
            if let Ok(compact) = serde_json::from_str::<Value>(&text).map(|v| v.to_string()) {
                let escaped = Escaped::new(&compact);
                let c = escaped.as_str();
                if check_escaped(c, &limits) {
                    taken += 1;
                }
                let only_quotes = !c.replace("\\\"", "").contains('\\');
                if scanned(&compact, &limits).is_some() && only_quotes {
                    plain_taken += 1;
                    assert!(request::<true>(c, &limits).is_some(), "round {round}: {c}");
                }
                if response::<false>(&compact, &limits).is_some() && only_quotes {
                    responses += 1;
                    assert!(response::<true>(c, &limits).is_some(), "round {round}: {c}");
                }
            }
            // Mutations of the escaped form: quotes losing or gaining a backslash among them.
            for _ in 0..3 {
                let m = mutated(&mut rng, e, &['\\', '"', '{', '}', ',', ':', ' ', 'x']);
                check_escaped(&m, &limits);
                check_frame(&m, None);
            }
        }
        assert!(
            taken * 20 > 20_000 && taken == plain_taken,
            "{taken} {plain_taken}"
        );
        assert!(responses * 20 > 20_000, "{responses}");
        // Too large escaped but not unescaped: decoded the general way, within the limit.
        let usual = r#"{"method":"a","arguments":[{"withArgs":[1]}],"callbacks":{}}"#;
        let limits = Limits {
            max_message_bytes: usual.len(),
            ..Limits::default()
        };
        assert!(!check_escaped(Escaped::new(usual).as_str(), &limits));
    }

    /// `decode_escaped_after(escaped, known)` is `decode_escaped(escaped)`, except that a
    /// `kite` object with the bytes of `known` is passed over, in which case what
    /// `decode_escaped` read there must be `known_kite` (what `known` was read as). Returns
    /// whether it was passed over.
    fn check_after(escaped: &str, known: &str, known_kite: &KiteRef<'_>, limits: &Limits) -> bool {
        let (mut s1, mut s2) = (String::new(), String::new());
        let plain = super::super::decode_escaped(escaped, &mut s1, limits);
        let after = super::super::decode_escaped_after(escaped, &mut s2, limits, Some(known));
        match (plain, after) {
            (Ok(Incoming::Call(p)), Ok(Incoming::Call(mut a)))
                if a.kite_text == KiteText::Repeated =>
            {
                let read = p.request.as_ref().map(|r| r.kite.clone());
                assert_eq!(read.as_ref(), Ok(known_kite), "{escaped}");
                if let Ok(r) = &mut a.request {
                    assert_eq!(r.kite, KiteRef::default(), "{escaped}");
                    r.kite = known_kite.clone();
                }
                assert_eq!(
                    summary(Ok(Incoming::Call(p))),
                    summary(Ok(Incoming::Call(a))),
                    "{escaped}"
                );
                true
            }
            (p, a) => {
                assert_eq!(summary(p), summary(a), "{escaped}");
                false
            }
        }
    }

    /// 10,000 generated requests in their escaped form: each, and two mutations of it, is
    /// checked with `check` against what the previous request left to remember (`check`
    /// says whether the object was passed over); `remember` gives the object a request's
    /// decoding read (its escaped text, and what it was read as), which must be passed over
    /// when the request is told itself. Returns (requests told themselves, passed over).
    fn repeated_objects<T>(
        seed: u64,
        check: impl Fn(&str, &str, &T, &Limits) -> bool,
        remember: impl Fn(&super::super::IncomingCall<'_>) -> Option<(String, T)>,
    ) -> (usize, usize) {
        let limits = Limits::default();
        let mut rng = Rng(seed);
        let mut known: Option<(String, T)> = None;
        let (mut itself, mut repeated) = (0, 0);
        for round in 0..10_000 {
            let text = generated(&mut rng);
            let Ok(compact) = serde_json::from_str::<Value>(&text).map(|v| v.to_string()) else {
                continue;
            };
            let escaped = Escaped::new(&compact);
            let e = escaped.as_str();
            if let Some((k, t)) = &known {
                // Another request, and mutations of it, told the previous request's object.
                if check(e, k, t, &limits) {
                    repeated += 1;
                }
                for _ in 0..2 {
                    let m = mutated(&mut rng, e, &['\\', '"', '{', '}', ',', ':', 'x']);
                    check(&m, k, t, &limits);
                }
            }
            let mut scratch = String::new();
            let Ok(Incoming::Call(call)) = super::super::decode_escaped(e, &mut scratch, &limits)
            else {
                continue;
            };
            let Some((k, t)) = remember(&call) else {
                continue;
            };
            // The request itself, told its own object: passed over.
            assert!(check(e, &k, &t, &limits), "round {round}: {e}");
            itself += 1;
            known = Some((k, t));
        }
        (itself, repeated)
    }

    #[test]
    fn passes_over_a_repeated_kite_object_and_reads_the_rest_alike() {
        let limits = Limits::default();
        let (itself, repeated) = repeated_objects(0x5eed_1234_abcd_0003, check_after, |call| {
            let (KiteText::Read(k), Ok(r)) = (call.kite_text, &call.request) else {
                return None;
            };
            let kite = KiteRef {
                username: Cow::Owned(r.kite.username.to_string()),
                environment: Cow::Owned(r.kite.environment.to_string()),
                name: Cow::Owned(r.kite.name.to_string()),
                version: Cow::Owned(r.kite.version.to_string()),
                region: Cow::Owned(r.kite.region.to_string()),
                hostname: Cow::Owned(r.kite.hostname.to_string()),
                id: Cow::Owned(r.kite.id.to_string()),
            };
            Some((k.to_owned(), kite))
        });
        assert!(itself > 1_000, "{itself}");
        // The generator repeats identities now and then (e.g. `null`).
        assert!(repeated > 0, "{repeated}");
        // An empty `known` is never taken as a match.
        let mut scratch = String::new();
        let usual = Escaped::new(
            r#"{"method":"a","arguments":[{"kite":{"name":"n"},"withArgs":[1]}],"callbacks":{}}"#,
        );
        let Ok(Incoming::Call(call)) =
            super::super::decode_escaped_after(usual.as_str(), &mut scratch, &limits, Some(""))
        else {
            panic!("a call");
        };
        assert!(matches!(call.kite_text, KiteText::Read(_)));
        assert_eq!(
            call.request.map(|r| r.kite.name.into_owned()),
            Ok("n".to_string())
        );
    }

    /// `decode_escaped_known(escaped, known authentication)` is `decode_escaped(escaped)`,
    /// except that an `authentication` object with the bytes of `known` is passed over
    /// (left `None`), in which case what `decode_escaped` read there must be `credential`
    /// (what `known` was read as). Returns whether it was passed over.
    fn check_known_auth(
        escaped: &str,
        known: &str,
        credential: &(String, String),
        limits: &Limits,
    ) -> bool {
        let (mut s1, mut s2) = (String::new(), String::new());
        let plain = super::super::decode_escaped(escaped, &mut s1, limits);
        let k = Known {
            kite: None,
            authentication: Some(known),
        };
        let after = super::super::decode_escaped_known(escaped, &mut s2, limits, k);
        match (plain, after) {
            (Ok(Incoming::Call(mut p)), Ok(Incoming::Call(a)))
                if a.authentication_text == KiteText::Repeated =>
            {
                let read = p
                    .request
                    .as_mut()
                    .ok()
                    .and_then(|r| r.authentication.take());
                let read = read.map(|a| (a.kind.into_owned(), a.key.into_owned()));
                assert_eq!(read.as_ref(), Some(credential), "{escaped}");
                assert!(
                    matches!(&a.request, Ok(r) if r.authentication.is_none()),
                    "{escaped}"
                );
                assert_eq!(
                    summary(Ok(Incoming::Call(p))),
                    summary(Ok(Incoming::Call(a))),
                    "{escaped}"
                );
                true
            }
            (p, a) => {
                assert_eq!(summary(p), summary(a), "{escaped}");
                false
            }
        }
    }

    #[test]
    fn passes_over_a_repeated_credential_and_reads_the_rest_alike() {
        let limits = Limits::default();
        let seed = 0x5eed_1234_abcd_0005;
        let (itself, repeated) = repeated_objects(seed, check_known_auth, |call| {
            let (KiteText::Read(k), Ok(r)) = (call.authentication_text, &call.request) else {
                return None;
            };
            // Never `Read` without an object (`null` included).
            let a = r.authentication.as_ref().expect("read: an object");
            Some((k.to_owned(), (a.kind.to_string(), a.key.to_string())))
        });
        assert!(itself > 1_000, "{itself}");
        assert!(repeated > 0, "{repeated}");
        // `null` is read, never remembered; an empty `known` is never a match.
        let mut scratch = String::new();
        let with_null = Escaped::new(
            r#"{"method":"a","arguments":[{"authentication":null,"withArgs":[1]}],"callbacks":{}}"#,
        );
        let k = Known {
            kite: None,
            authentication: Some(""),
        };
        let Ok(Incoming::Call(call)) =
            super::super::decode_escaped_known(with_null.as_str(), &mut scratch, &limits, k)
        else {
            panic!("a call");
        };
        assert_eq!(call.authentication_text, KiteText::Unknown);
        // The bytes of a credential followed by more of the object are not the credential.
        let first = Escaped::new(
            r#"{"method":"a","arguments":[{"authentication":{"type":"token","key":"k"},"withArgs":[1]}],"callbacks":{}}"#,
        );
        let mut scratch = String::new();
        let Ok(Incoming::Call(call)) =
            super::super::decode_escaped(first.as_str(), &mut scratch, &limits)
        else {
            panic!("a call");
        };
        let KiteText::Read(k) = call.authentication_text else {
            panic!("read");
        };
        let k = k.to_owned();
        let longer = Escaped::new(
            r#"{"method":"a","arguments":[{"authentication":{"type":"token","key":"k2"},"withArgs":[1]}],"callbacks":{}}"#,
        );
        assert!(!check_known_auth(
            longer.as_str(),
            &k,
            &("token".into(), "k".into()),
            &limits
        ));
        assert!(check_known_auth(
            first.as_str(),
            &k,
            &("token".into(), "k".into()),
            &limits
        ));
    }

    #[test]
    fn simple_numbers_and_arrays_read_as_serde_json_reads_them() {
        let mut rng = Rng(0x5eed_1234_abcd_0004);
        let pieces = [
            "0", "1", "9", "-", ".", "00", "12", "5", "e", "1e2", " ", "x",
        ];
        let (mut taken, mut checked) = (0, 0);
        for _ in 0..200_000 {
            let mut t = String::new();
            for _ in 0..=rng.upto(8) {
                t.push_str(rng.pick(&pieces));
            }
            let mut digits = String::new();
            for _ in 0..=rng.upto(18) {
                digits.push(char::from(b'0' + rng.upto(10) as u8));
            }
            let dot = rng.upto(digits.len() + 1);
            let decimal = format!(
                "{}{}.{}",
                if rng.upto(2) == 0 { "-" } else { "" },
                &digits[..dot.max(1)],
                &digits[dot.max(1)..]
            );
            for text in [t.clone(), digits.clone(), decimal] {
                let want = serde_json::from_str::<Value>(&text).ok();
                if let Some(v) = simple_number(text.as_bytes()) {
                    taken += 1;
                    // Same value and kind (u64, i64 or f64), bit for bit.
                    assert_eq!(Some(&v), want.as_ref(), "{text}");
                    if let (Some(a), Some(b)) = (v.as_f64(), want.as_ref().and_then(Value::as_f64))
                    {
                        assert_eq!(a.to_bits(), b.to_bits(), "{text}");
                    }
                }
                checked += 1;
                let array = format!("[{text},{text}]");
                if let Some(v) = number_array(array.as_bytes()) {
                    assert_eq!(
                        Some(v),
                        serde_json::from_str::<Value>(&array).ok(),
                        "{array}"
                    );
                }
            }
        }
        assert!(taken * 4 > checked, "{taken} of {checked}");
        assert_eq!(number_array(b"[]"), Some(Value::Array(Vec::new())));
        assert_eq!(number_array(b"[4.0]"), Some(serde_json::json!([4.0])));
        assert_eq!(number_array(b"[1,]"), None);
        assert_eq!(number_array(b"[ 1]"), None);
        assert_eq!(simple_number(b"-0"), None);
        assert_eq!(simple_number(b"0.1"), Some(serde_json::json!(0.1)));
    }

    #[test]
    fn plain_strings_read_as_serde_json_reads_them() {
        for text in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "é ü \u{2028} 日本",
            "a\"b",
            "a\\b",
            "tab\there",
            "\u{0}kite-fn:1",
            "\u{7f}",
        ] {
            let json = serde_json::to_string(text).expect("a string serialises");
            let expected: Value = serde_json::from_str(&json).expect("and parses");
            if let Some(s) = plain_string::<false>(&json) {
                assert_eq!(Value::String(s.into()), expected, "{json}");
            }
            let escaped = crate::sockjs::Escaped::new(&json);
            if let Some(s) = plain_string::<true>(escaped.as_str()) {
                assert_eq!(Value::String(s.into()), expected, "{json}");
            }
        }
        // What it takes and what it leaves to serde_json.
        assert_eq!(plain_string::<false>(r#""abc""#), Some("abc"));
        assert_eq!(plain_string::<true>(r#"\"abc\""#), Some("abc"));
        assert_eq!(plain_string::<false>(r#""a\"b""#), None);
        assert_eq!(plain_string::<true>(r#"\"a\\nb\""#), None);
        assert_eq!(plain_string::<false>("\"a\u{1}\""), None);
        assert_eq!(plain_string::<false>("\""), None);
        assert_eq!(plain_string::<false>("12"), None);
    }

    #[test]
    fn takes_the_usual_request_and_leaves_the_rest() {
        let limits = Limits::default();
        let usual = r#"{"method":"square","arguments":[{"authentication":{"type":"token","key":"abc"},"kite":{"username":"u","environment":"e","name":"n","version":"1","region":"r","hostname":"h","id":"i"},"responseCallback":"[Function]","withArgs":[4]}],"callbacks":{"0":[0,"responseCallback"]},"links":[]}"#;
        let (method, req, report) = request::<false>(usual, &limits).expect("usual shape");
        assert_eq!(method, "square");
        assert_eq!(req.kite.hostname, "h");
        assert_eq!(req.authentication.as_ref().map(|a| &*a.key), Some("abc"));
        assert_eq!(req.with_args, vec![serde_json::json!(4)]);
        assert_eq!(req.response_callback, Some(0));
        assert_eq!(report.installed, 1);
        assert_eq!(scanned(usual, &limits), general(usual, &limits));

        for other in [
            // A response, an escaped string, links, a callback in withArgs, a second
            // element, trailing text, too large.
            r#"{"method":3,"arguments":[{"error":null,"result":16}],"callbacks":{}}"#,
            r#"{"method":"squ\"are","arguments":[{}]}"#,
            r#"{"method":"a","arguments":[{}],"links":[{"from":[0],"to":[1]}]}"#,
            r#"{"method":"a","arguments":[{"withArgs":[1]}],"callbacks":{"1":[0,"withArgs",0]}}"#,
            r#"{"method":"a","arguments":[{},{}]}"#,
            r#"{"method":"a","arguments":[{}]} x"#,
        ] {
            assert_eq!(
                request::<false>(other, &limits).map(|r| r.0),
                None,
                "{other}"
            );
        }
        let small = Limits {
            max_message_bytes: 10,
            ..Limits::default()
        };
        assert!(request::<false>(usual, &small).is_none());
        // Nested deeper than the reader goes: left to the general decoder.
        let deep = format!(
            r#"{{"method":"a","arguments":[{{"withArgs":{}1{}}}]}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        assert!(request::<false>(&deep, &limits).is_none());
        assert!(request::<true>(&deep, &limits).is_none());
        assert!(general(&deep, &limits).is_some());
        // Bad input: never a panic here, and the general decoder gives the error.
        let very_deep = format!(
            r#"{{"method":"a","arguments":[{{"withArgs":{}}}]}}"#,
            "[".repeat(100_000)
        );
        for bad in [
            "",
            "{",
            "}",
            "[]",
            "null",
            r#"{"method""#,
            r#"{"method":"a","arguments":[{"kite":{"id":"x"#,
            r#"{"method":99999999999999999999,"arguments":[{"result":1}]}"#,
            r#"{"method":1,"arguments":[{"result":nul}]}"#,
            "{\"method\":\"a\u{1}\",\"arguments\":[{}]}",
            very_deep.as_str(),
        ] {
            assert!(request::<false>(bad, &limits).is_none(), "{bad:.80}");
            assert!(request::<true>(bad, &limits).is_none(), "{bad:.80}");
            assert!(response::<false>(bad, &limits).is_none(), "{bad:.80}");
            assert!(response::<true>(bad, &limits).is_none(), "{bad:.80}");
            assert!(super::super::decode(bad, &limits).is_err(), "{bad:.80}");
        }

        let usual = r#"{"method":17,"arguments":[{"error":null,"result":16}],"callbacks":{}}"#;
        let (id, outcome) = response::<false>(usual, &limits).expect("usual response");
        assert_eq!((id, outcome.ok()), (17, Some(serde_json::json!(16))));
        let failed =
            r#"{"method":1,"arguments":[{"error":{"type":"x","message":"m"},"result":null}]}"#;
        assert_eq!(
            response::<false>(failed, &limits)
                .and_then(|r| r.1.err())
                .map(|e| e.message),
            Some("m".to_string())
        );
        for other in [
            r#"{"method":"a","arguments":[{}]}"#,
            r#"{"method":1,"arguments":[{"error":null,"result":1}],"callbacks":{"2":[0,"result"]}}"#,
            r#"{"method":1,"arguments":[{}]}"#,
            r#"{"method":1,"arguments":[{"result":1,"extra":2}]}"#,
        ] {
            assert!(response::<false>(other, &limits).is_none(), "{other}");
        }
    }
}
