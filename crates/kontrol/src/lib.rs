//! Kontrol: the Kite service registry and authority (PROTOCOL.md section 8).
//!
//! * [`Kontrol`] ([`service`]) is the core, independent of any transport: registration
//!   (`register`), liveness (heartbeats extend a registration by interval + grace), discovery
//!   with tokens (`getKites`, `getToken`), key distribution (`getKey`), machine registration
//!   (`registerMachine`), watching (REGISTER/DEREGISTER events) and key-pair rotation.
//! * [`kite_service`] is the `kontrol` kite: Kontrol's methods over the kite protocol, with
//!   `kite.heartbeat` liveness, plus the HTTP endpoints.
//! * [`http`] serves `POST /register`, `GET /heartbeat` and `GET /healthz` as an axum router.
//! * [`web`] serves a live page of the registered kites at `/` (JSON snapshot and
//!   Server-Sent Events feed), merged into [`http::routes`].
//! * [`storage`] keeps registrations and key pairs (embedded, PostgreSQL or etcd).
//!
//! ```no_run
//! use std::sync::Arc;
//! use kontrol::config::KontrolConfig;
//! use kontrol::storage::{EmbeddedConfig, Storage, StorageConfig};
//! use kontrol::Kontrol;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let storage = Storage::connect(&StorageConfig::Embedded(EmbeddedConfig::new("data"))).await?;
//! let config = KontrolConfig::new("kontrol", "http://127.0.0.1:4000/kite");
//! let kontrol = Kontrol::start(config, Arc::new(storage)).await?;
//! let app = kontrol::http::routes(kontrol.clone());
//! # let _ = app;
//! # Ok(()) }
//! ```

pub mod args;
pub mod config;
pub mod error;
pub mod http;
mod keys;
pub mod kite_service;
pub mod service;
pub mod storage;
mod tokens;
pub mod watch;
pub mod web;

pub use config::{KontrolConfig, RegisterMachinePolicy};
pub use error::KontrolError;
pub use service::{Caller, GetKitesResult, KiteWithToken, Kontrol, RegisterResult, Registered};
pub use watch::WatchSink;
