//! Glue to the SockJS transport crate: the server router the kite mounts and the default
//! client connector.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use kite_sockjs::client::{ClientConfig, ClientTransport};

use crate::client::Connector;
use crate::config::Transport;
use crate::error::KiteError;
use crate::kite::{Core, Kite};
use kite_sockjs::session::Session;

/// The SockJS router (prefix `/kite`, raw WebSocket at `/kite/websocket`) serving `kite`.
pub(crate) fn sockjs_router(kite: &Kite) -> Router {
    let acceptor = kite.acceptor();
    kite_sockjs::server::router(kite.sockjs.clone(), move |session| {
        acceptor.accept(session);
    })
}

/// Dials SockJS (WebSocket, XHR polling, or WebSocket with XHR fallback) like Go.
pub struct SockJsConnector {
    config: ClientConfig,
}

impl SockJsConnector {
    /// A connector with explicit SockJS client settings.
    pub fn new(config: ClientConfig) -> Self {
        SockJsConnector { config }
    }
}

impl Connector for SockJsConnector {
    fn connect<'a>(
        &'a self,
        url: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Session, KiteError>> + Send + 'a>> {
        Box::pin(async move {
            kite_sockjs::client::connect(url, &self.config)
                .await
                .map_err(|e| KiteError::send(e.to_string()))
        })
    }
}

pub(crate) fn default_connector(core: &Arc<Core>) -> Arc<dyn Connector> {
    let config = core.config();
    let limits = core.limits();
    Arc::new(SockJsConnector::new(ClientConfig {
        transport: match config.transport {
            Transport::Auto => ClientTransport::Auto,
            Transport::WebSocket => ClientTransport::WebSocket,
            Transport::XhrPolling => ClientTransport::XhrPolling,
        },
        handshake_timeout: config.handshake_timeout,
        poll_timeout: config.timeout,
        outgoing_queue: limits.session_queue,
        incoming_queue: limits.session_queue,
        ..ClientConfig::default()
    }))
}
