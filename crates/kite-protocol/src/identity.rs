//! Kite identity: the seven fields, their string form, and [`KontrolQuery`].
//!
//! (Owned by the protocol core; parsing and validation per PROTOCOL.md 1.2 live here.)

use serde::{Deserialize, Serialize};

/// The seven-field identity of a kite process (PROTOCOL.md 1.1).
///
/// Field order is the canonical order: username, environment, name, version, region,
/// hostname, id. Missing keys decode as empty strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct Kite {
    /// Owner of the kite.
    pub username: String,
    /// Deployment cluster (production, staging...).
    pub environment: String,
    /// Kind of service (`fs`, `math`, `kontrol`).
    pub name: String,
    /// Service version (three dot-separated parts).
    pub version: String,
    /// Location.
    pub region: String,
    /// Host name.
    pub hostname: String,
    /// Instance id, unique per process start (a UUID).
    pub id: String,
}

/// A query for Kontrol: the same seven keys, an empty string meaning "don't care"
/// (PROTOCOL.md 1.3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct KontrolQuery {
    /// Owner of the kite.
    pub username: String,
    /// Deployment cluster.
    pub environment: String,
    /// Kind of service.
    pub name: String,
    /// A version or a version constraint such as `>= 1.0, < 1.4`.
    pub version: String,
    /// Location.
    pub region: String,
    /// Host name.
    pub hostname: String,
    /// Instance id.
    pub id: String,
}
