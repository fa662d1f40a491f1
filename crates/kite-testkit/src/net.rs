//! Ports for servers that must be told theirs before they start (PostgreSQL, etcd, a
//! restarted Kontrol). Everything that can bind port 0 itself should.

use std::net::TcpListener;

/// A TCP port that was free on 127.0.0.1 a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    try_free_port().expect("bind 127.0.0.1:0")
}

/// [`free_port`], returning the error instead of panicking.
pub fn try_free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
