//! The Kite runtime: write, run and call kites.

pub mod args;
pub mod auth;
pub mod callback;
pub mod client;
pub mod config;
pub mod connection;
pub mod default_methods;
pub mod error;
pub mod handler;
pub mod kitekey;
pub mod request;
pub mod server;
pub mod system_info;
