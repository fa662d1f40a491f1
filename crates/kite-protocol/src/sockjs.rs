//! SockJS frame codec (SockJS protocol 0.3), without any I/O.
//!
//! Server → client frames are `o` (open), `h` (heartbeat), `a[...]` (one or more messages,
//! each a JSON string), `c[code,"reason"]` (close) and the legacy `m"..."` (one message).
//! Client → server frames are a JSON array of strings; for leniency a single JSON string
//! and an empty (or all-whitespace) frame are accepted too (PROTOCOL.md 2.2).
//!
//! A kite message (one dnode JSON text) is one SockJS message, so it is JSON-quoted a
//! second time inside a frame. When quoting, the characters that the SockJS protocol lists
//! as unsafe for browsers (`escapable_by_server` in the conformance suite) are written as
//! `\uXXXX` escapes.
//!
//! ```
//! use kite_protocol::sockjs::{self, ServerFrame};
//!
//! let mut frame = String::new();
//! sockjs::encode_messages(["{\"method\":0}"], &mut frame);
//! assert_eq!(frame, r#"a["{\"method\":0}"]"#);
//! assert_eq!(
//!     sockjs::decode_server_frame(&frame).unwrap(),
//!     ServerFrame::Messages(vec!["{\"method\":0}".to_string()])
//! );
//! assert_eq!(sockjs::decode_client_frame(r#"["a","b"]"#).unwrap(), vec!["a", "b"]);
//! assert!(sockjs::decode_client_frame("").unwrap().is_empty());
//! ```

use std::fmt::Write as _;

/// The open frame, first frame of every session.
pub const OPEN_FRAME: &str = "o";
/// The heartbeat frame.
pub const HEARTBEAT_FRAME: &str = "h";

/// Close code and reason sent when the server closes a session itself.
pub const CLOSE_GO_AWAY: (u16, &str) = (3000, "Go away!");
/// Close code and reason for a second concurrent receiving request of one session.
pub const CLOSE_ANOTHER_CONNECTION: (u16, &str) = (2010, "Another connection still open");
/// Close code and reason for a session interrupted by the client.
pub const CLOSE_INTERRUPTED: (u16, &str) = (1002, "Connection interrupted");

/// A decoded server → client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// `o`: the session is open.
    Open,
    /// `h`: heartbeat.
    Heartbeat,
    /// `a[...]` (or the legacy `m"..."`): one or more messages.
    Messages(Vec<String>),
    /// `c[code,"reason"]`: the session is closed.
    Close {
        /// The close code, e.g. 3000.
        code: u32,
        /// The close reason, e.g. `Go away!`.
        reason: String,
    },
    /// A zero-length frame: what a Go server writes just before it drops the connection.
    Empty,
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The frame starts with a letter that is not a SockJS frame type.
    #[error("unknown SockJS frame type {0:?}")]
    UnknownType(char),
    /// The JSON part of the frame is malformed or has the wrong shape.
    #[error("malformed SockJS frame: {0}")]
    Malformed(String),
    /// An `o` or `h` frame carried trailing data.
    #[error("unexpected data after SockJS frame type {0:?}")]
    TrailingData(char),
}

/// Decodes one server → client frame (client side).
///
/// A trailing `\n` (as written by the HTTP transports) is tolerated.
pub fn decode_server_frame(frame: &str) -> Result<ServerFrame, FrameError> {
    let frame = frame.strip_suffix('\n').unwrap_or(frame);
    let mut chars = frame.chars();
    let Some(kind) = chars.next() else {
        return Ok(ServerFrame::Empty);
    };
    let rest = chars.as_str();
    match kind {
        'o' | 'h' => {
            if !rest.trim().is_empty() {
                return Err(FrameError::TrailingData(kind));
            }
            Ok(if kind == 'o' {
                ServerFrame::Open
            } else {
                ServerFrame::Heartbeat
            })
        }
        'a' => match fast_string_array(rest) {
            Some(messages) => Ok(ServerFrame::Messages(messages)),
            None => serde_json::from_str::<Vec<String>>(rest)
                .map(ServerFrame::Messages)
                .map_err(|e| FrameError::Malformed(e.to_string())),
        },
        'm' => serde_json::from_str::<String>(rest)
            .map(|m| ServerFrame::Messages(vec![m]))
            .map_err(|e| FrameError::Malformed(e.to_string())),
        'c' => {
            let (code, reason): (u32, String) =
                serde_json::from_str(rest).map_err(|e| FrameError::Malformed(e.to_string()))?;
            Ok(ServerFrame::Close { code, reason })
        }
        other => Err(FrameError::UnknownType(other)),
    }
}

