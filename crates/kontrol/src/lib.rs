//! Kontrol: the Kite service registry and authority.
