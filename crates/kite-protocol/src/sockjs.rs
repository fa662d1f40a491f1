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

/// [`decode_client_frame`] into a reused vector: the messages are appended to `out`. On an
/// error `out` is left as it was.
pub fn decode_client_frame_into(frame: &str, out: &mut Vec<String>) -> Result<(), FrameError> {
    let trimmed = frame.trim_start();
    match trimmed.as_bytes().first() {
        None => Ok(()),
        Some(b'[') => {
            let before = out.len();
            if fast_string_array_into(trimmed, out).is_some() {
                return Ok(());
            }
            out.truncate(before);
            let messages = serde_json::from_str::<Vec<String>>(trimmed)
                .map_err(|e| FrameError::Malformed(e.to_string()))?;
            out.extend(messages);
            Ok(())
        }
        Some(_) => {
            out.extend(decode_client_frame(trimmed)?);
            Ok(())
        }
    }
}

/// Decodes a JSON array of strings in one pass, each string unescaped straight into a
/// `String` of its exact size: the common frame (no `\\u` escapes, no unusual
/// whitespace). `None` for anything else, which the caller hands to `serde_json` (same
/// result or error as before, just slower).
fn fast_string_array(text: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    fast_string_array_into(text, &mut out)?;
    Some(out)
}

/// [`fast_string_array`], appending to `out` (which holds garbage on `None`).
fn fast_string_array_into(text: &str, out: &mut Vec<String>) -> Option<()> {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => {
            let r = string_array_with(text, out, &mut scratch);
            if scratch.len() > SCRATCH_KEEP {
                *scratch = Vec::new();
            }
            r
        }
        // Not reentrant; cannot happen, but a fresh buffer is always correct.
        Err(_) => string_array_with(text, out, &mut Vec::new()),
    })
}

thread_local! {
    /// Where [`fast_string`] unescapes before the exact-size copy: reused by every frame
    /// decoded on this thread (its bytes are overwritten, never zeroed again).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A scratch buffer larger than this after a frame is given back (one per thread).
const SCRATCH_KEEP: usize = 256 << 10;

fn string_array_with(text: &str, out: &mut Vec<String>, scratch: &mut Vec<u8>) -> Option<()> {
    walk_string_array(text, |start| {
        let (string, next) = fast_string_with(text, start, scratch)?;
        out.push(string);
        Some(next)
    })
}

/// Walks a JSON array of strings (JSON whitespace around its tokens), the whole `text`:
/// `string` reads the string whose body starts at the index it is given and returns the
/// index after its closing quote, or `None` to give up.
fn walk_string_array(text: &str, mut string: impl FnMut(usize) -> Option<usize>) -> Option<()> {
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
    if b.get(i) == Some(&b']') {
        return (skip_ws(i + 1) == b.len()).then_some(());
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        i = skip_ws(string(i + 1)?);
        match b.get(i)? {
            b',' => i = skip_ws(i + 1),
            b']' => return (skip_ws(i + 1) == b.len()).then_some(()),
            _ => return None,
        }
    }
}

/// Unescapes the JSON string whose body starts at `start` (after the opening quote);
/// returns it and the index after the closing quote. `None` on `\\u` escapes, raw control
/// characters or a bad escape (left to `serde_json`).
#[cfg(test)]
fn fast_string(text: &str, start: usize) -> Option<(String, usize)> {
    fast_string_with(text, start, &mut Vec::new())
}

/// [`fast_string`] in one pass: unescaped into `scratch` a word at a time, then copied
/// into a `String` of the exact size.
fn fast_string_with(text: &str, start: usize, scratch: &mut Vec<u8>) -> Option<(String, usize)> {
    let b = text.as_bytes();
    // The output is never longer than the rest of the text, plus the overshoot of a word.
    let room = b.len().saturating_sub(start).saturating_add(8);
    if scratch.len() < room {
        // Its bytes are overwritten, never read: a fresh zeroed buffer, not a copy.
        *scratch = vec![0; room.next_power_of_two()];
    }
    let dst = &mut scratch[..];
    let mut i = start;
    let mut o = 0;
    loop {
        // Up to the next byte that is a quote, a backslash or below 0x23 (control
        // characters; a space or `!` costs a detour, nothing else). The first word is
        // stored whole, the bytes after a special one are overwritten next: `o <= i -
        // start`, so it always fits.
        if let Some(v) = word_at(b, i) {
            dst[o..o + 8].copy_from_slice(&v.to_le_bytes());
            let m = unescape_stops(v);
            if m != 0 {
                let k = first_byte(m);
                i += k;
                o += k;
            } else {
                // A longer run (a token, an id): scanned on, then copied in one go.
                i += 8;
                o += 8;
                let run = i;
                // Most runs in a JSON text are short: two more words here, the rest of a
                // long one (a token) a block at a time.
                while let Some(v) = word_at(b, i) {
                    let m = unescape_stops(v);
                    if m != 0 {
                        i += first_byte(m);
                        break;
                    }
                    i += 8;
                    if i - run == 16 {
                        i = unescape_run_end(b, i);
                        break;
                    }
                }
                dst[o..o + (i - run)].copy_from_slice(&b[run..i]);
                o += i - run;
            }
        }
        match *b.get(i)? {
            b'"' => break,
            b'\\' => {
                *dst.get_mut(o)? = unescape(*b.get(i + 1)?)?;
                i += 2;
            }
            c if c < 0x20 => return None,
            c => {
                *dst.get_mut(o)? = c;
                i += 1;
            }
        }
        o += 1;
    }
    // Only ASCII backslash escapes were replaced by ASCII bytes, so this holds.
    let string = std::str::from_utf8(&dst[..o]).ok()?.to_owned();
    Some((string, i + 1))
}

/// Splits a JSON array of strings (a client frame, or what follows the `a` of a server
/// frame) into its messages in the escaped form, without unescaping them: each string is
/// checked (escapes, control characters) and its body copied. `None` (and `out` as it
/// was) for anything else, such as a `\\u` escape or unusual whitespace: decode such a
/// frame with [`decode_client_frame_into`] or [`decode_server_frame`], which give the
/// same messages unescaped, or the error.
///
/// ```
/// use kite_protocol::sockjs::split_messages;
///
/// let mut out = Vec::new();
/// split_messages(r#"["{\"a\":1}","x"]"#, &mut out).unwrap();
/// assert_eq!(out[0].as_str(), r#"{\"a\":1}"#);
/// assert_eq!(out[0].to_plain().unwrap(), r#"{"a":1}"#);
/// assert_eq!(out[1].as_str(), "x");
/// assert!(split_messages(r#"["\u0041"]"#, &mut out).is_none());
/// assert_eq!(out.len(), 2);
/// ```
pub fn split_messages(text: &str, out: &mut Vec<Escaped>) -> Option<()> {
    let before = out.len();
    let r = split_messages_into(text, out);
    if r.is_none() {
        out.truncate(before);
    }
    r
}

fn split_messages_into(text: &str, out: &mut Vec<Escaped>) -> Option<()> {
    walk_string_array(text, |start| {
        let end = string_body_end(text.as_bytes(), start)?;
        // Both ends are ASCII quotes: character boundaries.
        out.push(Escaped::received(text.get(start..end)?));
        Some(end + 1)
    })
}

/// The index of the quote that ends the JSON string whose body starts at `start`, if the
/// body has only short escapes (no `\\u`) and no control characters.
///
/// A dnode text escaped for a frame has an escaped quote every few bytes and rarely any
/// other escape: blocks like that ([`quotes_only`]) are passed at once, and a block with
/// nothing at all to look at (inside a token) hands over to [`unescape_run_end`], which
/// passes such blocks more cheaply; the block that holds the end, or anything else, is
/// read a word at a time.
fn string_body_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    loop {
        // `i` is never inside an escape here (and past the opening quote: `i >= 1`).
        while let Some(window) = i
            .checked_sub(1)
            .and_then(|from| b.get(from..from.checked_add(BLOCK + 2)?))
            .and_then(|w| <&[u8; BLOCK + 2]>::try_from(w).ok())
        {
            let (passed, plain) = quotes_only(window);
            if !passed {
                break;
            }
            i += BLOCK;
            if plain {
                // A run with nothing at all to look at (a token): the next blocks at the
                // cheaper test while they stay that way.
                i = unescape_run_end(b, i);
            }
        }
        // The next block (or what is left) the careful way; it ends outside any escape.
        let limit = i + BLOCK;
        // Where the current run without stops began.
        let mut run = i;
        while i < limit {
            if let Some(v) = word_at(b, i) {
                let m = unescape_stops(v);
                if m == 0 {
                    i += 8;
                    if i - run >= 24 {
                        i = unescape_run_end(b, i);
                    }
                    continue;
                }
                i += first_byte(m);
            }
            run = i + 1;
            match *b.get(i)? {
                b'"' => return Some(i),
                b'\\' => {
                    unescape(*b.get(i + 1)?)?;
                    i += 2;
                }
                c if c < 0x20 => return None,
                _ => i += 1,
            }
        }
    }
}

