//! The kite RPC path: a `math` kite serving `square`, callers on the runtime's `Client`.

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use kite::auth::{issue_kite_key, issue_token, KeyPair, DEFAULT_TOKEN_TTL};
use kite::{Auth, Client, Kite, ShutdownHandle};
use kite_protocol::envelope::Authentication;
use kite_protocol::Kite as Identity;

use crate::payload;
use crate::raw::RawWsConnector;
use crate::stats::Caller;

/// Credentials a server may require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AuthMode {
    /// `disable_authentication = true`.
    None,
    /// Kontrol-issued token (`token`).
    Token,
    /// Kontrol-issued kite key (`kiteKey`).
    KiteKey,
}

impl AuthMode {
    pub fn name(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Token => "token",
            AuthMode::KiteKey => "kiteKey",
        }
    }
}

/// How callers reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Wire {
    /// SockJS over WebSocket (what Go kites use), runtime client.
    #[value(name = "sockjs")]
    SockJsWs,
    /// Raw WebSocket, runtime client through [`RawWsConnector`].
    #[value(name = "raw")]
    RawWs,
    /// Raw WebSocket, bare dnode caller.
    #[value(name = "dnode")]
    RawDnode,
    /// SockJS XHR polling, runtime client.
    #[value(name = "xhr")]
    Xhr,
}

impl Wire {
    pub fn name(self) -> &'static str {
        match self {
            Wire::SockJsWs => "SockJS WebSocket",
            Wire::RawWs => "raw WebSocket",
            Wire::RawDnode => "raw WebSocket, bare dnode caller",
            Wire::Xhr => "SockJS XHR polling",
        }
    }
}

/// A running `math` kite; shuts down when dropped.
pub(crate) struct KiteServer {
    pub url: String,
    /// The credential callers must send (`None` without authentication).
    pub auth: Option<Auth>,
    handle: ShutdownHandle,
}

impl Drop for KiteServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

impl KiteServer {
    /// Starts a kite on 127.0.0.1 (ephemeral port) serving `square`. With a key pair, the
    /// kite trusts it as its Kontrol key and the callers' credential is issued with it.
    pub async fn start(mode: AuthMode, kontrol: Option<&Arc<KeyPair>>) -> anyhow::Result<Self> {
        let mut k = Kite::new("math", "1.0.0")?;
        k.config.ip = "127.0.0.1".into();
        k.config.port = 0;
        k.config.username = "bench".into();
        // Experiments: the server's per-connection WebSocket read buffer (default 512 B).
        if let Some(n) = std::env::var("KITE_BENCH_WS_READ_BUFFER")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            k.sockjs.websocket_read_buffer = n;
        }
        // ... and the most its adaptive read buffering grows to (default 64 KiB; 0 = off).
        if let Some(n) = std::env::var("KITE_BENCH_WS_READ_BUFFER_MAX")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            k.sockjs.websocket_read_buffer_max = n;
        }
        let auth = match (mode, kontrol) {
            (AuthMode::None, _) => {
                k.config.disable_authentication = true;
                None
            }
            (_, None) => bail!("authentication needs a Kontrol key pair"),
            (mode, Some(kontrol)) => {
                k.config.kontrol_user = "kontrol".into();
                k.config.kontrol_key = kontrol.public_pem().to_owned();
                let now = SystemTime::now();
                Some(if mode == AuthMode::Token {
                    let audience = format!(
                        "/{}/{}/{}",
                        k.config.username,
                        k.config.environment,
                        k.name()
                    );
                    Auth::token(issue_token(
                        kontrol,
                        &audience,
                        "caller",
                        "kontrol",
                        DEFAULT_TOKEN_TTL,
                        now,
                        true,
                    )?)
                } else {
                    Auth::kite_key(issue_kite_key(
                        kontrol,
                        "kontrol",
                        "caller",
                        "http://127.0.0.1:1/kite",
                        now,
                    )?)
                })
            }
        };
        k.handle_func("square", |r: kite::Request| async move {
            let a: f64 = r.args().one()?;
            Ok(a * a)
        });
        k.listen().await?;
        let url = k.url().context("a listening kite has a URL")?;
        let handle = k.shutdown_handle();
        tokio::spawn(async move {
            if let Err(e) = k.serve().await {
                tracing::error!("bench kite: {e}");
            }
        });
        Ok(KiteServer { url, auth, handle })
    }
}

/// The kite the callers belong to.
pub(crate) fn caller_kite(wire: Wire) -> anyhow::Result<Kite> {
    let mut k = Kite::new("bench-caller", "1.0.0")?;
    k.config.transport = match wire {
        Wire::Xhr => kite::Transport::XhrPolling,
        _ => kite::Transport::WebSocket,
    };
    Ok(k)
}

/// The identity and credential a caller kite sends with its requests (for sizing the
/// echo messages and for the bare dnode caller).
pub(crate) fn wire_identity(k: &Kite, auth: Option<&Auth>) -> (Identity, Option<Authentication>) {
    (
        k.identity(),
        auth.map(|a| Authentication::new(a.kind.clone(), a.key.clone())),
    )
}

/// Dials one connection for the runtime client.
pub(crate) async fn dial(caller: &Kite, server: &KiteServer, wire: Wire) -> anyhow::Result<Client> {
    let c = caller.new_client(&server.url);
    if wire == Wire::RawWs {
        c.set_connector(RawWsConnector);
    }
    c.set_auth(server.auth.clone());
    c.dial()
        .await
        .with_context(|| format!("dial {} over {}", server.url, wire.name()))?;
    Ok(c)
}

/// A caller on the runtime's client (clones share its connection).
pub(crate) struct KiteCaller(pub Client);

impl Caller for KiteCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let r = self.0.tell("square", &(payload::ARG,)).await?;
        if r.as_f64() != Some(payload::RESULT) {
            bail!("square({}) answered {:?}", payload::ARG, r.value());
        }
        Ok(())
    }
}
