//! The Kontrol suite over the embedded storage backend.
#![allow(clippy::unwrap_used)]

mod kontrol_common;
#[allow(unused_macros, unused_imports)]
mod support;

kontrol_common::suite::kontrol_suite!(support::embedded_env);
