//! The storage suite against a real PostgreSQL server started by the test harness.

mod support;

support::suite::storage_suite!(support::postgres_env);
support::suite::replica_suite!(support::postgres_env);
