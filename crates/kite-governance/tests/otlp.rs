//! OTLP export for real (feature `otel`; `scripts/test` runs
//! `cargo test -p kite-governance --features otel --test otlp`): an OTLP/HTTP receiver in
//! this process (`POST /v1/traces`, protobuf `ExportTraceServiceRequest`) collects what
//! a governed caller in this process and the `worker` example in a child process export.
//! The client span (caller) and the server span (worker) share one trace id, the server
//! span is the client span's child, both carry the five-tuple, and each process reports
//! its own service name. A failed call exports an error status.
#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use kite_governance::{ClientConfig, GovernedClient, OtlpConfig, OtlpTracing};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtlpStatus;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// A span as received, with its resource's attributes.
#[derive(Clone, Debug)]
struct Received {
    resource: HashMap<String, String>,
    span: Span,
}

impl Received {
    fn attr(&self, key: &str) -> String {
        attrs(&self.span.attributes)
            .remove(key)
            .unwrap_or_else(|| panic!("no attribute {key:?} on {:?}", self.span))
    }
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<u32>>,
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

async fn receive(
    State(c): State<Collector>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let proto = [(header::CONTENT_TYPE, "application/x-protobuf")];
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("application/x-protobuf")
    {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, proto, Vec::new());
    }
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, proto, Vec::new());
    };
    *c.requests.lock().unwrap() += 1;
    let mut spans = c.spans.lock().unwrap();
    for rs in req.resource_spans {
        let resource = rs
            .resource
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                spans.push(Received {
                    resource: resource.clone(),
                    span,
                });
            }
        }
    }
    (
        StatusCode::OK,
        proto,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

/// Starts the receiver on 127.0.0.1:0; returns its base URL.
async fn start_receiver(c: &Collector) -> String {
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(c.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Environment variables the worker must not inherit from this process.
const OTEL_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_RESOURCE_ATTRIBUTES",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_server_spans_are_exported_over_otlp() {
    let collector = Collector::default();
    let endpoint = start_receiver(&collector).await;

    // The server: the worker example, configured by the standard environment only; its
    // service name defaults to its kite name.
    let (_worker, url, identity) = common::spawn_worker_env(
        0,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
        OTEL_VARS,
    );

    // The caller: explicit configuration in this process.
    let mut caller = kite::Kite::new("caller", "1.2.3").unwrap();
    caller.config.environment = "test".into();
    caller.config.region = "local".into();
    let otlp = OtlpTracing::start(
        &caller,
        &OtlpConfig {
            service_name: Some("caller-service".into()),
            ..OtlpConfig::endpoint(endpoint.clone())
        },
    )
    .unwrap();
    assert_eq!(otlp.traces_endpoint(), format!("{endpoint}/v1/traces"));
    assert_eq!(otlp.service_name(), "caller-service");
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otlp.layer()))
        .unwrap();

    let client = caller.new_client(&url);
    client.set_remote_kite(identity.clone());
    client.dial().await.unwrap();
    let worker = GovernedClient::single(&caller, client, &ClientConfig::default());
    let answer = worker.call("work", &()).await.unwrap();
    assert_eq!(answer["instance"], serde_json::json!(identity.id));
    let e = worker.call("noSuchMethod", &()).await.unwrap_err();

    // Shutting down flushes the caller's queued spans.
    tokio::task::spawn_blocking(move || otlp.shutdown())
        .await
        .unwrap()
        .unwrap();

    // The worker exports on its own schedule (50 ms): wait for its span.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = collector.spans.lock().unwrap().clone();
        let has = |service: &str, name: &str| {
            spans.iter().any(|r| {
                r.span.name == name
                    && r.resource.get("service.name").map(String::as_str) == Some(service)
            })
        };
        if has("worker", "kite.server") && has("caller-service", "kite.client") {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans not exported within 30 s; got {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(*collector.requests.lock().unwrap() >= 2);

    let find = |name: &str, method: &str| {
        spans
            .iter()
            .find(|r| {
                r.span.name == name
                    && attrs(&r.span.attributes).get("method").map(String::as_str) == Some(method)
            })
            .unwrap_or_else(|| panic!("no {name} span of {method} in {spans:#?}"))
            .clone()
    };
    let client = find("kite.client", "work");
    let server = find("kite.server", "work");

    // Resources: each process its own service.
    assert_eq!(client.resource["service.name"], "caller-service");
    assert_eq!(client.resource["service.version"], "1.2.3");
    assert_eq!(client.resource["service.instance.id"], caller.id());
    assert_eq!(server.resource["service.name"], "worker");
    assert_eq!(server.resource["service.instance.id"], identity.id);

    // One trace; the server span is the client span's child; the client span is a root.
    assert_eq!(client.span.trace_id.len(), 16);
    assert_eq!(server.span.trace_id, client.span.trace_id);
    assert_eq!(server.span.parent_span_id, client.span.span_id);
    assert!(client.span.parent_span_id.is_empty());
    assert_eq!(client.span.kind, SpanKind::Client as i32);
    assert_eq!(server.span.kind, SpanKind::Server as i32);
    // The ids recorded on the `tracing` spans (and in logs) are the exported ones.
    assert_eq!(client.attr("trace_id"), hex(&client.span.trace_id));
    assert_eq!(client.attr("span_id"), hex(&client.span.span_id));
    assert_eq!(server.attr("trace_id"), hex(&server.span.trace_id));
    assert_eq!(server.attr("parent_span_id"), hex(&client.span.span_id));

    // The five-tuple on both sides.
    for r in [&client, &server] {
        assert_eq!(r.attr("from"), "caller");
        assert_eq!(r.attr("from_cluster"), "test/local");
        assert_eq!(r.attr("to"), "worker");
        assert_eq!(r.attr("to_cluster"), "test/local");
        assert_eq!(r.attr("method"), "work");
        let status = r.span.status.clone().unwrap_or_default();
        assert_ne!(status.code, OtlpStatus::Error as i32, "{r:?}");
    }
    assert_eq!(server.attr("request_id").len(), 16);
    assert!(server.span.end_time_unix_nano >= server.span.start_time_unix_nano);
    assert!(client.span.start_time_unix_nano <= server.span.start_time_unix_nano);

    // The failed call: an error status and its type on the client span.
    let failed = find("kite.client", "noSuchMethod");
    assert_eq!(failed.attr("error.type"), e.kind);
    assert_eq!(
        failed.span.status.clone().unwrap_or_default().code,
        OtlpStatus::Error as i32
    );
    assert_ne!(failed.span.trace_id, client.span.trace_id);
}
