//! Outgoing SockJS frames assembled in one reused byte buffer.
//!
//! A batch of queued messages becomes a frame `<prefix>["m1","m2",...]` written straight
//! into a [`BytesMut`] and split off as [`Utf8Bytes`], which tungstenite takes without
//! another copy. Once the written frame has been dropped, the next frame reuses the same
//! allocation, so a busy connection encodes without allocating.

use bytes::BytesMut;
use kite_protocol::sockjs::{quote_into_buf, FrameBuf};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::session::Outbound;

/// [`FrameBuf`] over a [`BytesMut`], writing a frame in place: the first `len` bytes hold
/// the frame, the rest up to `buf.len()` were made writable by an earlier message (zeroed
/// once per frame rather than per message) and are cut off when the frame is taken.
struct Buf<'a> {
    buf: &'a mut BytesMut,
    len: usize,
}

impl<'a> Buf<'a> {
    fn new(buf: &'a mut BytesMut) -> Self {
        let len = buf.len();
        Buf { buf, len }
    }

    fn put(&mut self, bytes: &[u8]) {
        let at = self.len;
        if at == self.buf.len() {
            // At the end of the buffer: appended, without zero-filling first.
            self.buf.extend_from_slice(bytes);
            self.len = self.buf.len();
            return;
        }
        FrameBuf::resize(self, at + bytes.len());
        self.buf[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Starts the next message of about `len` bytes: after a comma in the open frame, or
    /// in a new frame (the open one finished first if it would grow past `max_bytes`).
    /// Returns that a frame is open.
    fn next_message(
        &mut self,
        mut open: bool,
        len: usize,
        prefix: &[u8],
        max_bytes: usize,
        frames: &mut Vec<Utf8Bytes>,
    ) -> bool {
        if open && self.len + len + 3 > max_bytes {
            self.finish(frames);
            open = false;
        }
        if open {
            self.put(b",");
        } else {
            self.put(prefix);
            self.put(b"[");
        }
        true
    }

    /// Takes the frame written so far (plus `]`) out of the buffer into `frames`.
    fn finish(&mut self, frames: &mut Vec<Utf8Bytes>) {
        self.put(b"]");
        self.buf.truncate(self.len);
        self.len = 0;
        // Always valid: only `&str` messages and ASCII were written.
        match Utf8Bytes::try_from(self.buf.split().freeze()) {
            Ok(frame) => frames.push(frame),
            Err(e) => tracing::error!(error = %e, "sockjs: encoded a frame that is not UTF-8"),
        }
    }
}

impl FrameBuf for Buf<'_> {
    #[inline]
    fn len(&self) -> usize {
        self.len
    }
    #[inline]
    fn resize(&mut self, len: usize) {
        if len > self.buf.len() {
            self.buf.resize(len, 0);
        }
        self.len = len;
    }
    #[inline]
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

/// A buffer holding more than this after a frame is given back rather than kept.
const KEEP_BYTES: usize = 256 << 10;

/// Encodes the messages of `batch` (draining it) into frames `<prefix>["m1","m2"]` appended
/// to `frames`, a new frame started once one has grown past `max_bytes` (one larger
/// message still goes alone). Stops at the first close request and returns it; items
/// queued after it are dropped.
pub(crate) fn encode_frames(
    batch: &mut Vec<Outbound>,
    prefix: &[u8],
    buf: &mut BytesMut,
    frames: &mut Vec<Utf8Bytes>,
    max_bytes: usize,
) -> Option<(u32, String)> {
    let mut close = None;
    let mut open = false;
    let total: usize = batch
        .iter()
        .map(|o| match o {
            Outbound::Message(m) => m.len() + 3,
            Outbound::Escaped(m) => m.len() + 3,
            Outbound::Close { .. } => 0,
        })
        .sum();
    buf.clear();
    buf.reserve((total + total / 4).min(max_bytes.saturating_add(64)) + prefix.len() + 16);
    let mut w = Buf::new(buf);
    for item in batch.drain(..) {
        match item {
            Outbound::Message(message) => {
                open = w.next_message(open, message.len(), prefix, max_bytes, frames);
                quote_into_buf(&message, &mut w);
            }
            Outbound::Escaped(message) => {
                open = w.next_message(open, message.len(), prefix, max_bytes, frames);
                w.put(b"\"");
                w.put(message.as_bytes());
                w.put(b"\"");
            }
            Outbound::Close { code, reason } => {
                close = Some((code, reason));
                break;
            }
        }
    }
    if open {
        w.finish(frames);
    }
    if buf.capacity() > KEEP_BYTES {
        *buf = BytesMut::new();
    }
    close
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Escaped;

    #[test]
    fn frames_split_by_size_stop_at_close_and_reuse_the_buffer() {
        let mut batch = vec![
            Outbound::Message("a".repeat(10)),
            Outbound::Message("b\"\u{2028}".to_string()),
            Outbound::Message("c".repeat(30)),
            Outbound::Close {
                code: 3000,
                reason: "x".into(),
            },
            Outbound::Message("lost".into()),
        ];
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let close = encode_frames(&mut batch, b"", &mut buf, &mut frames, 24);
        assert_eq!(close, Some((3000, "x".to_string())));
        assert_eq!(
            frames,
            vec![
                format!("[\"{}\",\"b\\\"\\u2028\"]", "a".repeat(10)),
                format!("[\"{}\"]", "c".repeat(30)),
            ]
        );
        assert!(batch.is_empty());

        frames.clear();
        let mut batch = vec![Outbound::Message("x".into()), Outbound::Message("y".into())];
        assert_eq!(
            encode_frames(&mut batch, b"a", &mut buf, &mut frames, 1 << 20),
            None
        );
        assert_eq!(frames, vec![r#"a["x","y"]"#.to_string()]);
        // The frame is gone: the next one is written into the same allocation.
        let first = frames[0].as_str().as_ptr() as usize;
        frames.clear();
        let mut batch = vec![Outbound::Message("z".into())];
        encode_frames(&mut batch, b"a", &mut buf, &mut frames, 1 << 20);
        assert_eq!(frames, vec![r#"a["z"]"#.to_string()]);
        let next = frames[0].as_str().as_ptr() as usize;
        assert!((first..first + 64).contains(&next), "{first:#x} {next:#x}");
    }

    #[test]
    fn escaped_messages_make_the_same_frames_as_plain_ones() {
        let texts = ["{\"m\":\"x\\y\"}", "a\u{2028}\n", "", &"z".repeat(40)];
        let plain = || {
            texts
                .iter()
                .map(|t| Outbound::Message(t.to_string()))
                .collect()
        };
        // Escaped, and mixed with plain ones.
        let escaped = || {
            texts
                .iter()
                .map(|t| Outbound::Escaped(Escaped::new(t)))
                .collect()
        };
        let mixed = || {
            let e: Vec<Outbound> = escaped();
            let p: Vec<Outbound> = plain();
            e.into_iter()
                .zip(p)
                .enumerate()
                .map(|(i, (e, p))| if i % 2 == 0 { e } else { p })
                .collect()
        };
        for max_bytes in [1 << 20, 30] {
            let encode = |mut batch: Vec<Outbound>| {
                let (mut buf, mut frames) = (BytesMut::new(), Vec::new());
                encode_frames(&mut batch, b"a", &mut buf, &mut frames, max_bytes);
                frames
            };
            let messages = |frames: Vec<Utf8Bytes>| -> Vec<String> {
                frames
                    .iter()
                    .flat_map(
                        |f| match kite_protocol::sockjs::decode_server_frame(f.as_str()) {
                            Ok(kite_protocol::sockjs::ServerFrame::Messages(m)) => m,
                            other => panic!("{other:?}"),
                        },
                    )
                    .collect()
            };
            let expected = encode(plain());
            if max_bytes > 1000 {
                // One frame: byte for byte the same.
                assert_eq!(encode(escaped()), expected);
                assert_eq!(encode(mixed()), expected);
            }
            // Split by size (an escaped message counts its escaped length): the same
            // messages in the same order.
            assert_eq!(messages(encode(escaped())), texts);
            assert_eq!(messages(encode(mixed())), texts);
            assert_eq!(messages(expected), texts);
        }
    }
}
