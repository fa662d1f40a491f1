//! Kite identity: the seven fields, their string form, and [`KontrolQuery`]
//! (PROTOCOL.md 1.1–1.3, audience derivation of 6.4).
//!
//! ```
//! use kite_protocol::{Kite, KontrolQuery};
//!
//! let kite: Kite = "/devrim/production/math/1.0.0/eu-west/worker-3/2f1c".parse().unwrap();
//! assert_eq!(kite.name, "math");
//! assert_eq!(kite.to_string(), "/devrim/production/math/1.0.0/eu-west/worker-3/2f1c");
//! assert!(kite.validate().is_ok());
//!
//! let query = KontrolQuery {
//!     username: "devrim".into(),
//!     name: "math".into(),
//!     version: ">= 1.0, < 2".into(),
//!     ..Default::default()
//! };
//! assert!(query.matches(&kite));
//! assert_eq!(query.audience(), "/devrim//math");
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::version::{VersionError, VersionFilter};

/// JSON keys of the seven identity fields, in canonical order.
pub const FIELD_KEYS: [&str; 7] = [
    "username",
    "environment",
    "name",
    "version",
    "region",
    "hostname",
    "id",
];

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

/// Why a kite string or identity is invalid. The texts are Go's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The string form does not start with `/`.
    #[error("invalid kite string")]
    InvalidString,
    /// Generic check: the string form contains `//`.
    #[error("empty field")]
    EmptyField,
    /// Generic check: the string form does not contain exactly seven `/`.
    #[error("fields cannot contain \"/\"")]
    FieldsContainSlash,
    /// Registration check: the named field is empty.
    #[error("Empty Kite field: {0}")]
    EmptyKiteField(&'static str),
    /// Registration check: the named field contains `/`.
    #[error("Field \"{0}\" must not contain '/'")]
    FieldContainsSlash(&'static str),
}

/// Why a [`KontrolQuery`] is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Every field is empty.
    #[error("all query fields are empty")]
    AllEmpty,
    /// `username` is empty and the caller requires it.
    #[error("Empty username field")]
    EmptyUsername,
    /// `version` is neither a version nor a constraint list (`Malformed constraint: latest`).
    #[error(transparent)]
    Version(#[from] VersionError),
}

fn fields_of(values: [&str; 7]) -> [(&'static str, &str); 7] {
    let mut i = 0;
    values.map(|v| {
        let key = FIELD_KEYS[i];
        i += 1;
        (key, v)
    })
}

/// Writes `/f1/f2/.../f7`.
fn write_path(f: &mut fmt::Formatter<'_>, values: [&str; 7]) -> fmt::Result {
    for v in values {
        f.write_str("/")?;
        f.write_str(v)?;
    }
    Ok(())
}

/// Derives a token audience (PROTOCOL.md 6.4) from the three leading fields.
fn audience_of(username: &str, environment: &str, name: &str) -> String {
    if !name.is_empty() {
        format!("/{username}/{environment}/{name}")
    } else if !environment.is_empty() {
        format!("/{username}/{environment}")
    } else {
        format!("/{username}")
    }
}

impl Kite {
    /// Parses the string form (Go's `KiteFromString`): it must start with `/`; the rest is
    /// split on `/` into at most seven pieces (the last keeps any further slashes) and
    /// missing trailing pieces are empty. Also used for audiences like `/devrim/prod/math`.
    pub fn parse(s: &str) -> Result<Kite, IdentityError> {
        let rest = s.strip_prefix('/').ok_or(IdentityError::InvalidString)?;
        let mut parts = rest.splitn(7, '/');
        let mut next = || parts.next().unwrap_or("").to_string();
        Ok(Kite {
            username: next(),
            environment: next(),
            name: next(),
            version: next(),
            region: next(),
            hostname: next(),
            id: next(),
        })
    }

    /// The field values in canonical order.
    pub fn values(&self) -> [&str; 7] {
        [
            &self.username,
            &self.environment,
            &self.name,
            &self.version,
            &self.region,
            &self.hostname,
            &self.id,
        ]
    }

    /// `(json key, value)` pairs in canonical order.
    pub fn fields(&self) -> [(&'static str, &str); 7] {
        fields_of(self.values())
    }

    /// Go's generic check (`Kite.Validate`), done on the string form: `//` anywhere is
    /// `empty field`; otherwise anything but exactly seven `/` is
    /// `fields cannot contain "/"`. (Like Go, this lets an empty `id` through, since the
    /// string then merely ends with `/`.)
    pub fn validate(&self) -> Result<(), IdentityError> {
        let s = self.to_string();
        if s.contains("//") {
            Err(IdentityError::EmptyField)
        } else if s.bytes().filter(|&b| b == b'/').count() != 7 {
            Err(IdentityError::FieldsContainSlash)
        } else {
            Ok(())
        }
    }

    /// Kontrol's registration check: every field non-empty (`Empty Kite field: <key>`) and
    /// free of `/` (`Field "<key>" must not contain '/'`), checked in canonical order.
    pub fn validate_for_registration(&self) -> Result<(), IdentityError> {
        for (key, value) in self.fields() {
            if value.is_empty() {
                return Err(IdentityError::EmptyKiteField(key));
            }
            if value.contains('/') {
                return Err(IdentityError::FieldContainsSlash(key));
            }
        }
        Ok(())
    }

    /// A query selecting exactly this kite (all seven fields set).
    pub fn to_query(&self) -> KontrolQuery {
        KontrolQuery::from(self)
    }

    /// The narrowest token audience for this kite: `/<username>/<environment>/<name>`
    /// (what a Kontrol should use for username-less queries, PROTOCOL.md Q13).
    pub fn audience(&self) -> String {
        format!("/{}/{}/{}", self.username, self.environment, self.name)
    }
}

impl fmt::Display for Kite {
    /// `/username/environment/name/version/region/hostname/id`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_path(f, self.values())
    }
}

impl FromStr for Kite {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Kite, IdentityError> {
        Kite::parse(s)
    }
}

impl From<&Kite> for KontrolQuery {
    fn from(k: &Kite) -> KontrolQuery {
        KontrolQuery {
            username: k.username.clone(),
            environment: k.environment.clone(),
            name: k.name.clone(),
            version: k.version.clone(),
            region: k.region.clone(),
            hostname: k.hostname.clone(),
            id: k.id.clone(),
        }
    }
}

impl From<Kite> for KontrolQuery {
    fn from(k: Kite) -> KontrolQuery {
        KontrolQuery {
            username: k.username,
            environment: k.environment,
            name: k.name,
            version: k.version,
            region: k.region,
            hostname: k.hostname,
            id: k.id,
        }
    }
}

impl KontrolQuery {
    /// The field values in canonical order.
    pub fn values(&self) -> [&str; 7] {
        [
            &self.username,
            &self.environment,
            &self.name,
            &self.version,
            &self.region,
            &self.hostname,
            &self.id,
        ]
    }

    /// `(json key, value)` pairs in canonical order.
    pub fn fields(&self) -> [(&'static str, &str); 7] {
        fields_of(self.values())
    }

    /// Whether every field is empty.
    pub fn is_empty(&self) -> bool {
        self.values().iter().all(|v| v.is_empty())
    }

    /// Validates the query the PostgreSQL-backend way (a superset of etcd's): any subset of
    /// fields, including gaps, but not all empty (`all query fields are empty`); with
    /// `require_username`, an empty username is `Empty username field`. The `version`
    /// field must be empty, a plain version or a constraint list
    /// (`Malformed constraint: latest`).
    pub fn validate(&self, require_username: bool) -> Result<(), QueryError> {
        if self.is_empty() {
            return Err(QueryError::AllEmpty);
        }
        if require_username && self.username.is_empty() {
            return Err(QueryError::EmptyUsername);
        }
        VersionFilter::parse(&self.version)?;
        Ok(())
    }

    /// Parses the `version` field into a filter (see [`VersionFilter`]).
    pub fn version_filter(&self) -> Result<VersionFilter, QueryError> {
        Ok(VersionFilter::parse(&self.version)?)
    }

    /// Compiles the query for matching many kites without re-parsing the version field.
    pub fn matcher(&self) -> Result<QueryMatcher<'_>, QueryError> {
        Ok(QueryMatcher {
            query: self,
            version: self.version_filter()?,
        })
    }

    /// Whether `kite` matches: every non-empty field except `version` equals the kite's
    /// field exactly, and the kite's version passes the version filter (a plain version is
    /// compared as a string, a constraint list by version semantics). A malformed version
    /// constraint matches nothing. Use [`KontrolQuery::matcher`] to match many kites.
    pub fn matches(&self, kite: &Kite) -> bool {
        self.matcher().is_ok_and(|m| m.matches(kite))
    }

    /// The token audience derived from this query (PROTOCOL.md 6.4): `name` non-empty →
    /// `/<username>/<environment>/<name>` (environment may be empty); else `environment`
    /// non-empty → `/<username>/<environment>`; else `/<username>` — just `/` when the
    /// username is empty too (the root audience, Q13).
    pub fn audience(&self) -> String {
        audience_of(&self.username, &self.environment, &self.name)
    }
}

impl fmt::Display for KontrolQuery {
    /// The same `/a/b/c/d/e/f/g` form as [`Kite`], empty fields included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_path(f, self.values())
    }
}

/// A [`KontrolQuery`] with its version filter parsed once (see [`KontrolQuery::matcher`]).
#[derive(Debug, Clone)]
pub struct QueryMatcher<'a> {
    query: &'a KontrolQuery,
    version: VersionFilter,
}

