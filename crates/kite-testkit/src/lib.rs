//! Test support shared by the integration tests of the kite-rs workspace: a dev-dependency
//! of the product crates, never part of one. The one normal dependent is `kite-bench`, an
//! unpublished internal tool that starts its PostgreSQL and etcd through [`services`].
//!
//! * [`process`]: child processes (example kites, the `kontrol` binary, Node.js scripts)
//!   killed when dropped, whose standard output is read line by line so a test can wait on
//!   a readiness line instead of sleeping;
//! * [`paths`]: where the workspace, `interop/`, the built binaries and examples are;
//! * [`wait`]: polling with a deadline;
//! * [`net`]: a free port for servers that must be told theirs;
//! * [`http`]: one raw HTTP/1.1 request on its own connection, for tests that must see
//!   exactly what a server sends;
//! * [`vectors`]: the Go wire captures and dnode reference encodings, and their parsers;
//! * [`peers`]: the real peers tests need (Node.js packages, Debian's chromium), with a
//!   clear failure naming the install script when one is missing;
//! * [`services`]: real PostgreSQL and etcd servers on loopback, shared per test binary or
//!   of their own, cleaned up even when the process is killed. Binaries:
//!   `KONTROL_TEST_PG_BIN` / `KITE_BENCH_PG_BIN` (PostgreSQL's `bin` directory, default the
//!   newest `/usr/lib/postgresql/*/bin`), `KONTROL_TEST_ETCD` / `KITE_BENCH_ETCD` (the etcd
//!   program, default `etcd` on `PATH`).
//!
//! ```no_run
//! use std::time::Duration;
//! use kite_testkit::{paths, process::TestProcess};
//!
//! let mut kite = TestProcess::spawn(
//!     "math",
//!     std::process::Command::new(paths::example("math")).env("KITE_PORT", "0"),
//! );
//! let ready = kite.wait_line(Duration::from_secs(30), |l| l.contains("kite ready on"));
//! println!("{ready}");
//! ```
#![allow(clippy::unwrap_used)] // a failed test step is a panic with a message by design

pub mod http;
pub mod net;
pub mod paths;
pub mod peers;
pub mod process;
pub mod services;
pub mod vectors;
pub mod wait;
