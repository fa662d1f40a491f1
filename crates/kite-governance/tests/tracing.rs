//! Spans collected in-process by a `tracing` subscriber layer: the client and server
//! spans of a chain of calls carry the five-tuple and share one trace id (linked through
//! the `traceparent` envelope field); log lines inside a handler sit in the server span,
//! whose `request_id` is the id a failed call reports.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::*;
use kite::{KiteError, Request};
use kite_governance::{ClientConfig, GovernedClient, ServerConfig, ServerGovernance};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Clone, Debug, Default)]
struct SpanRec {
    name: String,
    fields: HashMap<String, String>,
}

#[derive(Clone, Debug)]
struct EventRec {
    message: String,
    span: Option<usize>,
}

#[derive(Default)]
struct Store {
    spans: Vec<SpanRec>,
    events: Vec<EventRec>,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Store>>);

struct Index(usize);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Collector {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut rec = SpanRec {
            name: attrs.metadata().name().to_string(),
            ..Default::default()
        };
        attrs.record(&mut Fields(&mut rec.fields));
        let mut store = self.0.lock().unwrap();
        store.spans.push(rec);
        let i = store.spans.len() - 1;
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Index(i));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(i) = span.extensions().get::<Index>().map(|i| i.0) else {
            return;
        };
        let mut store = self.0.lock().unwrap();
        values.record(&mut Fields(&mut store.spans[i].fields));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let span = ctx
            .event_span(event)
            .and_then(|s| s.extensions().get::<Index>().map(|i| i.0));
        self.0.lock().unwrap().events.push(EventRec {
            message: fields.remove("message").unwrap_or_default(),
            span,
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_server_spans_share_one_trace() {
    let collector = Collector::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(collector.clone()))
        .unwrap();

    let back = start("back", |k| {
        ServerGovernance::install(k, ServerConfig::default());
        k.handle_func("leaf", |_r: Request| async {
            tracing::info!("in leaf");
            Ok("leaf result")
        });
        k.handle_func("broken", |_r: Request| async {
            tracing::info!("in broken");
            Err::<(), _>(KiteError::new("myError", "broken on purpose"))
        });
    })
    .await;
    let relay_client: Arc<Mutex<Option<GovernedClient>>> = Arc::default();
    let rc = relay_client.clone();
    let front = start("front", move |k| {
        ServerGovernance::install(k, ServerConfig::default());
        k.handle_func("relay", move |_r: Request| {
            let c = rc.lock().unwrap().clone().unwrap();
            async move { c.call("leaf", &()).await }
        });
    })
    .await;
    let to_back = front.kite.new_client(&back.url);
    to_back.set_remote_kite(back.identity.clone());
    to_back.dial().await.unwrap();
    *relay_client.lock().unwrap() = Some(GovernedClient::single(
        &front.kite,
        to_back,
        &ClientConfig::default(),
    ));
    let caller = start("caller", |_| {}).await;
    let to_front = caller.kite.new_client(&front.url);
    to_front.set_remote_kite(front.identity.clone());
    to_front.dial().await.unwrap();
    let client = GovernedClient::single(&caller.kite, to_front, &ClientConfig::default());
    assert_eq!(
        client.call("relay", &()).await.unwrap(),
        serde_json::json!("leaf result")
    );

    let f = |s: &SpanRec, k: &str| s.fields.get(k).cloned().unwrap_or_default();
    {
        let store = collector.0.lock().unwrap();
        let find = |name: &str, method: &str| {
            let found: Vec<&SpanRec> = store
                .spans
                .iter()
                .filter(|s| {
                    s.name == name && s.fields.get("method").map(String::as_str) == Some(method)
                })
                .collect();
            assert_eq!(found.len(), 1, "{name} {method}: {:?}", store.spans);
            found[0].clone()
        };
        let c1 = find("kite.client", "relay");
        let s1 = find("kite.server", "relay");
        let c2 = find("kite.client", "leaf");
        let s2 = find("kite.server", "leaf");
        let trace = f(&c1, "trace_id");
        assert_eq!(trace.len(), 32);
        for s in [&s1, &c2, &s2] {
            assert_eq!(f(s, "trace_id"), trace, "{s:?}");
        }
        assert_eq!(f(&c1, "parent_span_id"), "");
        assert_eq!(f(&s1, "parent_span_id"), f(&c1, "span_id"));
        assert_eq!(f(&c2, "parent_span_id"), f(&s1, "span_id"));
        assert_eq!(f(&s2, "parent_span_id"), f(&c2, "span_id"));
        let tuple =
            |s: &SpanRec| ["from", "from_cluster", "to", "to_cluster", "method"].map(|k| f(s, k));
        assert_eq!(
            tuple(&c1),
            ["caller", "test/local", "front", "test/local", "relay"]
        );
        assert_eq!(
            tuple(&s1),
            ["caller", "test/local", "front", "test/local", "relay"]
        );
        assert_eq!(
            tuple(&c2),
            ["front", "test/local", "back", "test/local", "leaf"]
        );
        assert_eq!(
            tuple(&s2),
            ["front", "test/local", "back", "test/local", "leaf"]
        );
        assert_eq!(f(&c1, "otel.kind"), "client");
        assert_eq!(f(&s2, "otel.kind"), "server");
        // The handler's log line sits in the server span, which carries the request id.
        let leaf_log = store
            .events
            .iter()
            .find(|e| e.message == "in leaf")
            .unwrap();
        let span = &store.spans[leaf_log.span.unwrap()];
        assert_eq!(span.name, "kite.server");
        assert_eq!(f(span, "method"), "leaf");
        assert_eq!(f(span, "request_id").len(), 16);
    }

    // A failed call: the client span records the error type and the server's request id.
    let to_back = caller.kite.new_client(&back.url);
    to_back.set_remote_kite(back.identity.clone());
    to_back.dial().await.unwrap();
    let direct = GovernedClient::single(&caller.kite, to_back, &ClientConfig::default());
    let e = direct.call("broken", &()).await.unwrap_err();
    assert_eq!(e.kind, "myError");
    let store = collector.0.lock().unwrap();
    let c = store
        .spans
        .iter()
        .find(|s| s.name == "kite.client" && f(s, "method") == "broken")
        .unwrap();
    assert_eq!(f(c, "error.type"), "myError");
    assert_eq!(f(c, "request_id"), e.id);
    let log = store
        .events
        .iter()
        .find(|e| e.message == "in broken")
        .unwrap();
    let s = &store.spans[log.span.unwrap()];
    assert_eq!(f(s, "request_id"), e.id);
    assert_eq!(f(s, "trace_id"), f(c, "trace_id"));
    assert_eq!(f(s, "error.type"), "myError");
}
