//! An adaptive read buffer under the WebSocket codec.
//!
//! tungstenite reads the socket in pieces of at most its configured read buffer
//! (`ServerConfig::websocket_read_buffer`, 512 B by default on the server, the same on the
//! client; allocated per connection for its whole life), and zero-fills that piece of its
//! buffer before every read. A small read buffer keeps idle connections small and the
//! zero-filling cheap, but costs one `recvfrom` per 512 B when a peer sends a batch (a
//! 24 KB batch of 64 requests took ~48 reads). [`AdaptiveRead`] sits between the codec
//! and the socket:
//!
//! * while reads are small, they go straight into the codec's buffer (no buffer of ours,
//!   no copy);
//! * when a read fills the codec's whole request, more is probably waiting: the next reads
//!   go through a buffer of ours, [`FIRST_BUFFER`] bytes, doubled each time a read fills it,
//!   up to the configured maximum (`ServerConfig::websocket_read_buffer_max`). The socket
//!   reads into its spare capacity, which is never zero-filled, and its allocation is kept
//!   while reads stay buffered (it only grows), so a burst costs no allocation or memset;
//! * a read that fills less than a quarter of it halves the next read's size; below
//!   [`FIRST_BUFFER`] the buffer is freed and reads go direct again.
//!   [`AdaptiveRead::release_idle`] frees it at once (the server calls it on its heartbeat,
//!   so idle connections hold no buffer of ours). The client's codec sits behind a split
//!   stream it can't reach, so it asks through a [`ReleaseRequest`] on each server
//!   heartbeat instead: the buffer is freed at the start of the next read, that is before
//!   the connection waits for more data.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of our buffer when reads start filling the codec's requests.
pub(crate) const FIRST_BUFFER: usize = 16 * 1024;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct AdaptiveRead<S> {
    inner: S,
    /// Our buffer: its contents are the unread data; its capacity is kept while reads are
    /// buffered (none while reads go direct).
    buf: BytesMut,
    /// Size of the next buffered read; 0 = read directly into the caller's buffer.
    size: usize,
    max: usize,
    /// Set by the [`ReleaseRequest`]s handed out: [`AdaptiveRead::release_idle`] at the
    /// next read. `None` until one is asked for.
    release: Option<Arc<AtomicBool>>,
}

/// Asks an [`AdaptiveRead`] that its owner can't reach directly (it is inside a split
/// WebSocket stream) to [`release_idle`](AdaptiveRead::release_idle) at its next read.
#[derive(Debug, Clone)]
pub(crate) struct ReleaseRequest(Arc<AtomicBool>);

impl ReleaseRequest {
    /// The buffer is released (if it holds no unread data) when the next read starts.
    pub(crate) fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl<S> AdaptiveRead<S> {
    /// Wraps `inner`; buffered reads grow up to `max` bytes (no buffering if `max` is
    /// below [`FIRST_BUFFER`]).
    pub(crate) fn new(inner: S, max: usize) -> Self {
        AdaptiveRead {
            inner,
            buf: BytesMut::new(),
            size: 0,
            max,
            release: None,
        }
    }

    /// A handle that makes the next read [`release_idle`](Self::release_idle) first.
    pub(crate) fn release_request(&mut self) -> ReleaseRequest {
        ReleaseRequest(self.release.get_or_insert_with(Default::default).clone())
    }

    /// Frees our buffer if it holds no unread data, and reads go direct again.
    pub(crate) fn release_idle(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            tracing::trace!(
                bytes = self.buf.capacity(),
                "sockjs: released the read buffer of an idle WebSocket"
            );
            self.buf = BytesMut::new();
            self.size = 0;
        }
    }

    /// Bytes our buffer currently holds allocated (for tests).
    #[cfg(test)]
    fn buffer_len(&self) -> usize {
        self.buf.capacity()
    }

