//! SockJS 0.3 for Kite: a server that lives inside an axum router and a client that dials
//! WebSocket or XHR polling exactly as the Go kite does.
//!
//! Whatever the transport, the layer above sees one [`session::Session`]: a bounded queue of
//! outgoing messages and a stream of incoming ones.

mod adaptive_read;
pub mod client;
mod frames;
mod queue;
pub mod server;
pub mod session;
mod ws_failure;

pub use session::{Role, Session, SessionInfo, SessionReceiver, SessionSender, Transport};