/// Decodes one client → server frame (server side): a JSON array of strings, a single JSON
/// string, or an empty / all-whitespace frame (no messages).
///
/// The caller bounds the frame's size before decoding; JSON nesting is bounded by
/// `serde_json`'s recursion limit, so deeply nested input is an error, never a stack
/// overflow.
pub fn decode_client_frame(frame: &str) -> Result<Vec<String>, FrameError> {
    let trimmed = frame.trim_start();
    match trimmed.as_bytes().first() {
        None => Ok(Vec::new()),
        Some(b'"') => serde_json::from_str::<String>(trimmed)
            .map(|m| vec![m])
            .map_err(|e| FrameError::Malformed(e.to_string())),
        Some(b'[') => match fast_string_array(trimmed) {
            Some(messages) => Ok(messages),
            None => serde_json::from_str::<Vec<String>>(trimmed)
                .map_err(|e| FrameError::Malformed(e.to_string())),
        },
        Some(_) => Err(FrameError::Malformed(
            "expected a JSON array of strings".to_string(),
        )),
    }
}

/// Decodes a JSON array of strings in one pass, each string unescaped straight into a
/// `String` of its exact size: the common frame (no `\\u` escapes, no unusual
/// whitespace). `None` for anything else, which the caller hands to `serde_json` (same
/// result or error as before, just slower).
fn fast_string_array(text: &str) -> Option<Vec<String>> {
    let b = text.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    if b.get(i) != Some(&b'[') {
        return None;
    }
    i = skip_ws(i + 1);
    let mut out = Vec::new();
    if b.get(i) == Some(&b']') {
        return (skip_ws(i + 1) == b.len()).then_some(out);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let (string, next) = fast_string(text, i + 1)?;
        out.push(string);
        i = skip_ws(next);
        match b.get(i)? {
            b',' => i = skip_ws(i + 1),
            b']' => return (skip_ws(i + 1) == b.len()).then_some(out),
            _ => return None,
        }
    }
}

/// Unescapes the JSON string whose body starts at `start` (after the opening quote);
/// returns it and the index after the closing quote. `None` on `\\u` escapes, raw control
/// characters or a bad escape (left to `serde_json`).
fn fast_string(text: &str, start: usize) -> Option<(String, usize)> {
    let b = text.as_bytes();
    // First pass: find the end, so that the output is allocated once at its final size.
    let mut i = start;
    let mut escapes = 0;
    loop {
        match *b.get(i)? {
            b'"' => break,
            b'\\' => {
                escapes += 1;
                i += 2;
            }
            c if c < 0x20 => return None,
            _ => i += 1,
        }
    }
    let end = i;
    if escapes == 0 {
        return Some((text[start..end].to_string(), end + 1));
    }
    let mut out = String::with_capacity(end - start - escapes);
    let mut run = start;
    let mut i = start;
    while i < end {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        out.push_str(&text[run..i]);
        out.push(match *b.get(i + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            _ => return None,
        });
        i += 2;
        run = i;
    }
    out.push_str(&text[run..end]);
    Some((out, end + 1))
}

/// Appends an `a[...]` frame holding `messages` to `out`.
pub fn encode_messages<I, S>(messages: I, out: &mut String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    out.push('a');
    encode_string_array(messages, out);
}

/// Appends a client → server frame (`["m1","m2"]`) holding `messages` to `out`.
pub fn encode_client_frame<I, S>(messages: I, out: &mut String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    encode_string_array(messages, out);
}

/// Appends a `c[code,"reason"]` frame to `out`.
pub fn encode_close(code: u32, reason: &str, out: &mut String) {
    // Writing to a String cannot fail.
    let _ = write!(out, "c[{code},");
    quote_into(reason, out);
    out.push(']');
}

fn encode_string_array<I, S>(messages: I, out: &mut String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    out.push('[');
    for (i, m) in messages.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        quote_into(m.as_ref(), out);
    }
    out.push(']');
}

/// Whether SockJS requires `c` to be sent as a `\uXXXX` escape (besides JSON's own rules).
#[inline]
fn sockjs_unsafe(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x1f | 0x200c..=0x200f | 0x2028..=0x202f | 0x2060..=0x206f | 0xfff0..=0xffff)
}

