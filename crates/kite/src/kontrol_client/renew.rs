//! Token renewal for clients built from Kontrol results (PROTOCOL.md 6.8): ask `getToken`
//! with the target's full identity `margin` before `exp`, and at once when a call fails
//! with `token is expired`; install the new token with [`Client::renew_token`]. A failed
//! renewal is retried after `token_retry`, except `no kites found` (the target is gone),
//! which ends renewal.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::KontrolClient;
use crate::auth::Claims;
use crate::client::{Client, WeakClient};
use crate::protocol::{Kite as KiteIdentity, KontrolQuery};

/// Starts the renewer of `client`; it ends as soon as the client is dropped, and at its
/// next wake-up once the client is closed.
pub(super) fn start(kontrol: KontrolClient, client: &Client, target: KiteIdentity) -> AbortHandle {
    let expired = Arc::new(Notify::new());
    let notify = expired.clone();
    // The hook lives as long as the client: its guard cancels `gone` when the client is
    // dropped, so a sleeping renewer does not outlive it.
    let gone = CancellationToken::new();
    let guard = gone.clone().drop_guard();
    client.on_token_expire(move || {
        let _alive = &guard;
        notify.notify_one();
    });
    let weak = client.downgrade();
    tokio::spawn(async move {
        tokio::select! {
            _ = gone.cancelled() => {}
            _ = renew_loop(kontrol, weak, target, expired) => {}
        }
    })
    .abort_handle()
}

fn current_token(client: &Client) -> Option<String> {
    client
        .auth()
        .filter(|a| a.kind == crate::auth::TOKEN)
        .map(|a| a.key)
}

/// When to renew a token expiring at `exp` (Unix seconds): `margin` before, but at the
/// latest at half of its remaining life, and not sooner than one second from now.
pub(super) fn renew_delay(exp: i64, now: SystemTime, margin: Duration) -> Duration {
    let now = crate::auth::unix_seconds(now);
    let remaining = exp.saturating_sub(now);
    if remaining <= 0 {
        return Duration::ZERO;
    }
    let remaining = remaining as u64;
    let margin = margin.as_secs().min(remaining / 2);
    Duration::from_secs((remaining - margin).max(1))
}

async fn renew_loop(
    kontrol: KontrolClient,
    weak: WeakClient,
    target: KiteIdentity,
    expired: Arc<Notify>,
) {
    let query = KontrolQuery::from(&target);
    let mut force = false;
    loop {
        let Some(client) = weak.upgrade() else { return };
        if client.is_closed() {
            return;
        }
        let Some(token) = current_token(&client) else {
            return;
        };
        drop(client);
        let settings = kontrol.settings();
        let exp = Claims::decode_unverified(&token).ok().and_then(|c| c.exp);
        match exp {
            Some(exp) => {
                let delay = renew_delay(exp, SystemTime::now(), settings.token_renew_margin);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = expired.notified() => {}
                }
            }
            None => expired.notified().await,
        }
        let Some(client) = weak.upgrade() else { return };
        if client.is_closed() {
            return;
        }
        match kontrol.token(&query, force).await {
            Ok(new) if new == token => {
                // Kontrol's cache handed back the same token: mint a new one next time.
                debug!(kite = %target, "token renewal returned the same token");
                force = true;
                drop(client);
                tokio::time::sleep(settings.token_retry).await;
            }
            Ok(new) => {
                debug!(kite = %target, "token renewed");
                client.renew_token(&new);
                force = false;
            }
            Err(e) if e.message.contains("no kites found") => {
                debug!(kite = %target, "kite is gone; token renewal stops");
                return;
            }
            Err(e) => {
                warn!(kite = %target, "token renewal failed: {e}");
                drop(client);
                tokio::time::sleep(settings.token_retry).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let m = Duration::from_secs(300);
        // 48 h token: renew 5 min before.
        assert_eq!(
            renew_delay(1_000_000 + 172_800, now, m),
            Duration::from_secs(172_500)
        );
        // 60 s token: at half-life.
        assert_eq!(renew_delay(1_000_060, now, m), Duration::from_secs(30));
        // Expired: now.
        assert_eq!(renew_delay(999_999, now, m), Duration::ZERO);
        // 1 s left: one second.
        assert_eq!(renew_delay(1_000_001, now, m), Duration::from_secs(1));
    }
}
