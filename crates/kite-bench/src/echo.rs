//! The transport's ceiling: a minimal WebSocket echo on the same WebSocket crate
//! (tokio-tungstenite) and runtime (tokio) as the kite path. The client sends messages of
//! the size of a `square` request frame; the server answers each with a message of the size
//! of the response frame. Both sides batch: every message ready at the time is written
//! before one flush (what a well-built RPC path can do as well).

use std::collections::VecDeque;
use std::net::SocketAddr;

use anyhow::{anyhow, Context as _};
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::stats::Caller;

type Ws = WebSocketStream<TcpStream>;

/// A running echo server; stops when dropped.
pub(crate) struct EchoServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoServer {
    /// Listens on 127.0.0.1 (ephemeral port); answers every message with `reply`.
    pub async fn start(reply: String) -> anyhow::Result<EchoServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let reply = Utf8Bytes::from(reply);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    a = listener.accept() => {
                        let Ok((stream, _)) = a else { continue };
                        let _ = stream.set_nodelay(true);
                        conns.spawn(serve(stream, reply.clone()));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(EchoServer { addr, task })
    }
}

async fn serve(stream: TcpStream, reply: Utf8Bytes) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(_))) => {}
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
            Some(Ok(_)) => continue,
        }
        if ws.feed(Message::Text(reply.clone())).await.is_err() {
            return;
        }
        // Answer everything already received before flushing once.
        while let Some(next) = ws.next().now_or_never() {
            match next {
                Some(Ok(Message::Text(_))) => {
                    if ws.feed(Message::Text(reply.clone())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

async fn dial(addr: SocketAddr) -> anyhow::Result<Ws> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/echo"), stream)
        .await
        .context("echo handshake")?;
    Ok(ws)
}

/// A caller owning its connection: send, then wait for the answer.
pub(crate) struct OwnConnection {
    ws: Ws,
    request: Utf8Bytes,
}

impl OwnConnection {
    pub async fn dial(addr: SocketAddr, request: &str) -> anyhow::Result<Self> {
        Ok(OwnConnection {
            ws: dial(addr).await?,
            request: Utf8Bytes::from(request.to_owned()),
        })
    }
}

impl Caller for OwnConnection {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.ws.send(Message::Text(self.request.clone())).await?;
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(_))) => return Ok(()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => return Err(anyhow!("echo connection ended: {other:?}")),
            }
        }
    }
}

/// Callers sharing one connection, served by one I/O task (as the kite client's session
/// is): it writes every request queued at the time before one flush, and hands answers
/// back in order (the echo server answers in order).
#[derive(Clone)]
pub(crate) struct SharedConnection {
    tx: mpsc::Sender<oneshot::Sender<()>>,
}

impl SharedConnection {
    pub async fn dial(addr: SocketAddr, request: &str, callers: usize) -> anyhow::Result<Self> {
        let mut ws = dial(addr).await?;
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<()>>(callers.max(1));
        let request = Utf8Bytes::from(request.to_owned());
        tokio::spawn(async move {
            let mut waiting: VecDeque<oneshot::Sender<()>> = VecDeque::with_capacity(callers);
            loop {
                tokio::select! {
                    done = rx.recv() => {
                        let Some(done) = done else {
                            // Every caller is gone.
                            let _ = ws.close(None).await;
                            return;
                        };
                        let mut next = Some(done);
                        while let Some(done) = next.take() {
                            waiting.push_back(done);
                            if ws.feed(Message::Text(request.clone())).await.is_err() {
                                return;
                            }
                            next = rx.try_recv().ok();
                        }
                        if ws.flush().await.is_err() {
                            return;
                        }
                    }
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(_))) => {
                            if let Some(done) = waiting.pop_front() {
                                let _ = done.send(());
                            }
                        }
                        Some(Ok(_)) => {}
                        None | Some(Err(_)) => return,
                    }
                }
            }
        });
        Ok(SharedConnection { tx })
    }
}

impl Caller for SharedConnection {
    async fn call(&mut self) -> anyhow::Result<()> {
        let (done, answered) = oneshot::channel();
        self.tx
            .send(done)
            .await
            .map_err(|_| anyhow!("echo connection closed"))?;
        answered
            .await
            .map_err(|_| anyhow!("echo connection closed"))
    }
}