/// Whether the block `w[1..=BLOCK]` (starting outside any escape; `w[0]` and
/// `w[BLOCK + 1]` are its neighbours in the text) holds no control character, no quote
/// that ends the string and no backslash but one that escapes a quote right after it in
/// the block: nothing [`string_body_end`] has to look at. A quote first in the block or a
/// backslash last is left to the careful way, whatever its neighbour. A loop without early
/// exit straight over the text, which the compiler turns into vector compares (SSE2).
/// (With the inclusive range `1..=BLOCK`, or over a copy on the stack, it came out as a
/// byte loop or stalled on the copy: check the code and a native profile when changing it.)
///
/// Also returns whether the block holds no quote, backslash or byte below 0x23 at all (a
/// run of a token or id, which [`unescape_run_end`] skips more cheaply).
#[inline(always)]
fn quotes_only(w: &[u8; BLOCK + 2]) -> (bool, bool) {
    let mut bad = (w[1] == b'"') | (w[BLOCK] == b'\\');
    let mut stop = false;
    for k in 1..BLOCK + 1 {
        let c = w[k];
        bad |=
            (c < 0x20) | ((c == b'\\') & (w[k + 1] != b'"')) | ((c == b'"') & (w[k - 1] != b'\\'));
        stop |= (c < 0x23) | (c == b'\\');
    }
    (!bad, !stop)
}

