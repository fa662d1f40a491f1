//! A governed `worker` kite: method `work` answers `{"instance": <kite id>}` after
//! `WORKER_DELAY_MS` (default 0) milliseconds; server governance installed (metrics at
//! `/metrics`, limits, deadlines, tracing).
//!
//! ```text
//! KITE_PORT=0 cargo run -p kite-governance --example worker
//! # prints: worker ready on http://127.0.0.1:PORT/kite id <kite id>
//! ```
//!
//! With the `otel` feature it exports its spans over OTLP/HTTP when the standard
//! environment asks for it, and flushes them on Ctrl-C:
//!
//! ```text
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 KITE_PORT=0 \
//!     cargo run -p kite-governance --features otel --example worker
//! ```

use std::io::Write;
use std::time::Duration;

use kite_governance::{ServerConfig, ServerGovernance};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut k = kite::Kite::new("worker", "1.0.0")?;
    k.config.ip = "127.0.0.1".into();
    k.config.port = std::env::var("KITE_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    k.config.disable_authentication = true;
    k.config.environment = "test".into();
    k.config.region = "local".into();
    let delay = Duration::from_millis(
        std::env::var("WORKER_DELAY_MS")
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0),
    );
    #[cfg(feature = "otel")]
    let otlp = kite_governance::OtlpTracing::from_env(&k)?;
    #[cfg(feature = "otel")]
    if let Some(otlp) = &otlp {
        use tracing_subscriber::layer::SubscriberExt as _;
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otlp.layer()))?;
    }
    let _governance = ServerGovernance::install(&k, ServerConfig::default());
    let id = k.id().to_string();
    k.handle_func("work", move |_r: kite::Request| {
        let id = id.clone();
        async move {
            tokio::time::sleep(delay).await;
            Ok(serde_json::json!({ "instance": id }))
        }
    });
    k.listen().await?;
    let url = k.url().unwrap_or_default();
    let mut out = std::io::stdout();
    writeln!(out, "worker ready on {url} id {}", k.id())?;
    out.flush()?;
    tokio::select! {
        r = k.serve() => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    #[cfg(feature = "otel")]
    if let Some(otlp) = otlp {
        tokio::task::spawn_blocking(move || otlp.shutdown()).await??;
    }
    Ok(())
}
