//! Methods every kite serves (PROTOCOL.md 5).
//!
//! | Method | Auth | Behaviour |
//! |---|---|---|
//! | `kite.ping` | no | `"pong"` |
//! | `kite.heartbeat` | yes | `[seconds, fn]`: calls `fn()` at once (before the response), then every `seconds`; one schedule per kite, a new call replaces the previous |
//! | `kite.systemInfo` | yes | memory, disk, home directory, OS name |
//! | `kite.log` | yes | logs `<caller name>: <message>` at INFO |
//! | `kite.print` | yes | writes the text to stdout, returns the number of bytes |
//!
//! Not served (callers get `methodNotFound`): the interactive `kite.prompt` and
//! `kite.getPass` (a service has no terminal), `kite.tunnel` (no tunnel proxy support yet),
//! `kite.notify` and `kite.handleWebRTC`.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use tracing::{debug, info};

use crate::callback::RemoteFunction;
use crate::error::KiteError;
use crate::request::Request;
use crate::Kite;

/// Smallest heartbeat interval accepted (a peer could otherwise make us spin).
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

pub(crate) fn register(k: &Kite) {
    k.handle_func("kite.ping", |_r: Request| async move { Ok("pong") })
        .disable_authentication();
    let core = std::sync::Arc::downgrade(&k.core);
    k.handle_func("kite.heartbeat", move |r: Request| {
        let core = core.clone();
        async move {
            let (seconds, ping): (f64, RemoteFunction) = r.args().decode()?;
            if !seconds.is_finite() || seconds < 0.0 {
                return Err(KiteError::argument("heartbeat interval must be positive"));
            }
            let every = Duration::from_secs_f64(seconds.min(86_400.0)).max(MIN_HEARTBEAT);
            // First ping right away, queued before our response.
            ping.call(&()).await?;
            let conn = r.connection().clone();
            let task = tokio::spawn(async move {
                let closed = conn.closed();
                tokio::pin!(closed);
                loop {
                    tokio::select! {
                        _ = &mut closed => break,
                        _ = tokio::time::sleep(every) => {}
                    }
                    if let Err(e) = ping.call(&()).await {
                        debug!("heartbeat stopped: {e}");
                        break;
                    }
                }
            });
            if let Some(core) = core.upgrade() {
                let mut slot = match core.heartbeat.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                if let Some(prev) = slot.replace(task.abort_handle()) {
                    prev.abort();
                }
            }
            Ok(Value::Null)
        }
    });
    k.handle_func(
        "kite.systemInfo",
        |_r: Request| async move { system_info() },
    );
    k.handle_func("kite.log", |r: Request| async move {
        let message: String = r.args().one()?;
        info!("{}: {}", r.caller().name, message);
        Ok(Value::Null)
    });
    k.handle_func("kite.print", |r: Request| async move {
        let text: String = r.args().one()?;
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| KiteError::generic(e.to_string()))?;
        Ok(text.len())
    });
}

/// The host name reported in the kite's identity.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

fn system_info() -> Result<crate::system_info::SystemInfo, KiteError> {
    crate::system_info::SystemInfo::collect().map_err(|e| KiteError::generic(e.to_string()))
}
