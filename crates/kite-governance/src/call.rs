//! [`Call`]: an outgoing call as a value, and [`KiteService`]: the tower service that sends
//! calls over a kite [`Client`](kite::Client) or [`Connection`](kite::Connection).

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use kite::{EnvelopeFields, KiteError};
use serde_json::Value;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::Service;

use crate::context::{TraceContext, DEADLINE_FIELD, TRACEPARENT_FIELD};
use crate::tuple::FiveTuple;

/// A boxed future of a call's outcome.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<Value, KiteError>> + Send>>;

/// Any stack of call layers, boxed: `Service<Call, Response = Value, Error = KiteError>`.
pub type CallService = BoxCloneSyncService<Call, Value, KiteError>;

/// One outgoing call: what to call (the [`FiveTuple`], whose `method` is the method
/// name), with which arguments, until when, and the context that travels with it.
#[derive(Clone, Debug)]
pub struct Call {
    /// Who calls what: (from, from cluster, to, to cluster, method).
    pub tuple: FiveTuple,
    /// The arguments, as for `Client::tell`: an array is the argument list, `null` is no
    /// argument, any other value the single argument.
    pub args: Value,
    /// When the caller stops waiting. The remaining budget is sent downstream in the
    /// `deadline` envelope field.
    pub deadline: Option<Instant>,
    /// The key of consistent hashing ([`Call::with_key`]).
    pub key: Option<u64>,
    /// The trace context sent downstream as `traceparent` (the client span).
    pub trace: Option<TraceContext>,
    /// More envelope fields to send (next to `withArgs`).
    pub fields: Option<Box<EnvelopeFields>>,
    /// Instances already tried by earlier attempts of this call (shared by its clones,
    /// set up by the retry layer): balancers prefer others.
    pub(crate) visited: Option<Visited>,
}

/// Instances attempted by a call and its retries.
pub(crate) type Visited = std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<str>>>>;

impl Call {
    /// A call described by `tuple` with `args`.
    pub fn new(tuple: FiveTuple, args: Value) -> Call {
        Call {
            tuple,
            args,
            deadline: None,
            key: None,
            trace: None,
            fields: None,
            visited: None,
        }
    }

    /// The method name.
    pub fn method(&self) -> &str {
        &self.tuple.method
    }

    /// Sets the deadline.
    pub fn with_deadline(mut self, deadline: Instant) -> Call {
        self.deadline = Some(deadline);
        self
    }

    /// Sets the deadline `timeout` from now.
    pub fn with_timeout(self, timeout: Duration) -> Call {
        self.with_deadline(Instant::now() + timeout)
    }

    /// Sets the consistent-hashing key: calls with equal keys go to the same instance while
    /// it is available.
    pub fn with_key<K: Hash + ?Sized>(mut self, key: &K) -> Call {
        self.key = Some(hash_key(key));
        self
    }

    /// Adds an envelope field sent next to `withArgs`.
    pub fn with_field(mut self, key: impl Into<String>, value: Value) -> Call {
        self.fields
            .get_or_insert_with(Default::default)
            .insert(key.into(), value);
        self
    }

    /// Time left until the deadline (`None`: no deadline; zero: passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// 64-bit FNV-1a, stable across processes and Rust versions.
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        // A final avalanche (murmur3 fmix64) spreads short keys over the ring.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The consistent-hashing hash of a key.
pub fn hash_key<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut h = Fnv64::default();
    key.hash(&mut h);
    h.finish()
}

#[derive(Clone)]
enum Target {
    Client(kite::Client),
    Connection(kite::Connection),
}

/// The bottom of a client stack: sends [`Call`]s with a kite client or connection.
///
/// The call's deadline becomes the kite call timeout and the `deadline` envelope field
/// (remaining milliseconds); its trace context the `traceparent` field. A call whose
/// deadline already passed fails with `timeout` without being sent. Without a deadline
/// the default timeout applies (60 s, as [`kite::Limits::call_timeout`]).
#[derive(Clone)]
pub struct KiteService {
    target: Target,
    default_timeout: Option<Duration>,
}

impl std::fmt::Debug for KiteService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Client(c) => f.debug_tuple("KiteService").field(c).finish(),
            Target::Connection(c) => f.debug_tuple("KiteService").field(c).finish(),
        }
    }
}

/// Default timeout of calls without a deadline.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl KiteService {
    /// Sends calls with `client` (which must be dialed; calls while it is not connected
    /// fail with `sendError`).
    pub fn client(client: kite::Client) -> Self {
        KiteService {
            target: Target::Client(client),
            default_timeout: Some(DEFAULT_CALL_TIMEOUT),
        }
    }

    /// Sends calls on `connection` (e.g. the caller's connection inside a handler).
    pub fn connection(connection: kite::Connection) -> Self {
        KiteService {
            target: Target::Connection(connection),
            default_timeout: Some(DEFAULT_CALL_TIMEOUT),
        }
    }

    /// Sets the timeout of calls without a deadline (`None`: wait forever).
    pub fn with_default_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Whether calls can be sent now.
    pub fn is_connected(&self) -> bool {
        match &self.target {
            Target::Client(c) => c.is_connected(),
            Target::Connection(c) => !c.is_closed(),
        }
    }
}

/// The envelope fields of a call: `deadline`, `traceparent` and the call's own.
pub(crate) fn envelope_fields(call: &mut Call, remaining: Option<Duration>) -> EnvelopeFields {
    let mut fields = call.fields.take().map(|b| *b).unwrap_or_default();
    if let Some(r) = remaining {
        let ms = u64::try_from(r.as_millis()).unwrap_or(u64::MAX);
        fields.insert(DEADLINE_FIELD.into(), Value::from(ms));
    }
    if let Some(t) = &call.trace {
        fields.insert(TRACEPARENT_FIELD.into(), Value::String(t.to_traceparent()));
    }
    fields
}

impl Service<Call> for KiteService {
    type Response = Value;
    type Error = KiteError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), KiteError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        let target = self.target.clone();
        let default_timeout = self.default_timeout;
        Box::pin(async move {
            let remaining = call.remaining();
            let timeout = match remaining {
                Some(r) if r < Duration::from_millis(1) => {
                    return Err(KiteError::timeout(call.method(), Duration::ZERO));
                }
                Some(r) => Some(r),
                None => default_timeout,
            };
            let fields = envelope_fields(&mut call, remaining);
            let r = match &target {
                Target::Client(c) => {
                    c.tell_with_fields(call.method(), &call.args, fields, timeout)
                        .await
                }
                Target::Connection(c) => {
                    c.tell_with_fields(call.method(), &call.args, fields, timeout)
                        .await
                }
            };
            r.map(kite::Response::into_value)
        })
    }
}
