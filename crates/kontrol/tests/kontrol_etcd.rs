//! The Kontrol suite over the etcd storage backend (a real server started by the test
//! harness), plus two Kontrols sharing it.
#![allow(clippy::unwrap_used)]

mod kontrol_common;
#[allow(unused_macros, unused_imports)]
mod support;

kontrol_common::suite::kontrol_suite!(support::etcd_env);
kontrol_common::suite::kontrol_replica_suite!(support::etcd_env);