impl QueryMatcher<'_> {
    /// Whether `kite` matches (see [`KontrolQuery::matches`]).
    pub fn matches(&self, kite: &Kite) -> bool {
        let q = self.query.values();
        let k = kite.values();
        (0..7).all(|i| i == 3 || q[i].is_empty() || q[i] == k[i])
            && self.version.matches(&kite.version)
    }

    /// The parsed version filter.
    pub fn version_filter(&self) -> &VersionFilter {
        &self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kite() -> Kite {
        Kite {
            username: "devrim".into(),
            environment: "production".into(),
            name: "math".into(),
            version: "1.0.0".into(),
            region: "eu-west".into(),
            hostname: "worker-3".into(),
            id: "2f1c4a0e-7d3b-4c55-9a1e-0b6f3e2d9c11".into(),
        }
    }

    #[test]
    fn string_form_round_trips() {
        let s =
            "/devrim/production/math/1.0.0/eu-west/worker-3/2f1c4a0e-7d3b-4c55-9a1e-0b6f3e2d9c11";
        assert_eq!(kite().to_string(), s);
        assert_eq!(Kite::parse(s).unwrap(), kite());
        assert_eq!(s.parse::<Kite>().unwrap(), kite());
    }

    #[test]
    fn parses_like_go() {
        assert_eq!(Kite::parse(""), Err(IdentityError::InvalidString));
        assert_eq!(Kite::parse("devrim/x"), Err(IdentityError::InvalidString));
        let aud = Kite::parse("/devrim/production/math").unwrap();
        assert_eq!(
            (
                aud.username.as_str(),
                aud.environment.as_str(),
                aud.name.as_str()
            ),
            ("devrim", "production", "math")
        );
        assert_eq!(aud.version, "");
        assert_eq!(aud.id, "");
        let root = Kite::parse("/").unwrap();
        assert_eq!(root, Kite::default());
        let extra = Kite::parse("/a/b/c/d/e/f/g/h/i").unwrap();
        assert_eq!(extra.id, "g/h/i");
        assert_eq!(extra.hostname, "f");
    }

    #[test]
    fn generic_validation() {
        assert_eq!(kite().validate(), Ok(()));
        let mut k = kite();
        k.name.clear();
        assert_eq!(k.validate().unwrap_err().to_string(), "empty field");
        let mut k = kite();
        k.region = "eu/west".into();
        assert_eq!(
            k.validate().unwrap_err().to_string(),
            "fields cannot contain \"/\""
        );
        // Go quirk: an empty id only leaves a trailing slash.
        let mut k = kite();
        k.id.clear();
        assert_eq!(k.validate(), Ok(()));
        let mut k = kite();
        k.username.clear();
        assert_eq!(k.validate(), Err(IdentityError::EmptyField));
    }

    #[test]
    fn registration_validation() {
        assert_eq!(kite().validate_for_registration(), Ok(()));
        let mut k = kite();
        k.hostname.clear();
        assert_eq!(
            k.validate_for_registration().unwrap_err().to_string(),
            "Empty Kite field: hostname"
        );
        let mut k = kite();
        k.version = "1/0".into();
        assert_eq!(
            k.validate_for_registration().unwrap_err().to_string(),
            "Field \"version\" must not contain '/'"
        );
        let mut k = kite();
        k.id.clear();
        assert_eq!(
            k.validate_for_registration().unwrap_err().to_string(),
            "Empty Kite field: id"
        );
    }

    #[test]
    fn json_uses_the_seven_keys_and_tolerates_missing_ones() {
        let k: Kite = serde_json::from_str(r#"{"name":"math","username":"devrim"}"#).unwrap();
        assert_eq!(k.name, "math");
        assert_eq!(k.region, "");
        let v = serde_json::to_value(kite()).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        let mut expected = FIELD_KEYS.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected);
        let q: KontrolQuery = serde_json::from_str(r#"{"id":"x"}"#).unwrap();
        assert_eq!(q.id, "x");
        assert_eq!(q.username, "");
    }

    #[test]
    fn query_validation() {
        let empty = KontrolQuery::default();
        assert_eq!(
            empty.validate(false).unwrap_err().to_string(),
            "all query fields are empty"
        );
        let id_only = KontrolQuery {
            id: "x".into(),
            ..Default::default()
        };
        assert_eq!(id_only.validate(false), Ok(()));
        assert_eq!(
            id_only.validate(true).unwrap_err().to_string(),
            "Empty username field"
        );
        let gap = KontrolQuery {
            username: "a".into(),
            name: "math".into(),
            ..Default::default()
        };
        assert_eq!(gap.validate(true), Ok(()));
        let latest = KontrolQuery {
            username: "a".into(),
            version: "latest".into(),
            ..Default::default()
        };
        assert_eq!(
            latest.validate(true).unwrap_err().to_string(),
            "Malformed constraint: latest"
        );
        assert!(!latest.matches(&kite()));
    }

    #[test]
    fn query_matching() {
        let k = kite();
        assert!(k.to_query().matches(&k));
        let q = |f: &dyn Fn(&mut KontrolQuery)| {
            let mut q = KontrolQuery::default();
            f(&mut q);
            q
        };
        assert!(q(&|q| q.username = "devrim".into()).matches(&k));
        assert!(!q(&|q| q.username = "bob".into()).matches(&k));
        assert!(
            q(&|q| q.hostname = "worker-3".into()).matches(&k),
            "gaps allowed"
        );
        assert!(
            !q(&|q| q.region = "eu".into()).matches(&k),
            "exact, not prefix"
        );
        assert!(q(&|q| q.version = "1.0.0".into()).matches(&k));
        assert!(
            !q(&|q| q.version = "1.0".into()).matches(&k),
            "plain = string equality"
        );
        assert!(q(&|q| q.version = ">= 1.0, < 1.4".into()).matches(&k));
        assert!(q(&|q| q.version = "~> 1.0".into()).matches(&k));
        assert!(!q(&|q| q.version = "!= 1.0.0".into()).matches(&k));
        assert!(!q(&|q| q.version = "> 1.0.0".into()).matches(&k));
        let both = q(&|q| {
            q.name = "math".into();
            q.version = "< 2".into();
            q.id = "nope".into();
        });
        assert!(!both.matches(&k));
        let m = k.to_query();
        let m = m.matcher().unwrap();
        assert!(m.matches(&k));
        assert_eq!(m.version_filter(), &VersionFilter::Exact("1.0.0".into()));
    }

    #[test]
    fn audiences() {
        let q = |u: &str, e: &str, n: &str, id: &str| KontrolQuery {
            username: u.into(),
            environment: e.into(),
            name: n.into(),
            id: id.into(),
            ..Default::default()
        };
        assert_eq!(
            q("alice", "unknown", "math", "").audience(),
            "/alice/unknown/math"
        );
        assert_eq!(q("alice", "", "math", "").audience(), "/alice//math");
        assert_eq!(q("alice", "prod", "", "").audience(), "/alice/prod");
        assert_eq!(q("alice", "", "", "x").audience(), "/alice");
        assert_eq!(q("", "", "", "x").audience(), "/");
        assert_eq!(kite().audience(), "/devrim/production/math");
        assert_eq!(
            KontrolQuery::from(kite()).to_string(),
            kite().to_string(),
            "same string form"
        );
    }
}
