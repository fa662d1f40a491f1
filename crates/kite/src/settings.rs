//! Runtime limits and timeouts (everything a peer could otherwise use to stall us or to
//! make us hold unbounded memory). See crates/kite/README.md for the table.

use std::time::Duration;

/// Bounds and timeouts of the runtime. Every field has a documented default
/// ([`Limits::default`]).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most requests handled concurrently on one connection (default 64). When reached, the
    /// connection stops reading from its session until a handler finishes (backpressure:
    /// the peer's messages wait in the bounded transport queues).
    pub max_concurrent_handlers: usize,
    /// Most local functions remembered per connection for the peer to call (default
    /// 4096). Beyond it the oldest function is forgotten (the peer's later invocations of
    /// it are dropped with a debug log). Response callbacks do not count here.
    pub max_callbacks: usize,
    /// Most calls waiting for a response on one connection (default 4096); further calls
    /// fail at once with `sendError`.
    pub max_pending_calls: usize,
    /// Default timeout of `tell`/`go` (default 60 s; `None` waits forever as Go's `Tell`
    /// does). On expiry the call fails with `timeout` and its response callback is freed.
    pub call_timeout: Option<Duration>,
    /// Timeout of `dial()` (default 15 s, the Go handshake timeout).
    pub dial_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight handlers (default 10 s).
    pub shutdown_timeout: Duration,
    /// Most HTTP connections served at once (default 10 000); at the bound the listener
    /// stops accepting until one ends.
    pub max_http_connections: usize,
    /// Capacity of each session's outgoing and incoming queues, in messages (default 128).
    pub session_queue: usize,
    /// Cap of the `dial_forever` back-off (default 60 s, as Go).
    pub max_backoff: Duration,
    /// Bounds applied when decoding each incoming dnode message (size 16 MiB, 4096
    /// callbacks, path length 128, links; see `kite_protocol::dnode::Limits`).
    pub protocol: kite_protocol::dnode::Limits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_handlers: 64,
            max_callbacks: 4096,
            max_pending_calls: 4096,
            call_timeout: Some(Duration::from_secs(60)),
            dial_timeout: Duration::from_secs(15),
            shutdown_timeout: Duration::from_secs(10),
            session_queue: 128,
            max_http_connections: 10_000,
            max_backoff: Duration::from_secs(60),
            protocol: kite_protocol::dnode::Limits::default(),
        }
    }
}
