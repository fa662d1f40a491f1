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

/// [`FrameBuf`] over a [`BytesMut`].
struct Buf<'a>(&'a mut BytesMut);

impl FrameBuf for Buf<'_> {
    #[inline]
    fn len(&self) -> usize {
        self.0.len()
    }
    #[inline]
    fn resize(&mut self, len: usize) {
        self.0.resize(len, 0)
    }
    #[inline]
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.0
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
            Outbound::Close { .. } => 0,
        })
        .sum();
    buf.clear();
    buf.reserve((total + total / 4).min(max_bytes.saturating_add(64)) + prefix.len() + 16);
    for item in batch.drain(..) {
        match item {
            Outbound::Message(message) => {
                if open && buf.len() + message.len() + 3 > max_bytes {
                    finish(buf, frames);
                    open = false;
                }
                if open {
                    buf.extend_from_slice(b",");
                } else {
                    buf.extend_from_slice(prefix);
                    buf.extend_from_slice(b"[");
                    open = true;
                }
                quote_into_buf(&message, &mut Buf(buf));
            }
            Outbound::Close { code, reason } => {
                close = Some((code, reason));
                break;
            }
        }
    }
    if open {
        finish(buf, frames);
    }
    if buf.capacity() > KEEP_BYTES {
        *buf = BytesMut::new();
    }
    close
}

fn finish(buf: &mut BytesMut, frames: &mut Vec<Utf8Bytes>) {
    buf.extend_from_slice(b"]");
    // Always valid: only `&str` messages and ASCII were written.
    match Utf8Bytes::try_from(buf.split().freeze()) {
        Ok(frame) => frames.push(frame),
        Err(e) => tracing::error!(error = %e, "sockjs: encoded a frame that is not UTF-8"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