/// Appends `s` as a JSON string literal, escaping what JSON and SockJS require.
pub fn quote_into(s: &str, out: &mut String) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut run_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Byte scan: only ASCII specials and the lead bytes of U+2000..U+2FFF (0xE2) and
        // U+F000..U+FFFF (0xEF) can need an escape.
        let (escape, c, len): (Option<&str>, u32, usize) = match bytes[i] {
            b'"' => (Some("\\\""), 0, 1),
            b'\\' => (Some("\\\\"), 0, 1),
            b'\n' => (Some("\\n"), 0, 1),
            b'\r' => (Some("\\r"), 0, 1),
            b'\t' => (Some("\\t"), 0, 1),
            b @ 0..=0x1f => (None, u32::from(b), 1),
            0xE2 | 0xEF => match s[i..].chars().next() {
                Some(c) if sockjs_unsafe(c) => (None, c as u32, c.len_utf8()),
                _ => {
                    i += 1;
                    continue;
                }
            },
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[run_start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{c:04x}");
            }
        }
        i += len;
        run_start = i;
    }
    out.push_str(&s[run_start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_server_frame_type() {
        assert_eq!(decode_server_frame("o"), Ok(ServerFrame::Open));
        assert_eq!(decode_server_frame("h\n"), Ok(ServerFrame::Heartbeat));
        assert_eq!(decode_server_frame(""), Ok(ServerFrame::Empty));
        assert_eq!(
            decode_server_frame(r#"a["x","y"]"#),
            Ok(ServerFrame::Messages(vec!["x".into(), "y".into()]))
        );
        assert_eq!(
            decode_server_frame(r#"m"x""#),
            Ok(ServerFrame::Messages(vec!["x".into()]))
        );
        assert_eq!(
            decode_server_frame(r#"c[3000,"Go away!"]"#),
            Ok(ServerFrame::Close {
                code: 3000,
                reason: "Go away!".into()
            })
        );
        assert!(matches!(
            decode_server_frame("x"),
            Err(FrameError::UnknownType('x'))
        ));
        assert!(matches!(
            decode_server_frame("a[1]"),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode_server_frame("ox"),
            Err(FrameError::TrailingData('o'))
        ));
    }

    #[test]
    fn decodes_lenient_client_frames() {
        assert_eq!(decode_client_frame(" [\"a\"] ").unwrap(), vec!["a"]);
        assert_eq!(decode_client_frame("\"a\"").unwrap(), vec!["a"]);
        assert!(decode_client_frame("  ").unwrap().is_empty());
        assert!(decode_client_frame("[]").unwrap().is_empty());
        for bad in ["{}", "[1]", "[\"a\"", "5", "x", "[[\"a\"]]"] {
            assert!(decode_client_frame(bad).is_err(), "{bad}");
        }
        let deep = "[".repeat(100_000);
        assert!(decode_client_frame(&deep).is_err());
    }

    #[test]
    fn escapes_sockjs_unsafe_characters() {
        let mut out = String::new();
        encode_messages(["a\u{2028}b\u{0}\"\\\u{ffff}\u{e9}"], &mut out);
        assert_eq!(out, "a[\"a\\u2028b\\u0000\\\"\\\\\\uffff\u{e9}\"]");
        assert_eq!(
            decode_server_frame(&out).unwrap(),
            ServerFrame::Messages(vec!["a\u{2028}b\u{0}\"\\\u{ffff}\u{e9}".into()])
        );
    }

    #[test]
    fn fast_decoding_matches_serde() {
        let long = "x".repeat(300);
        let cases = [
            "[]".to_string(),
            " [ ] ".to_string(),
            r#"["a"]"#.to_string(),
            r#"[ "a" , "b\"c\\d\/e\n\t\r\b\f" ]"#.to_string(),
            r#"["{\"method\":\"square\",\"arguments\":[4]}","é\u2028"]"#.to_string(),
            format!(r#"["{long}\"","{long}"]"#),
            r#"["\ud800"]"#.to_string(),
            r#"["a","#.to_string(),
            r#"["a" "b"]"#.to_string(),
            r#"["a\x"]"#.to_string(),
            "[\"a\u{1}\"]".to_string(),
            r#"["a"]x"#.to_string(),
            r#"["a\"#.to_string(),
            r#"[1]"#.to_string(),
            r#"[,"a"]"#.to_string(),
            r#"["a",]"#.to_string(),
        ];
        for case in &cases {
            let expected = serde_json::from_str::<Vec<String>>(case).ok();
            let fast = fast_string_array(case);
            if let Some(fast) = &fast {
                assert_eq!(Some(fast), expected.as_ref(), "{case}");
            }
            assert_eq!(decode_client_frame(case).ok(), expected, "{case}");
            assert_eq!(
                decode_server_frame(&format!("a{case}")).ok(),
                expected.map(ServerFrame::Messages),
                "{case}"
            );
        }
    }

    #[test]
    fn quoting_round_trips_every_character_class() {
        let s: String = (0u32..0x3000)
            .chain(0xd7f0..0xd800)
            .chain(0xe000..0x10100)
            .filter_map(char::from_u32)
            .collect();
        let mut out = String::new();
        quote_into(&s, &mut out);
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, s);
        for c in s.chars() {
            let mut one = String::new();
            quote_into(&c.to_string(), &mut one);
            let escaped = one.starts_with("\"\\u");
            assert_eq!(
                escaped,
                sockjs_unsafe(c) && !"\n\r\t".contains(c),
                "{c:?} {one}"
            );
        }
    }

    #[test]
    fn encodes_close_and_client_frames() {
        let mut out = String::new();
        encode_close(3000, "Go away!", &mut out);
        assert_eq!(out, r#"c[3000,"Go away!"]"#);
        out.clear();
        encode_client_frame(["{\"a\":1}", "b"], &mut out);
        assert_eq!(out, r#"["{\"a\":1}","b"]"#);
    }
}
