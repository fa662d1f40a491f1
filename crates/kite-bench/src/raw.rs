//! Raw WebSocket (`<prefix>/websocket`, one dnode JSON per text frame, no SockJS framing).
//!
//! The runtime's own client dials SockJS only, so raw WebSocket is measured two ways:
//!
//! * [`RawWsConnector`]: a [`kite::Connector`] that opens a raw WebSocket and bridges it
//!   to a kite-sockjs [`Session`], so the runtime's `Client` runs on it unchanged (same
//!   client stack as the SockJS rows: only the framing differs);
//! * [`DnodeCaller`]: a bare caller on tokio-tungstenite that writes the dnode request
//!   built with kite-protocol and matches responses by callback id (the lightest possible
//!   client: what is left is the server's cost).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use kite::KiteError;
use kite_protocol::dnode::{self, Message as Dnode, Method};
use kite_protocol::envelope::{self, Authentication};
use kite_protocol::Kite as Identity;
use kite_sockjs::session::{Role, Session, SessionInfo, Transport};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::payload;
use crate::stats::Caller;

type Ws = WebSocketStream<TcpStream>;

/// `http://host:port/kite` → (`host:port`, `ws://host:port/kite/websocket`).
fn raw_url(kite_url: &str) -> anyhow::Result<(String, String)> {
    let rest = kite_url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// kite URL: {kite_url}"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, "kite"));
    Ok((
        authority.to_owned(),
        format!("ws://{authority}/{}/websocket", path.trim_end_matches('/')),
    ))
}

async fn dial(kite_url: &str) -> anyhow::Result<Ws> {
    let (authority, ws_url) = raw_url(kite_url)?;
    let stream = TcpStream::connect(&authority).await?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(ws_url, stream)
        .await
        .context("raw WebSocket handshake")?;
    Ok(ws)
}

/// Dials raw WebSocket for the runtime's client.
pub(crate) struct RawWsConnector;

impl kite::Connector for RawWsConnector {
    fn connect<'a>(
        &'a self,
        url: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Session, KiteError>> + Send + 'a>> {
        Box::pin(async move {
            let ws = dial(url)
                .await
                .map_err(|e| KiteError::send(format!("{e:#}")))?;
            let peer = ws.get_ref().peer_addr().ok();
            let info = SessionInfo::new("raw", Transport::RawWebSocket, Role::Dialed, peer);
            let (session, mut side) = Session::pair(info, 128, 128);
            let (mut sink, mut stream) = ws.split();
            let deliver = side.deliverer();
            tokio::spawn(async move {
                // Batching as kite-sockjs's WebSocket client does: while more messages were
                // received than are queued to go out, yield once so the answers join the
                // write.
                let pending = AtomicUsize::new(0);
                let reading = async {
                    while let Some(Ok(m)) = stream.next().await {
                        if let Message::Text(t) = m {
                            if deliver.deliver(t.as_str().to_owned()).await.is_err() {
                                return;
                            }
                            pending.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                };
                let writing = async {
                    let mut batch = Vec::new();
                    while side.next_batch(&mut batch, 256).await {
                        if pending.load(Ordering::Relaxed) > batch.len() {
                            tokio::task::yield_now().await;
                            side.try_batch(&mut batch, 256);
                        }
                        let sent = batch.len();
                        let _ = pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                            Some(p.saturating_sub(sent))
                        });
                        for item in batch.drain(..) {
                            match item {
                                kite_sockjs::session::Outbound::Message(m) => {
                                    if sink.feed(Message::text(m)).await.is_err() {
                                        return;
                                    }
                                }
                                kite_sockjs::session::Outbound::Escaped(m) => {
                                    let Ok(m) = m.to_plain() else { return };
                                    if sink.feed(Message::text(m)).await.is_err() {
                                        return;
                                    }
                                }
                                kite_sockjs::session::Outbound::Close { .. } => {
                                    let _ = sink.send(Message::Close(None)).await;
                                    return;
                                }
                            }
                        }
                        if sink.flush().await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = reading => {}
                    _ = writing => {}
                }
            });
            Ok(session)
        })
    }
}

/// One call for the I/O task: the request text, its callback id, where to answer.
type Outgoing = (u64, String, oneshot::Sender<Dnode>);

struct Inner {
    tx: mpsc::Sender<Outgoing>,
    next_id: AtomicU64,
    identity: Identity,
    auth: Option<Authentication>,
}

/// A bare dnode caller on one raw WebSocket, served by one I/O task; clones share the
/// connection.
#[derive(Clone)]
pub(crate) struct DnodeCaller {
    inner: Arc<Inner>,
}

impl DnodeCaller {
    pub async fn dial(
        kite_url: &str,
        identity: Identity,
        auth: Option<Authentication>,
    ) -> anyhow::Result<Self> {
        let mut ws = dial(kite_url).await?;
        let (tx, mut rx) = mpsc::channel::<Outgoing>(128);
        tokio::spawn(async move {
            let limits = dnode::Limits::default();
            let mut pending: HashMap<u64, oneshot::Sender<Dnode>> = HashMap::new();
            loop {
                tokio::select! {
                    call = rx.recv() => {
                        let Some(call) = call else {
                            // Every caller is gone.
                            let _ = ws.close(None).await;
                            return;
                        };
                        let mut next = Some(call);
                        while let Some((id, text, done)) = next.take() {
                            pending.insert(id, done);
                            if ws.feed(Message::text(text)).await.is_err() {
                                return;
                            }
                            next = rx.try_recv().ok();
                        }
                        if ws.flush().await.is_err() {
                            return;
                        }
                    }
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            let Ok(msg) = Dnode::decode(t.as_str(), &limits) else {
                                continue;
                            };
                            if let Method::Callback(id) = msg.method {
                                if let Some(done) = pending.remove(&id) {
                                    let _ = done.send(msg);
                                }
                            }
                        }
                        Some(Ok(_)) => {}
                        None | Some(Err(_)) => return,
                    }
                }
            }
        });
        Ok(DnodeCaller {
            inner: Arc::new(Inner {
                tx,
                next_id: AtomicU64::new(1),
                identity,
                auth,
            }),
        })
    }
}

impl Caller for DnodeCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let text = payload::request(&inner.identity, inner.auth.as_ref(), id);
        let (done, answered) = oneshot::channel();
        if inner.tx.send((id, text, done)).await.is_err() {
            bail!("raw WebSocket closed");
        }
        let msg = answered
            .await
            .map_err(|_| anyhow!("raw WebSocket closed"))?;
        let value = envelope::decode_response(msg.arguments)?;
        if value.as_f64() != Some(payload::RESULT) {
            bail!("square({}) answered {value}", payload::ARG);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn raw_urls() {
        assert_eq!(
            super::raw_url("http://127.0.0.1:5/kite").unwrap(),
            (
                "127.0.0.1:5".into(),
                "ws://127.0.0.1:5/kite/websocket".into()
            )
        );
        assert!(super::raw_url("https://x/kite").is_err());
    }
}
