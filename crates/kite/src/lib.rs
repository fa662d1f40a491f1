//! The Kite runtime: write, run and call kites.
//!
//! A kite is a named, versioned service whose methods other kites (Go kites, kite.js in
//! browsers or Node, other Rust kites) call over SockJS, with callbacks in both directions.
//! This crate is wire-compatible with koding/kite (Go) and kite.js 1.0.13.
//!
//! # Quick start
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut k = kite::Kite::new("math", "1.0.0")?;
//! k.config.disable_authentication = true;
//! k.config.ip = "127.0.0.1".into(); // port 0: ephemeral
//! k.handle_func("square", |r: kite::Request| async move { let a: f64 = r.args().one()?; Ok(a * a) });
//! k.listen().await?;
//! let url = k.url().unwrap();
//! let handle = k.shutdown_handle();
//! tokio::spawn(async move { k.serve().await });
//!
//! let client = kite::Kite::new("second", "1.0.0")?.new_client(&url);
//! client.dial().await?;
//! assert_eq!(client.tell("square", &(4,)).await?.as_f64(), Some(16.0));
//! handle.shutdown();
//! # Ok(()) }
//! ```
//!
//! # Map of the crate
//!
//! * [`Kite`]: identity, configuration ([`Config`], [`Limits`]), methods
//!   ([`Kite::handle_func`], tower services and layers), serving ([`Kite::listen`],
//!   [`Kite::serve`], [`Kite::run`], [`Kite::close`]), clients ([`Kite::new_client`]).
//! * [`Request`]: what a handler gets: id, method, username, caller identity, typed
//!   [`Args`], the caller's [`Connection`] to call back.
//! * [`Client`] / [`Connection`]: `dial`, `dial_forever`, `tell`, `go`, hooks.
//! * [`Function`] / [`RemoteFunction`]: callbacks as arguments, both directions.
//! * [`KiteError`]: every error of PROTOCOL.md 4.4, local ones included.
//! * [`kontrol_client`]: registering with Kontrol, discovery with tokens, watching
//!   ([`Kite::register`], [`Kite::get_kites`], [`Kite::watch_kites`], [`KontrolClient`]).
//! * [`auth`], [`config`], [`kitekey`], [`system_info`]: credentials and configuration.
//!
//! Limits and defaults are listed in the crate README and on [`Limits`].

pub mod args;
pub mod auth;
pub mod callback;
pub mod client;
pub mod config;
pub mod connection;
mod deadlines;
pub mod default_methods;
pub mod error;
pub mod handler;
mod id_hash;
mod kite;
pub mod kitekey;
pub mod kontrol_client;
pub mod request;
pub mod server;
pub mod settings;
pub mod system_info;
pub mod transport;

pub use kite_protocol as protocol;

pub use crate::args::{Args, Response};
pub use crate::callback::{Function, RemoteFunction};
pub use crate::client::{Client, Connector};
pub use crate::config::{Config, Transport};
pub use crate::connection::{Connection, EnvelopeFields, PendingCall};
pub use crate::error::KiteError;
pub use crate::handler::{to_value, Authenticate, HandlerService, Method};
pub use crate::kite::{Acceptor, Kite, NewKiteError};
pub use crate::kontrol_client::{
    KiteWithToken, KontrolClient, KontrolSettings, RegisterResult, WatchAction, WatchEvent, Watcher,
};
pub use crate::request::{Auth, Request};
pub use crate::server::{ServeError, ShutdownHandle};
pub use crate::settings::Limits;
pub use kite_sockjs::session::{Role, Session, SessionInfo};
