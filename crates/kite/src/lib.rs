//! The Kite runtime: write, run and call kites.
//!
//! A kite is a named, versioned service whose methods other kites (Go kites, kite.js in
//! browsers or Node, other Rust kites) call over SockJS, with callbacks in both directions.
//! This crate is wire-compatible with koding/kite (Go) and kite.js 1.0.13.

pub mod args;
pub mod auth;
pub mod callback;
pub mod client;
pub mod config;
pub mod connection;
pub mod default_methods;
pub mod error;
pub mod handler;
mod kite;
pub mod kitekey;
pub mod request;
pub mod server;
pub mod settings;
pub mod system_info;
pub mod transport;
mod wire;

pub use kite_protocol as protocol;

pub use crate::args::{Args, Response};
pub use crate::callback::{Function, RemoteFunction};
pub use crate::client::{Client, Connector};
pub use crate::config::{Config, Transport};
pub use crate::connection::{Connection, PendingCall};
pub use crate::error::KiteError;
pub use crate::handler::{to_value, Authenticate, HandlerService, Method};
pub use crate::kite::{Acceptor, Kite, NewKiteError};
pub use crate::request::{Auth, Request};
pub use crate::server::{ServeError, ShutdownHandle};
pub use crate::settings::Limits;
pub use kite_sockjs::session::{Role, Session, SessionInfo};