    fn copy_out(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.buf.len());
        out.put_slice(&self.buf[..n]);
        self.buf.advance(n);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AdaptiveRead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this
            .release
            .as_ref()
            .is_some_and(|r| r.load(Ordering::Relaxed) && r.swap(false, Ordering::Relaxed))
        {
            this.release_idle();
        }
        if !this.buf.is_empty() {
            this.copy_out(out);
            return Poll::Ready(Ok(()));
        }
        let wanted = out.remaining();
        if this.size == 0 || this.size <= wanted {
            // Direct: into the caller's buffer.
            let before = out.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
            let got = out.filled().len() - before;
            if got == wanted && wanted > 0 && this.size == 0 && this.max >= FIRST_BUFFER {
                this.size = FIRST_BUFFER;
            }
            return Poll::Ready(Ok(()));
        }
        // Buffered: our buffer is empty here. `try_reclaim` takes back the space of the data
        // already handed out (nothing to copy: none is left); a larger size gets a fresh
        // allocation rather than a reallocation that would copy the old one.
        let size = this.size;
        if this.buf.capacity() < size && !this.buf.try_reclaim(size) {
            this.buf = BytesMut::with_capacity(size);
        }
        let got = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut this.inner),
            cx,
            &mut (&mut this.buf).limit(size),
        ))?;
        if got == size {
            this.size = (size * 2).min(this.max).max(size);
        } else if got < size / 4 {
            this.size /= 2;
            if this.size < FIRST_BUFFER {
                this.size = 0;
            }
        }
        if got > 0 {
            this.copy_out(out);
        }
        if this.buf.is_empty() && this.size == 0 {
            this.buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AdaptiveRead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the reads that reach the inner stream.
    struct Counting<S> {
        inner: S,
        reads: usize,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let r = Pin::new(&mut self.inner).poll_read(cx, out);
            if r.is_ready() {
                self.reads += 1;
            }
            r
        }
    }

    #[tokio::test]
    async fn grows_for_bulk_and_releases_when_idle() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let mut r = AdaptiveRead::new(
            Counting {
                inner: ours,
                reads: 0,
            },
            64 * 1024,
        );
        // Small messages: direct reads, no buffer of ours.
        peer.write_all(b"hello").await.unwrap();
        let mut small = [0u8; 512];
        let n = r.read(&mut small).await.unwrap();
        assert_eq!(&small[..n], b"hello");
        assert_eq!(r.buffer_len(), 0);

        // A 200 KB burst read by a codec asking 512 B at a time.
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        while got.len() < data.len() {
            let n = r.read(&mut small).await.unwrap();
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        let reads = r.inner.reads - 1;
        // 512 B reads would take 391; direct, 16 K, 32 K, then 64 K each.
        assert!(reads <= 8, "{reads} reads of the socket for 200 KB");
        assert!(r.buffer_len() <= 64 * 1024);

        r.release_idle();
        assert_eq!(r.buffer_len(), 0);
        peer.write_all(b"again").await.unwrap();
        let n = r.read(&mut small).await.unwrap();
        assert_eq!(&small[..n], b"again");
        assert_eq!(r.buffer_len(), 0);
        drop(peer);
        assert_eq!(r.read(&mut small).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_release_request_frees_the_buffer_at_the_next_read() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let mut r = AdaptiveRead::new(ours, 64 * 1024);
        let release = r.release_request();
        let mut small = [0u8; 512];
        // A request while nothing is buffered changes nothing.
        release.request();
        peer.write_all(b"first").await.unwrap();
        assert_eq!(r.read(&mut small).await.unwrap(), 5);
        assert_eq!(r.buffer_len(), 0);

        peer.write_all(&[7u8; 100_000]).await.unwrap();
        let mut total = 0;
        while total < 100_000 {
            total += r.read(&mut small).await.unwrap();
        }
        assert!(r.buffer_len() > 0);
        // One small read (a heartbeat) only halves the next read's size: the buffer stays.
        peer.write_all(b"h").await.unwrap();
        assert_eq!(r.read(&mut small).await.unwrap(), 1);
        assert!(r.buffer_len() > 0);
        // Asked for (after that heartbeat): freed before the next read waits for data.
        release.request();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = ReadBuf::new(&mut small);
        assert!(Pin::new(&mut r).poll_read(&mut cx, &mut out).is_pending());
        assert_eq!(r.buffer_len(), 0);
        // Reads go direct again; the request was used up.
        peer.write_all(b"after").await.unwrap();
        assert_eq!(r.read(&mut small).await.unwrap(), 5);
        assert_eq!(r.buffer_len(), 0);

        // Data still unread is never dropped: the request then frees nothing.
        peer.write_all(&[8u8; 100_000]).await.unwrap();
        let mut total = 0;
        while total < 50_000 {
            total += r.read(&mut small).await.unwrap();
        }
        release.request();
        while total < 100_000 {
            let n = r.read(&mut small).await.unwrap();
            assert!(small[..n].iter().all(|b| *b == 8));
            total += n;
        }
        assert_eq!(total, 100_000);
    }

    #[tokio::test]
    async fn shrinks_back_to_direct_reads() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let mut r = AdaptiveRead::new(ours, 64 * 1024);
        let mut small = [0u8; 512];
        peer.write_all(&[7u8; 100_000]).await.unwrap();
        let mut total = 0;
        while total < 100_000 {
            total += r.read(&mut small).await.unwrap();
        }
        // Then small messages only: the buffer halves with each small read, then goes.
        for _ in 0..8 {
            peer.write_all(b"x").await.unwrap();
            assert_eq!(r.read(&mut small).await.unwrap(), 1);
        }
        assert_eq!(r.buffer_len(), 0);
    }
}
