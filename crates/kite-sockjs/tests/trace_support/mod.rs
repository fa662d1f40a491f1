//! Captures the `tracing` events of the test's thread — with `#[tokio::test]`'s
//! current-thread runtime, that is every task the test spawns (server and client alike) —
//! so that tests can check what is logged, and at which level.
#![allow(dead_code, clippy::unwrap_used)]

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// One event as logged.
#[derive(Debug, Clone)]
pub struct Captured {
    pub level: Level,
    pub target: String,
    pub message: String,
    /// The other fields, `name=value` separated by spaces.
    pub fields: String,
}

impl Captured {
    /// The value of field `name` as it was formatted (`Debug`), if the event has it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.split(' ').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then_some(v)
        })
    }
}

/// The events captured so far (all levels).
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    /// Captures every event of this thread until the guard is dropped.
    pub fn start() -> (Capture, DefaultGuard) {
        let capture = Capture::default();
        let guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
        (capture, guard)
    }

    pub fn events(&self) -> Vec<Captured> {
        self.0.lock().unwrap().clone()
    }

    /// The events at WARN or ERROR level.
    pub fn warnings(&self) -> Vec<Captured> {
        self.events()
            .into_iter()
            .filter(|e| matches!(e.level, Level::WARN | Level::ERROR))
            .collect()
    }

    /// The events whose message contains `text`.
    pub fn with_message(&self, text: &str) -> Vec<Captured> {
        self.events()
            .into_iter()
            .filter(|e| e.message.contains(text))
            .collect()
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    others: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.others.is_empty() {
                self.others.push(' ');
            }
            let _ = write!(self.others, "{}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        self.0.lock().unwrap().push(Captured {
            level: *meta.level(),
            target: meta.target().to_string(),
            message: fields.message,
            fields: fields.others,
        });
    }
}
