//! The Kontrol suite over the postgres storage backend (a real server started by the test
//! harness), plus two Kontrols sharing it.
#![allow(clippy::unwrap_used)]

mod kontrol_common;
#[allow(unused_macros, unused_imports)]
mod support;

kontrol_common::suite::kontrol_suite!(support::postgres_env);
kontrol_common::suite::kontrol_replica_suite!(support::postgres_env);
