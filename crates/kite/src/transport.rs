//! Glue to the SockJS transport crate: the server router the kite mounts and the default
//! client connector.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;

use crate::client::Connector;
use crate::error::KiteError;
use crate::kite::Core;
use kite_sockjs::session::Session;

/// The SockJS router serving `core` (placeholder until the transport lands: no routes).
pub(crate) fn sockjs_router(_core: &Arc<Core>) -> Router {
    Router::new()
}

struct NoTransport;

impl Connector for NoTransport {
    fn connect<'a>(
        &'a self,
        url: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Session, KiteError>> + Send + 'a>> {
        Box::pin(async move {
            Err(KiteError::send(format!(
                "cannot dial {url}: no SockJS client transport available"
            )))
        })
    }
}

pub(crate) fn default_connector(_core: &Arc<Core>) -> Arc<dyn Connector> {
    Arc::new(NoTransport)
}
