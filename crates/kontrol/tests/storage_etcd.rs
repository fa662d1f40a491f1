//! The storage suite against a real etcd server started by the test harness.

mod support;

support::suite::storage_suite!(support::etcd_env);
support::suite::replica_suite!(support::etcd_env);
