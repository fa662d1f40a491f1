//! The per-request context that travels with a call: its deadline and its trace context
//! (W3C Trace Context, `traceparent`).
//!
//! On the wire both ride in optional keys of the request's options object, next to
//! `withArgs` (Go and kite.js ignore keys they do not know):
//!
//! * [`DEADLINE_FIELD`] (`"deadline"`): the caller's remaining budget in whole
//!   milliseconds (a non-negative integer);
//! * [`TRACEPARENT_FIELD`] (`"traceparent"`): `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
//!
//! Inside a process the server layers run the handler within a task-local [`Context`], so
//! calls made by the handler (awaited in the handler's future, not in spawned tasks)
//! inherit the remaining deadline and become children of the server span. Run any future
//! inside a context with [`Context::scope`].

use std::fmt;
use std::future::Future;

use tokio::time::Instant;

/// Envelope key carrying the remaining time budget in milliseconds.
pub const DEADLINE_FIELD: &str = "deadline";
/// Envelope key carrying the W3C `traceparent`.
pub const TRACEPARENT_FIELD: &str = "traceparent";

/// A W3C trace context: trace id, the id of the span that is the parent of the next hop,
/// and the sampled flag.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The 128-bit trace id (never 0).
    pub trace_id: u128,
    /// The 64-bit span id (never 0).
    pub span_id: u64,
    /// The `sampled` flag (bit 0 of the trace flags).
    pub sampled: bool,
}

fn nonzero_u64() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

impl TraceContext {
    /// A new trace (random ids, sampled).
    pub fn new_root() -> Self {
        let mut trace_id: u128 = 0;
        while trace_id == 0 {
            trace_id = rand::random();
        }
        TraceContext {
            trace_id,
            span_id: nonzero_u64(),
            sampled: true,
        }
    }

    /// A child span in the same trace (new span id).
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: nonzero_u64(),
            ..*self
        }
    }

    /// Parses a `traceparent` header value. Version `00` must have exactly four parts;
    /// higher versions may carry more (per the spec); version `ff`, all-zero ids, upper
    /// case or wrong lengths are rejected.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let hex = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2)
            || version == "ff"
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` value (version `00`).
    pub fn to_traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, self.trace_id, 32);
        out.push('-');
        push_hex(&mut out, u128::from(self.span_id), 16);
        out.push_str(if self.sampled { "-01" } else { "-00" });
        out
    }

    /// The trace id as 32 lowercase hex characters.
    pub fn trace_id_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        push_hex(&mut out, self.trace_id, 32);
        out
    }

    /// The span id as 16 lowercase hex characters.
    pub fn span_id_hex(&self) -> String {
        let mut out = String::with_capacity(16);
        push_hex(&mut out, u128::from(self.span_id), 16);
        out
    }
}

/// Appends the low `digits` hex digits of `v` (lowercase, zero-padded): what
/// `format!("{v:0digits$x}")` writes for a `v` that fits, without the formatting
/// machinery (a `traceparent` is written for every call).
fn push_hex(out: &mut String, v: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        let nibble = (v >> (4 * i)) & 0xf;
        out.push(char::from(HEX[nibble as usize]));
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_traceparent())
    }
}

/// What a handler's outgoing calls inherit: the deadline and the trace context of the
/// request being served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// When the request's budget runs out.
    pub deadline: Option<Instant>,
    /// The current span (outgoing calls become its children).
    pub trace: Option<TraceContext>,
}

tokio::task_local! {
    static CURRENT: Context;
}

impl Context {
    /// The context of the running task, if any.
    pub fn current() -> Option<Context> {
        CURRENT.try_with(|c| *c).ok()
    }

    /// Runs `fut` with `self` as the current context.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }

    /// Runs `fut` in the current context changed by `f` (a fresh one if none).
    pub async fn scope_with<F: Future>(f: impl FnOnce(&mut Context), fut: F) -> F::Output {
        let mut c = Context::current().unwrap_or_default();
        f(&mut c);
        c.scope(fut).await
    }
}

/// The deadline of the request being served by this task, if any.
pub fn current_deadline() -> Option<Instant> {
    Context::current().and_then(|c| c.deadline)
}

/// The trace context of the request being served by this task, if any.
pub fn current_trace() -> Option<TraceContext> {
    Context::current().and_then(|c| c.trace)
}

/// The earlier of two optional deadlines.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_roundtrip_and_rejects() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse(s).unwrap();
        assert_eq!(t.to_traceparent(), s);
        assert!(t.sampled);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.span_id, t.span_id);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-zz")
                .is_some()
        );
    }

    #[test]
    fn hex_matches_the_formatter() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for i in 0..2000 {
            let mut trace_id = (u128::from(next()) << 64) | u128::from(next());
            let mut span_id = next();
            // Small ids too (leading zeros).
            if i % 3 == 0 {
                trace_id >>= i % 128;
                span_id >>= i % 64;
            }
            let t = TraceContext {
                trace_id: trace_id.max(1),
                span_id: span_id.max(1),
                sampled: i % 2 == 0,
            };
            let expected = format!(
                "00-{:032x}-{:016x}-{:02x}",
                t.trace_id,
                t.span_id,
                u8::from(t.sampled)
            );
            assert_eq!(t.to_traceparent(), expected);
            assert_eq!(TraceContext::parse(&expected), Some(t));
            assert_eq!(t.trace_id_hex(), format!("{:032x}", t.trace_id));
            assert_eq!(t.span_id_hex(), format!("{:016x}", t.span_id));
        }
    }

    #[tokio::test]
    async fn scope_nests() {
        assert!(Context::current().is_none());
        let t = TraceContext::new_root();
        let got = Context::scope_with(
            |c| c.trace = Some(t),
            Context::scope_with(|c| c.deadline = Some(Instant::now()), async {
                Context::current().unwrap()
            }),
        )
        .await;
        assert_eq!(got.trace, Some(t));
        assert!(got.deadline.is_some());
    }
}
