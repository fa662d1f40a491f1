//! Serving: the HTTP(S) listener carrying SockJS at `/kite` (plus raw WebSocket at
//! `/kite/websocket`), extra routes, graceful shutdown.
//!
//! * [`Kite::listen`] binds `config.ip:config.port` (port 0 = ephemeral) and returns the
//!   bound address — the ready signal;
//! * [`Kite::serve`] accepts connections until shutdown;
//! * [`Kite::run`] = listen (if needed) + serve + shutdown on SIGINT/SIGTERM;
//! * [`Kite::close`] / [`ShutdownHandle::shutdown`] stop it gracefully: the listener
//!   closes, accepted kite connections stop reading new requests, in-flight handlers get up
//!   to [`Limits::shutdown_timeout`](crate::Limits::shutdown_timeout) to finish, then every
//!   session is closed with `c[3000,"Go away!"]`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::kite::{Core, Kite};

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address is invalid.
    #[error("invalid listen address {0:?}")]
    Address(String),
    /// Binding or accepting failed.
    #[error("listen on {addr}: {source}")]
    Io {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The kite was already served or closed.
    #[error("the kite is already serving or closed")]
    AlreadyServing,
}

#[derive(Default)]
pub(crate) struct ServerState {
    listener: Mutex<Option<TcpListener>>,
    local_addr: Mutex<Option<SocketAddr>>,
    routes: Mutex<Option<Router>>,
    shutdown: CancellationToken,
    done: CancellationToken,
    serving: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Stops a serving kite from anywhere (cloneable).
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    shutdown: CancellationToken,
    done: CancellationToken,
}

impl ShutdownHandle {
    /// Starts a graceful shutdown (does not wait).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Completes when serving has stopped.
    pub async fn stopped(&self) {
        self.done.cancelled().await
    }
}

impl Kite {
    /// Binds the listener on `config.ip:config.port` and returns the bound address (the
    /// kite is reachable from now on; requests are served once [`Kite::serve`] runs).
    pub async fn listen(&self) -> Result<SocketAddr, ServeError> {
        self.sync();
        if let Some(addr) = *lock(&self.core.server.local_addr) {
            return Ok(addr);
        }
        let ip: IpAddr = if self.config.ip.is_empty() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            self.config
                .ip
                .parse()
                .map_err(|_| ServeError::Address(self.config.ip.clone()))?
        };
        let addr = SocketAddr::new(ip, self.config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Io {
                addr: addr.to_string(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ServeError::Io {
            addr: addr.to_string(),
            source,
        })?;
        *lock(&self.core.server.listener) = Some(listener);
        *lock(&self.core.server.local_addr) = Some(local);
        let host = if local.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            local.ip()
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/kite", SocketAddr::new(host, local.port()));
        *match self.core.url.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        } = Some(url);
        Ok(local)
    }

    /// The bound address, once listening.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *lock(&self.core.server.local_addr)
    }

    /// Adds HTTP routes served next to SockJS (e.g. Kontrol's `/register`, `/heartbeat`).
    /// Call before [`Kite::serve`].
    pub fn add_routes(&self, router: Router) {
        let mut r = lock(&self.core.server.routes);
        *r = Some(match r.take() {
            Some(existing) => existing.merge(router),
            None => router,
        });
    }

    /// The complete HTTP application: SockJS under `/kite` (and raw WebSocket at
    /// `/kite/websocket`) plus the added routes. Use it to serve the kite yourself.
    pub fn router(&self) -> Router {
        self.sync();
        let base = crate::transport::sockjs_router(self);
        match lock(&self.core.server.routes).clone() {
            Some(extra) => base.merge(extra),
            None => base,
        }
    }

    /// A handle that stops serving from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shutdown: self.core.server.shutdown.clone(),
            done: self.core.server.done.clone(),
        }
    }

    /// Serves until shutdown (binds first if [`Kite::listen`] was not called).
    pub async fn serve(&self) -> Result<(), ServeError> {
        self.listen().await?;
        let Some(listener) = lock(&self.core.server.listener).take() else {
            return Err(ServeError::AlreadyServing);
        };
        self.core
            .server
            .serving
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let app = self.router();
        let tls = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let shutdown = self.core.server.shutdown.clone();
        let mut conns = tokio::task::JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.limits.max_http_connections.max(1),
        ));
        info!(url = ?self.url(), "serving {}", self.name());
        loop {
            // At the connection bound, stop accepting until a connection ends.
            let slot = tokio::select! {
                _ = shutdown.cancelled() => break,
                s = slots.clone().acquire_owned() => match s {
                    Ok(s) => s,
                    Err(_) => break,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Per-connection errors (e.g. EMFILE) must not end the server.
                    warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (app, tls) = (app.clone(), tls.clone());
            conns.spawn(async move {
                serve_connection(stream, remote, app, tls).await;
                drop(slot);
            });
        }
        drop(listener);
        graceful_close(&self.core).await;
        // Give HTTP connections a moment to flush the close frames, then cut them.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        conns.abort_all();
        self.core.server.done.cancel();
        Ok(())
    }

    /// Listens, serves, and shuts down gracefully on SIGINT or SIGTERM (or
    /// [`Kite::close`]).
    pub async fn run(&self) -> Result<(), ServeError> {
        let addr = self.listen().await?;
        info!("{} {} listening on {addr}", self.name(), self.version());
        let handle = self.shutdown_handle();
        let signals = tokio::spawn(async move {
            wait_for_signal().await;
            info!("signal received, shutting down");
            handle.shutdown();
        });
        let r = self.serve().await;
        signals.abort();
        r
    }

    /// Stops serving gracefully and waits until done; closes accepted connections.
    /// Idempotent.
    pub async fn close(&self) {
        self.core.server.shutdown.cancel();
        if self
            .core
            .server
            .serving
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.core.server.done.cancelled().await;
        } else {
            lock(&self.core.server.listener).take();
            graceful_close(&self.core).await;
        }
    }
}

async fn graceful_close(core: &Arc<Core>) {
    let conns = core.accepted_connections();
    for c in &conns {
        c.stop_reading();
    }
    let deadline = tokio::time::Instant::now() + core.limits().shutdown_timeout;
    for c in &conns {
        c.drain(deadline).await;
    }
    futures_util::future::join_all(conns.iter().map(|c| c.close())).await;
    debug!(count = conns.len(), "closed accepted connections");
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How long a client may take to send a request's headers (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let app = app.layer(axum::Extension(axum::extract::ConnectInfo(remote)));
    let svc = hyper_util::service::TowerToHyperService::new(app.into_service());
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let result = match tls {
        None => {
            builder
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await
        }
        Some(acceptor) => {
            let tls_stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(%remote, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
            builder
                .serve_connection(TokioIo::new(tls_stream), svc)
                .with_upgrades()
                .await
        }
    };
    if let Err(e) = result {
        debug!(%remote, "http connection: {e}");
    }
}