/// Appends the unescaped `body` of a JSON string literal (without its quotes) to `out`.
/// Runs without escapes are copied whole; a `\\u` escape and what follows it are left to
/// `serde_json`.
pub fn unescape_into(body: &str, out: &mut String) -> Result<(), FrameError> {
    out.reserve(body.len());
    let b = body.as_bytes();
    let mut run = 0;
    let mut i = 0;
    loop {
        // Up to the next backslash.
        while let Some(v) = word_at(b, i) {
            let m = eq_low(v, b'\\');
            if m != 0 {
                i += first_byte(m);
                break;
            }
            i += 8;
        }
        while i < b.len() && b[i] != b'\\' {
            i += 1;
        }
        out.push_str(&body[run..i]);
        if i == b.len() {
            return Ok(());
        }
        match b.get(i + 1).copied().and_then(unescape) {
            Some(c) => {
                out.push(char::from(c));
                i += 2;
                run = i;
            }
            None => {
                let mut quoted = String::with_capacity(b.len() - i + 2);
                quoted.push('"');
                quoted.push_str(&body[i..]);
                quoted.push('"');
                let rest: String = serde_json::from_str(&quoted)
                    .map_err(|e| FrameError::Malformed(e.to_string()))?;
                out.push_str(&rest);
                return Ok(());
            }
        }
    }
}

/// The bytes of `v` where unescaping a JSON string body must look closer: a quote, a
/// backslash or a byte below 0x23 (control characters; a space or `!` is a false alarm).
/// Only the lowest marked byte is certain.
#[inline(always)]
pub(crate) fn unescape_stops(v: u64) -> u64 {
    below_low(v, 0x23) | eq_low(v, b'\\')
}

/// Whether no byte of `v` may need an escape in a JSON string literal (SockJS rules):
/// none is a quote, a backslash, below 0x23 or non-ASCII (a space or `!` takes the slow
/// way, where it is copied as it is).
#[inline(always)]
fn plain_word(v: u64) -> bool {
    (unescape_stops(v) | v) & HIGHS == 0
}

/// Bytes that [`stop_in_block`] tests at once.
const BLOCK: usize = 32;

/// The [`BLOCK`] bytes of `b` from `i`, if there are that many.
#[inline(always)]
fn block_at(b: &[u8], i: usize) -> Option<&[u8; BLOCK]> {
    b.get(i..i.checked_add(BLOCK)?)?.try_into().ok()
}

/// Whether any byte of `block` is a quote, a backslash or below 0x23: a block-wide
/// [`unescape_stops`]. Long runs (tokens) are skipped a block at a time: a loop without
/// early exit, which the compiler turns into a few vector instructions (SSE2 on x86-64),
/// several times cheaper per byte than the word tests. (Written as a `fold`, the same test
/// came out as scattered byte shuffles: check the code when changing it.)
#[inline(always)]
fn stop_in_block(block: &[u8; BLOCK]) -> bool {
    let mut stop = false;
    for &c in block {
        stop |= (c < 0x23) | (c == b'\\');
    }
    stop
}

/// Whether any byte of `block` may need an escape in a JSON string literal: a block-wide
/// [`plain_word`], like [`stop_in_block`].
#[inline(always)]
fn escape_in_block(block: &[u8; BLOCK]) -> bool {
    let mut stop = false;
    for &c in block {
        stop |= (c < 0x23) | (c == b'\\') | (c >= 0x80);
    }
    stop
}

/// Where the run of bytes from `i` that need no unescaping ends: at the first quote,
/// backslash or byte below 0x23, or where fewer than eight bytes are left. Long runs
/// (tokens, ids) are skipped a block at a time. Not inlined: its loops stay out of the
/// caller's, which handles the dense escapes of a JSON text.
#[inline(never)]
pub(crate) fn unescape_run_end(b: &[u8], mut i: usize) -> usize {
    while let Some(c) = block_at(b, i) {
        if stop_in_block(c) {
            break;
        }
        i += BLOCK;
    }
    while let Some(v) = word_at(b, i) {
        let m = unescape_stops(v);
        if m != 0 {
            return i + first_byte(m);
        }
        i += 8;
    }
    i
}

/// Where the run of whole plain words (see [`plain_word`]) from `i` ends, like
/// [`unescape_run_end`]: the start of the first word that is not plain, or where fewer
/// than eight bytes are left.
#[inline(never)]
fn plain_run_end(b: &[u8], mut i: usize) -> usize {
    while let Some(c) = block_at(b, i) {
        if escape_in_block(c) {
            break;
        }
        i += BLOCK;
    }
    while let Some(w) = word_at(b, i) {
        if !plain_word(w) {
            break;
        }
        i += 8;
    }
    i
}

/// Stores bytes `from..` of word `v` at `dst[o..]` (a whole word: the caller accounts for
/// the bytes it means and leaves the rest to be overwritten).
#[inline(always)]
fn store_word(dst: &mut [u8], o: usize, v: u64, from: usize) {
    dst[o..o + 8].copy_from_slice(&(v >> (8 * from)).to_le_bytes());
}

/// The byte a short JSON escape `\\c` stands for; `None` for `\\u` and invalid escapes.
#[inline]
fn unescape(c: u8) -> Option<u8> {
    Some(match c {
        b'"' => b'"',
        b'\\' => b'\\',
        b'/' => b'/',
        b'b' => 8,
        b'f' => 12,
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        _ => return None,
    })
}

// Byte-parallel tests on eight bytes at a time ("SWAR"): each returns a word with the high
// bit set in every byte that passes the test, and no other bit. They are exact (no carry
// crosses a byte), so the lowest set bit locates the first matching byte.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The eight bytes of `b` from `i`, if there are eight (little-endian: byte `i` lowest).
#[inline(always)]
pub(crate) fn word_at(b: &[u8], i: usize) -> Option<u64> {
    let chunk = b.get(i..i.checked_add(8)?)?;
    let mut w = [0u8; 8];
    w.copy_from_slice(chunk);
    Some(u64::from_le_bytes(w))
}

