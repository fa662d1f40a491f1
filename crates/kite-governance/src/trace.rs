//! Distributed tracing: a `tracing` span for each side of every call, linked across
//! processes by the W3C `traceparent` envelope field.
//!
//! * Client spans are named `kite.client`, server spans `kite.server`. Both carry the
//!   five-tuple (`from`, `from_cluster`, `to`, `to_cluster`, `method`), `trace_id`,
//!   `span_id`, `parent_span_id` (empty for a root), `otel.kind` (`client`/`server`),
//!   and on failure `error.type` and `otel.status_code` (`error`). Server spans also
//!   carry the kite `request_id`, so log lines written inside a handler correlate with
//!   the span; failed client spans record the request id the server returned.
//! * A client span is a child of the request the task is serving (its [`Context`]), or
//!   of [`Call::trace`] when set, else a new root.
//! * A server span is a child of the caller's `traceparent`, or a new root; the handler
//!   runs inside it and with its trace as [`Context`], so downstream calls continue the
//!   trace.
//!
//! With the `otel` cargo feature and a `tracing-opentelemetry` layer installed, each span's
//! OpenTelemetry parent is set from the trace context, and the ids OpenTelemetry assigns
//! are the ones recorded and sent downstream, so exported traces join across processes.
//! `otlp::OtlpTracing` (same feature) provides that layer with an OTLP/HTTP exporter.

use std::task::{Context as TaskContext, Poll};

use kite::{KiteError, Request};
use serde_json::Value;
use tower::{Layer, Service};
use tracing::{field, Instrument};

use crate::call::{Call, CallFuture};
use crate::context::{Context, TraceContext, TRACEPARENT_FIELD};
use crate::metrics::HandlerFuture;
use crate::server::Callers;

/// The span's trace context (a child of `parent`, or a new root) recorded on it.
fn link(span: &tracing::Span, parent: Option<TraceContext>) -> TraceContext {
    let ctx = otel::link(span, parent)
        .unwrap_or_else(|| parent.map_or_else(TraceContext::new_root, |p| p.child()));
    // The ids are formatted only for a span some subscriber records.
    if !span.is_disabled() {
        span.record("trace_id", ctx.trace_id_hex());
        span.record("span_id", ctx.span_id_hex());
        span.record(
            "parent_span_id",
            parent.map(|p| p.span_id_hex()).unwrap_or_default(),
        );
    }
    ctx
}

#[cfg(not(feature = "otel"))]
mod otel {
    use super::TraceContext;

    pub(super) fn link(
        _span: &tracing::Span,
        _parent: Option<TraceContext>,
    ) -> Option<TraceContext> {
        None
    }
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceContext;

    /// Sets the OpenTelemetry parent of `span` and returns the ids OpenTelemetry gave it
    /// (`None` without an OpenTelemetry layer).
    pub(super) fn link(span: &tracing::Span, parent: Option<TraceContext>) -> Option<TraceContext> {
        if let Some(p) = parent {
            let flags = if p.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            let remote = SpanContext::new(
                TraceId::from_bytes(p.trace_id.to_be_bytes()),
                SpanId::from_bytes(p.span_id.to_be_bytes()),
                flags,
                true,
                TraceState::default(),
            );
            let cx = opentelemetry::Context::new().with_remote_span_context(remote);
            if span.set_parent(cx).is_err() {
                return None;
            }
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        Some(TraceContext {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            sampled: sc.is_sampled(),
        })
    }
}

/// Client layer: a `kite.client` span per call; sets [`Call::trace`].
#[derive(Clone, Debug, Default)]
pub struct ClientTraceLayer;

impl ClientTraceLayer {
    /// The layer.
    pub fn new() -> Self {
        ClientTraceLayer
    }
}

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTrace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientTrace { inner }
    }
}

/// Service of [`ClientTraceLayer`].
#[derive(Clone, Debug)]
pub struct ClientTrace<S> {
    inner: S,
}

impl<S> Service<Call> for ClientTrace<S>
where
    S: Service<Call, Response = Value, Error = KiteError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Value;
    type Error = KiteError;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), KiteError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        let parent = call.trace.or_else(crate::context::current_trace);
        let t = &call.tuple;
        let span = tracing::info_span!(
            "kite.client",
            otel.kind = "client",
            from = %t.from,
            from_cluster = %t.from_cluster,
            to = %t.to,
            to_cluster = %t.to_cluster,
            method = %t.method,
            trace_id = field::Empty,
            span_id = field::Empty,
            parent_span_id = field::Empty,
            error.type = field::Empty,
            otel.status_code = field::Empty,
            request_id = field::Empty,
        );
        let ctx = link(&span, parent);
        call.trace = Some(ctx);
        let fut = self.inner.call(call);
        let s = span.clone();
        Box::pin(
            async move {
                let r = fut.await;
                if let Err(e) = &r {
                    s.record("error.type", e.kind.as_str());
                    s.record("otel.status_code", "error");
                    if !e.id.is_empty() {
                        s.record("request_id", e.id.as_str());
                    }
                    tracing::debug!(error = %e, "call failed");
                }
                r
            }
            .instrument(span),
        )
    }
}

/// Server layer (for [`kite::Kite::layer`]): a `kite.server` span per request, child of
/// the caller's `traceparent`.
#[derive(Clone, Debug)]
pub struct ServerTraceLayer {
    callers: Callers,
}

impl ServerTraceLayer {
    /// Spans labelled with five-tuples from `callers`.
    pub fn new(callers: &Callers) -> Self {
        ServerTraceLayer {
            callers: callers.clone(),
        }
    }
}

impl<S> Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace {
            inner,
            callers: self.callers.clone(),
        }
    }
}

/// Service of [`ServerTraceLayer`].
#[derive(Clone, Debug)]
pub struct ServerTrace<S> {
    inner: S,
    callers: Callers,
}

/// The trace context a request carries (`traceparent`), if valid.
pub fn request_trace(req: &Request) -> Option<TraceContext> {
    req.envelope_field(TRACEPARENT_FIELD)
        .and_then(Value::as_str)
        .and_then(TraceContext::parse)
}

impl<S> Service<Request> for ServerTrace<S>
where
    S: Service<Request, Response = Value, Error = KiteError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Value;
    type Error = KiteError;
    type Future = HandlerFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), KiteError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let parent = request_trace(&req);
        let t = self.callers.tuple(&req);
        let span = tracing::info_span!(
            "kite.server",
            otel.kind = "server",
            from = %t.from,
            from_cluster = %t.from_cluster,
            to = %t.to,
            to_cluster = %t.to_cluster,
            method = %t.method,
            request_id = req.id(),
            trace_id = field::Empty,
            span_id = field::Empty,
            parent_span_id = field::Empty,
            error.type = field::Empty,
            otel.status_code = field::Empty,
        );
        let ctx = link(&span, parent);
        let fut = self.inner.call(req);
        let s = span.clone();
        Box::pin(
            Context::scope_with(move |c| c.trace = Some(ctx), async move {
                let r = fut.await;
                if let Err(e) = &r {
                    s.record("error.type", e.kind.as_str());
                    s.record("otel.status_code", "error");
                }
                r
            })
            .instrument(span),
        )
    }
}
