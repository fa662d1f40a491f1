//! Sans-IO core of the Kite protocol: identity, dnode codec, request/response envelope and
//! SockJS frames. No sockets, no async runtime.

pub mod identity;
pub mod sockjs;

pub use identity::{Kite, KontrolQuery};