/// Bytes of `v` equal to zero.
#[inline(always)]
fn zero_bytes(v: u64) -> u64 {
    // Per byte: (low 7 bits + 0x7f) reaches bit 7 unless they are all 0, without a carry
    // out of the byte; or-ing `v` catches a set bit 7.
    !(((v & LOW7) + LOW7) | v) & HIGHS
}

/// Bytes of `v` equal to `c`.
#[inline(always)]
fn eq_bytes(v: u64, c: u8) -> u64 {
    zero_bytes(v ^ (ONES * u64::from(c)))
}

/// Bytes of `v` below 0x20 (control characters). Exact; the reference for [`control_low`].
#[cfg(test)]
fn control_bytes(v: u64) -> u64 {
    // Per byte: (low 7 bits + 0x60) reaches bit 7 iff they are >= 0x20.
    !(((v & LOW7) + ONES * 0x60) | v) & HIGHS
}

// Cheaper forms for when only the lowest marked byte is used: that one is exact (a borrow
// out of a matching byte can only mark bytes above it, falsely).

/// Bytes of `v` equal to `c`; only the lowest marked byte is certain.
#[inline(always)]
fn eq_low(v: u64, c: u8) -> u64 {
    let x = v ^ (ONES * u64::from(c));
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Bytes of `v` below 0x20; only the lowest marked byte is certain.
#[inline(always)]
fn control_low(v: u64) -> u64 {
    below_low(v, 0x20)
}

/// Bytes of `v` below `n` (at most 0x80); only the lowest marked byte is certain.
#[inline(always)]
fn below_low(v: u64, n: u8) -> u64 {
    v.wrapping_sub(ONES * u64::from(n)) & !v & HIGHS
}

/// The index of the first byte marked in a non-zero mask.
#[inline(always)]
pub(crate) fn first_byte(mask: u64) -> usize {
    (mask.trailing_zeros() / 8) as usize
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
    quote_with(s, |part| out.push_str(part));
}

/// Writes `s` as a JSON string literal (quotes included), escaping what JSON and SockJS
/// require, as a sequence of string pieces handed to `push` in order: the same bytes as
/// [`quote_into`], for an output buffer that is not a `String` (e.g. a byte buffer).
/// Runs of characters that need no escape are handed over as one piece.
#[inline]
pub fn quote_with(s: &str, mut push: impl FnMut(&str)) {
    push("\"");
    let bytes = s.as_bytes();
    let mut run_start = 0;
    let mut i = 0;
    let mut hex = [0u8; 6];
    loop {
        // Skip eight bytes at a time while none can need an escape: only ASCII specials
        // and the lead bytes of U+2000..U+2FFF (0xE2) and U+F000..U+FFFF (0xEF) can.
        while let Some(v) = word_at(bytes, i) {
            let m = eq_low(v, b'"')
                | eq_low(v, b'\\')
                | control_low(v)
                | eq_low(v, 0xE2)
                | eq_low(v, 0xEF);
            if m != 0 {
                i += first_byte(m);
                break;
            }
            i += 8;
        }
        let Some(&b) = bytes.get(i) else { break };
        let (escape, len): (&str, usize) = match b {
            b'"' => ("\\\"", 1),
            b'\\' => ("\\\\", 1),
            b'\n' => ("\\n", 1),
            b'\r' => ("\\r", 1),
            b'\t' => ("\\t", 1),
            0..=0x1f => (unicode_escape(u32::from(b), &mut hex), 1),
            0xE2 | 0xEF => match s[i..].chars().next() {
                Some(c) if sockjs_unsafe(c) => (unicode_escape(c as u32, &mut hex), c.len_utf8()),
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
        if run_start < i {
            push(&s[run_start..i]);
        }
        push(escape);
        i += len;
        run_start = i;
    }
    if run_start < bytes.len() {
        push(&s[run_start..]);
    }
    push("\"");
}

/// One message in the form it takes inside a SockJS frame: the body of its JSON string
/// literal, escaped as [`quote_into`] escapes it, without the surrounding quotes.
///
/// Quoting a whole dnode text costs a pass over every byte of it, most of which an encoder
/// knows already: the caller's identity and credentials are the same in every request.
/// Encoders that write this form directly (`envelope::encode_*_escaped`) splice in pieces
/// escaped once, so a transport puts the message into a frame as it is.
///
/// Received messages come in this form too ([`split_messages`]): the body as the peer
/// wrote it, which is valid JSON string syntax but not necessarily escaped the way
/// [`quote_into`] escapes (a peer may send U+2028 raw).
///
/// Always valid UTF-8 (every constructor writes whole `&str` texts and ASCII escapes, or
/// takes a slice of a `&str` between ASCII quotes).
///
/// ```
/// use kite_protocol::sockjs::Escaped;
///
/// let e = Escaped::new("{\"method\":\"a\u{2028}b\"}");
/// assert_eq!(e.as_str(), r#"{\"method\":\"a\u2028b\"}"#);
/// assert_eq!(e.to_plain().unwrap(), "{\"method\":\"a\u{2028}b\"}");
/// ```
#[derive(Clone, Default)]
pub struct Escaped(Repr);

/// How an [`Escaped`] holds its text.
#[derive(Clone)]
enum Repr {
    /// Written by an encoder here, byte by byte (valid UTF-8 by construction).
    Written(Vec<u8>),
    /// Taken from a received frame (a `&str` already): read as text without another
    /// UTF-8 check.
    Received(String),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Written(Vec::new())
    }
}

impl PartialEq for Escaped {
    fn eq(&self, other: &Escaped) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Escaped {}

impl Escaped {
    /// Escapes the plain message `text`.
    pub fn new(text: &str) -> Escaped {
        let mut out = Vec::with_capacity(text.len() + text.len() / 4 + 8);
        escape_into_buf(text, &mut out);
        Escaped(Repr::Written(out))
    }

    /// The escaped bytes (valid UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Written(bytes) => bytes,
            Repr::Received(text) => text.as_bytes(),
        }
    }

    /// The escaped text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always valid (see the type's docs); an empty text would show a broken
            // invariant.
            Repr::Written(bytes) => std::str::from_utf8(bytes).unwrap_or_default(),
            Repr::Received(text) => text,
        }
    }

    /// Length of the escaped text in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the escaped text is empty.
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    /// The plain message (for transports that carry messages unframed).
    pub fn to_plain(&self) -> Result<String, FrameError> {
        let mut out = String::with_capacity(self.len());
        unescape_into(self.as_str(), &mut out)?;
        Ok(out)
    }

    /// Wraps bytes an encoder of this crate wrote in the escaped form.
    pub(crate) fn from_escaped_bytes(bytes: Vec<u8>) -> Escaped {
        Escaped(Repr::Written(bytes))
    }

    /// Wraps the body of a string in a received frame (checked by the caller).
    fn received(body: &str) -> Escaped {
        Escaped(Repr::Received(body.to_owned()))
    }
}

