//! Kontrol: the Kite service registry and authority.

pub mod storage;
