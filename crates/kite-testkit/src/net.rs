//! Ports for servers that must be told theirs before they start (PostgreSQL, etcd, a
//! restarted Kontrol). Everything that can bind port 0 itself should.

use std::net::TcpListener;

/// A TCP port that was free on 127.0.0.1 a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}