impl std::fmt::Debug for Escaped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Escaped").field(&self.as_str()).finish()
    }
}

/// A growable byte buffer that [`quote_into_buf`] appends to (e.g. `Vec<u8>`; wrap other
/// buffer types in a small adapter).
pub trait FrameBuf {
    /// Bytes held.
    fn len(&self) -> usize;
    /// Whether no bytes are held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sets the length to `len`: shortens the buffer, or lengthens it with bytes of any
    /// value (zeros, say), which the caller overwrites.
    fn resize(&mut self, len: usize);
    /// The bytes held, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl FrameBuf for Vec<u8> {
    #[inline]
    fn len(&self) -> usize {
        Vec::len(self)
    }
    #[inline]
    fn resize(&mut self, len: usize) {
        Vec::resize(self, len, 0)
    }
    #[inline]
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// Room [`quote_into_buf`] keeps ahead of its output: one word holding eight escaped
/// quotes takes 16 bytes, written as overlapping whole words (up to 24).
const QUOTE_ROOM: usize = 32;

/// Appends `s` to a byte buffer as a JSON string literal: the same bytes as
/// [`quote_into`] (valid UTF-8), written a word at a time. Meant for frames assembled in
/// byte buffers that are sent as they are.
pub fn quote_into_buf<B: FrameBuf + ?Sized>(s: &str, out: &mut B) {
    escape_with(s, out, true)
}

/// [`quote_into_buf`] without the surrounding quotes: the body of the string literal (what
/// an [`Escaped`] message holds).
pub fn escape_into_buf<B: FrameBuf + ?Sized>(s: &str, out: &mut B) {
    escape_with(s, out, false)
}

#[inline(always)]
fn escape_with<B: FrameBuf + ?Sized>(s: &str, out: &mut B, quotes: bool) {
    let b = s.as_bytes();
    let start = out.len();
    // Room for the common case (a dnode JSON text: one quote to escape in ~6 bytes); it
    // grows when a text needs more.
    let mut end = start + b.len() + b.len() / 4 + QUOTE_ROOM + 2;
    let mut dst = grow(out, end);
    let mut o = start;
    if quotes {
        dst[o] = b'"';
        o += 1;
    }
    let mut i = 0;
    while let Some(v) = word_at(b, i) {
        if end - o < QUOTE_ROOM {
            end = o + (b.len() - i) * 2 + QUOTE_ROOM + 2;
            dst = grow(out, end);
        }
        // A run of plain words (no quote, backslash, byte below 0x23 or non-ASCII byte)
        // is copied as it is: long values such as tokens.
        if plain_word(v) {
            let run = i;
            i += 8;
            // As when unescaping: two more words here, the rest of a long run in blocks.
            while let Some(w) = word_at(b, i) {
                if !plain_word(w) {
                    break;
                }
                i += 8;
                if i - run == 24 {
                    i = plain_run_end(b, i);
                    break;
                }
            }
            let n = i - run;
            if end - o < n + QUOTE_ROOM {
                end = o + n + (b.len() - i) * 2 + QUOTE_ROOM + 2;
                dst = grow(out, end);
            }
            if n == 8 {
                store_word(dst, o, v, 0);
            } else {
                dst[o..o + n].copy_from_slice(&b[run..i]);
            }
            o += n;
            continue;
        }
        // Quotes and backslashes (every few bytes in a dnode JSON text) are handled a word
        // at a time: each part between them is stored as a whole word, followed by a
        // backslash (the quote itself starts the next part).
        let quotes = eq_bytes(v, b'"') | eq_bytes(v, b'\\');
        // Only its lowest byte is used.
        let others = control_low(v) | eq_low(v, 0xE2) | eq_low(v, 0xEF);
        if others == 0 {
            o = store_with_backslashes(dst, o, v, quotes, 8);
            i += 8;
            continue;
        }
        // Rare: up to the first other byte that may need an escape, then that one.
        let k = first_byte(others);
        o = store_with_backslashes(dst, o, v, quotes & ((1u64 << (8 * k)) - 1), k);
        (i, o) = escape_at(s, i + k, dst, o);
    }
    // The last few bytes, one at a time (each at most 6 bytes escaped).
    if end - o < QUOTE_ROOM + 6 * 8 {
        dst = grow(out, o + 6 * 8 + 2);
    }
    while i < b.len() {
        (i, o) = escape_at(s, i, dst, o);
    }
    if quotes {
        dst[o] = b'"';
        o += 1;
    }
    out.resize(o);
}

/// Makes `out` `end` bytes long and returns its bytes to write.
#[inline(always)]
fn grow<B: FrameBuf + ?Sized>(out: &mut B, end: usize) -> &mut [u8] {
    out.resize(end);
    out.bytes_mut()
}

/// Stores bytes `0..end` of word `v` at `dst[o..]`, a backslash before each byte marked in
/// `marked`; returns the index after them.
#[inline(always)]
fn store_with_backslashes(
    dst: &mut [u8],
    mut o: usize,
    v: u64,
    mut marked: u64,
    end: usize,
) -> usize {
    let mut from = 0;
    while marked != 0 {
        let k = first_byte(marked);
        marked &= marked - 1;
        store_word(dst, o, v, from);
        o += k - from;
        dst[o] = b'\\';
        o += 1;
        from = k;
    }
    if from < end {
        store_word(dst, o, v, from);
        o += end - from;
    }
    o
}

/// Stores the byte of `s` at `i` (a character boundary) at `dst[o..]`, escaped if needed;
/// returns the indexes after what was consumed and written (at most 6 bytes).
#[inline]
fn escape_at(s: &str, i: usize, dst: &mut [u8], o: usize) -> (usize, usize) {
    let b = s.as_bytes();
    let mut hex = [0u8; 6];
    let (escaped, used): (&[u8], usize) = match b[i] {
        b'"' => (b"\\\"", 1),
        b'\\' => (b"\\\\", 1),
        b'\n' => (b"\\n", 1),
        b'\r' => (b"\\r", 1),
        b'\t' => (b"\\t", 1),
        c @ 0..=0x1f => (unicode_escape(u32::from(c), &mut hex).as_bytes(), 1),
        c @ (0xE2 | 0xEF) => match s.get(i..).and_then(|r| r.chars().next()) {
            Some(ch) if sockjs_unsafe(ch) => (
                unicode_escape(ch as u32, &mut hex).as_bytes(),
                ch.len_utf8(),
            ),
            _ => {
                dst[o] = c;
                return (i + 1, o + 1);
            }
        },
        c => {
            dst[o] = c;
            return (i + 1, o + 1);
        }
    };
    dst[o..o + escaped.len()].copy_from_slice(escaped);
    (i + used, o + escaped.len())
}

/// `\uXXXX` (lowercase hex) for a code point below 0x10000, written into `buf`.
fn unicode_escape(c: u32, buf: &mut [u8; 6]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    *buf = [
        b'\\',
        b'u',
        HEX[(c >> 12 & 0xf) as usize],
        HEX[(c >> 8 & 0xf) as usize],
        HEX[(c >> 4 & 0xf) as usize],
        HEX[(c & 0xf) as usize],
    ];
    // Only ASCII was written.
    std::str::from_utf8(buf).unwrap_or("")
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

    use crate::test_rng::Rng;

    /// A random string mixing plain ASCII runs with every character class the escaping
    /// rules distinguish.
    fn random_string(rng: &mut Rng) -> String {
        let mut s = String::new();
        let pieces = rng.below(24);
        for _ in 0..pieces {
            match rng.below(14) {
                0..=1 => {
                    for _ in 0..rng.below(20) {
                        s.push(char::from(b'a' + rng.below(26) as u8));
                    }
                }
                2..=3 => {
                    // Any printable ASCII, and the neighbours of the special bytes.
                    for _ in 0..rng.below(12) {
                        s.push(match rng.below(3) {
                            0 => char::from(0x20 + rng.below(0x5f) as u8),
                            _ => ['#', ']', '!', '[', ' ', '!', '\u{e3}', '\u{ee}']
                                [rng.below(8) as usize],
                        });
                    }
                }
                4 => s.push('"'),
                5 => s.push('\\'),
                6 => s.push(char::from(rng.below(0x20) as u8)),
                7 => s.push(['\n', '\r', '\t', '/', '\u{7f}'][rng.below(5) as usize]),
                8 => s.extend(char::from_u32(0x2000 + rng.below(0x1000))),
                9 => s.extend(char::from_u32(0xfff0 + rng.below(0x10))),
                10 => s.extend(char::from_u32(0xe000 + rng.below(0x2000))),
                11 => s.push(
                    ['é', '€', '\u{200b}', '\u{2027}', '\u{2030}', 'ȁ'][rng.below(6) as usize],
                ),
                12 => s.extend(char::from_u32(0x1_0000 + rng.below(0x2_0000))),
                _ => s.extend(char::from_u32(0x80 + rng.below(0xd700))),
            }
        }
        s
    }

    /// Straightforward quoting, one character at a time: what `quote_into` must produce.
    fn reference_quote(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if matches!(c as u32,
                    0..=0x1f | 0x200c..=0x200f | 0x2028..=0x202f | 0x2060..=0x206f
                    | 0xfff0..=0xffff) =>
                {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// Straightforward JSON string unescaping of a literal (quotes included) holding only
    /// the short escapes: what `fast_string` must produce.
    fn reference_unquote(literal: &str) -> String {
        let body = &literal[1..literal.len() - 1];
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            out.push(match chars.next().unwrap() {
                'b' => '\u{8}',
                'f' => '\u{c}',
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                other => other,
            });
        }
        out
    }

    #[test]
    fn word_tests_are_exact_for_every_byte() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                // The byte under test among neighbours that pass no test, and among
                // neighbours that all do (so no carry may leak into or out of its lane).
                for fill in [b'a', 0u8, b'"', 0xff] {
                    let mut w = [fill; 8];
                    w[pos] = b;
                    let v = u64::from_le_bytes(w);
                    let lane = 0x80u64 << (pos * 8);
                    assert_eq!(eq_bytes(v, b'"') & lane != 0, b == b'"', "{b:#x} {pos}");
                    assert_eq!(eq_bytes(v, 0xE2) & lane != 0, b == 0xE2, "{b:#x} {pos}");
                    assert_eq!(zero_bytes(v) & lane != 0, b == 0, "{b:#x} {pos}");
                    assert_eq!(control_bytes(v) & lane != 0, b < 0x20, "{b:#x} {pos}");
                    assert_eq!(eq_bytes(v, b'"') & !HIGHS, 0);
                    assert_eq!(control_bytes(v) & !HIGHS, 0);
                }
            }
        }
    }

    #[test]
    fn cheap_word_tests_find_the_first_match_exactly() {
        let lowest = |m: u64| (m != 0).then(|| first_byte(m));
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let interesting = [
            0u8, 0x1f, 0x20, b'"', b'\\', 0xE2, 0xEF, 0x80, 0xff, b'a', 0x21, 0x22, 0x23, 0x7f,
            0x5b, 0x5d,
        ];
        for _ in 0..200_000 {
            let mut w = [0u8; 8];
            for b in &mut w {
                *b = if rng.below(2) == 0 {
                    interesting[rng.below(interesting.len() as u32) as usize]
                } else {
                    rng.below(256) as u8
                };
            }
            let v = u64::from_le_bytes(w);
            for c in [b'"', b'\\', 0xE2, 0xEF, 0] {
                assert_eq!(lowest(eq_low(v, c)), lowest(eq_bytes(v, c)), "{w:?} {c:#x}");
            }
            assert_eq!(lowest(control_low(v)), lowest(control_bytes(v)), "{w:?}");
            let below = |n: u8| {
                w.iter()
                    .enumerate()
                    .filter(|(_, b)| **b < n)
                    .fold(0u64, |m, (k, _)| m | 0x80 << (8 * k))
            };
            for n in [0x20, 0x23, 0x30] {
                assert_eq!(lowest(below_low(v, n)), lowest(below(n)), "{w:?} {n:#x}");
            }
            assert_eq!(
                plain_word(v),
                w.iter().all(|b| (0x23..0x80).contains(b) && *b != b'\\'),
                "{w:?}"
            );
            let cheap = eq_low(v, b'"') | eq_low(v, b'\\') | control_low(v) | eq_low(v, 0xE2);
            let exact =
                eq_bytes(v, b'"') | eq_bytes(v, b'\\') | control_bytes(v) | eq_bytes(v, 0xE2);
            assert_eq!(lowest(cheap), lowest(exact), "{w:?}");
        }
    }

    /// Long plain runs (tokens) are skipped a block at a time: one special character at
    /// every offset of runs around the block sizes, quoted and decoded both ways.
    #[test]
    fn long_runs_with_a_special_character_at_every_offset() {
        let specials = [
            '"',
            '\\',
            '\n',
            '\u{1}',
            '\u{1f}',
            ' ',
            '!',
            '#',
            '/',
            '\u{7f}',
            'é',
            '\u{2028}',
            '\u{fff0}',
            '\u{10000}',
        ];
        let mut out = Vec::new();
        for len in [0, 7, 8, 23, 24, 31, 32, 33, 47, 56, 63, 64, 65, 95, 130] {
            for at in 0..=len {
                for special in specials {
                    let s = format!("{}{special}{}", "a".repeat(at), "b".repeat(len - at));
                    out.clear();
                    quote_into_buf(&s, &mut out);
                    assert_eq!(out, reference_quote(&s).as_bytes(), "{s:?}");

                    let literal = serde_json::to_string(&s).unwrap();
                    let frame = format!("[{literal},{literal}]");
                    let want = serde_json::from_str::<Vec<String>>(&frame).ok();
                    assert_eq!(decode_client_frame(&frame).ok(), want, "{frame:?}");
                    if special >= ' ' || "\n".contains(special) {
                        assert_eq!(fast_string_array(&frame), want, "{frame:?}");
                    }
                    check_split(&frame);
                    check_unescape(&literal, &s);
                    // The character raw in the literal: a quote ends it early, a backslash
                    // escapes the next `b`, a control character makes the frame invalid.
                    let raw = format!("[\"{s}\"]");
                    let want = serde_json::from_str::<Vec<String>>(&raw).ok();
                    assert_eq!(decode_client_frame(&raw).ok(), want, "{raw:?}");
                    if want.is_none() {
                        assert_eq!(fast_string_array(&raw), None, "{raw:?}");
                    }
                    check_split(&raw);
                }
            }
        }
    }

    #[test]
    fn quoting_and_fast_decoding_match_references_on_random_strings() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut out = String::new();
        for round in 0..4000 {
            let core = random_string(&mut rng);
            // Every offset modulo 8 of the interesting bytes against the word scans.
            for shift in 0..8 {
                let s = format!("{}{core}", "x".repeat(shift));
                out.clear();
                quote_into(&s, &mut out);
                let expected = reference_quote(&s);
                assert_eq!(out, expected, "round {round} shift {shift}: {s:?}");
                let mut pieces = String::new();
                quote_with(&s, |p| {
                    assert!(!p.is_empty());
                    pieces.push_str(p);
                });
                assert_eq!(pieces, expected);
                let mut bytes = b"[1,".to_vec();
                quote_into_buf(&s, &mut bytes);
                assert_eq!(&bytes[3..], expected.as_bytes(), "{s:?}");
                assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);

                // Decoding: serde_json's quoting uses only short escapes (and `\u00XX` for
                // the other control characters, which the fast path leaves to serde).
                let plain = serde_json::to_string(&s).unwrap();
                let slashed = plain.replace('/', "\\/");
                for literal in [&plain, &slashed] {
                    let frame = format!("[{literal},\"{core}tail\",{literal}]");
                    let fast = fast_string_array(&frame);
                    let has_u_escape = s
                        .chars()
                        .any(|c| c < ' ' && !"\u{8}\u{c}\n\r\t".contains(c));
                    if has_u_escape {
                        assert_eq!(fast, None, "{frame:?}");
                    } else {
                        let want = reference_unquote(literal);
                        assert_eq!(want, s);
                        if core.contains(['"', '\\']) || core.contains(|c: char| c < ' ') {
                            // The raw core is not a valid literal body.
                        } else {
                            assert_eq!(
                                fast.as_deref(),
                                Some(&[s.clone(), format!("{core}tail"), s.clone()][..]),
                                "{frame:?}"
                            );
                        }
                        let (one, next) = fast_string(literal, 1).unwrap();
                        assert_eq!(one, s);
                        assert_eq!(next, literal.len());
                    }
                    check_split(&frame);
                    check_unescape(literal, &s);
                    let expected = serde_json::from_str::<Vec<String>>(&frame).ok();
                    assert_eq!(decode_client_frame(&frame).ok(), expected, "{frame:?}");
                    let mut into = vec!["before".to_string()];
                    match decode_client_frame_into(&frame, &mut into) {
                        Ok(()) => assert_eq!(Some(&into[1..]), expected.as_deref()),
                        Err(_) => assert_eq!((into.len(), expected), (1, None)),
                    }
                }
                // A frame of our own quoting decodes back (via serde for `\u` escapes).
                check_unescape(&out, &s);
                check_split(&format!("[{out},{out}]"));
                let frame = format!("a[{out},{out}]");
                assert_eq!(
                    decode_server_frame(&frame).unwrap(),
                    ServerFrame::Messages(vec![s.clone(), s.clone()])
                );
            }
        }
    }

    #[test]
    fn fast_decoding_stops_at_truncation_at_every_offset() {
        let literal = serde_json::to_string("ab\"c\\d/é\u{2028}xxxxxxxxxxxxxxxx\"").unwrap();
        for cut in 0..literal.len() {
            if !literal.is_char_boundary(cut) {
                continue;
            }
            let frame = format!("[{}", &literal[..cut]);
            assert_eq!(fast_string_array(&frame), None, "{frame:?}");
            check_split(&frame);
            assert!(decode_client_frame(&frame).is_err(), "{frame:?}");
        }
    }

    /// [`split_messages`] takes what the fast decoder takes, with the same messages once
    /// unescaped, and leaves `out` as it was otherwise.
    fn check_split(frame: &str) {
        let mut out = vec![Escaped::new("before")];
        let split = split_messages(frame, &mut out);
        let fast = fast_string_array(frame);
        assert_eq!(split.is_some(), fast.is_some(), "{frame:?}");
        if split.is_some() {
            let plain: Vec<String> = out[1..].iter().map(|e| e.to_plain().unwrap()).collect();
            assert_eq!(Some(plain), fast, "{frame:?}");
        } else {
            assert_eq!(out.len(), 1, "{frame:?}");
        }
    }

    /// [`unescape_into`] of a literal's body gives `want`.
    fn check_unescape(literal: &str, want: &str) {
        let mut out = "x".to_string();
        unescape_into(&literal[1..literal.len() - 1], &mut out).unwrap();
        assert_eq!(&out[1..], want, "{literal:?}");
    }

    #[test]
    fn escaped_messages_are_quoted_bodies_and_unescape_back() {
        let long = format!("{}\"{}", "t".repeat(70), "\u{2028}".repeat(3));
        for text in [
            "",
            "x",
            "{\"a\":\"b\\\\c\"}",
            "\u{1}\n\t\u{ffff}é",
            long.as_str(),
        ] {
            let mut quoted = Vec::new();
            quote_into_buf(text, &mut quoted);
            let e = Escaped::new(text);
            assert_eq!(e.as_bytes(), &quoted[1..quoted.len() - 1], "{text:?}");
            assert_eq!(e.len(), quoted.len() - 2);
            assert_eq!(e.to_plain().as_deref(), Ok(text));
            // Appended to what a buffer holds already.
            let mut buf = b"ab".to_vec();
            escape_into_buf(text, &mut buf);
            assert_eq!(&buf[2..], e.as_bytes());
        }
        // Received and written forms of the same text are equal, byte for byte.
        let mut split = Vec::new();
        split_messages(r#"["{\"a\":[1,\"\\\\\"]}"]"#, &mut split).unwrap();
        assert_eq!(split, vec![Escaped::new(r#"{"a":[1,"\\"]}"#)]);
        assert_eq!(split[0].len(), split[0].as_str().len());
        assert!(Escaped::new("").is_empty());
        assert_eq!(format!("{:?}", Escaped::new("\"")), r#"Escaped("\\\"")"#);
    }
}
