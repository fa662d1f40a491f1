//! Input validation and query matching.

use std::time::Duration;

use kite_protocol::{Kite, KontrolQuery};

use super::error::ValidationError;
use super::version::{Constraints, Version};
use super::{Limits, NewKeyPair, Registration};

/// JSON keys of the seven identity fields, in canonical order.
pub(crate) const FIELDS: [&str; 7] = [
    "username",
    "environment",
    "name",
    "version",
    "region",
    "hostname",
    "id",
];

/// Index of `version` in [`FIELDS`].
pub(crate) const VERSION: usize = 3;

/// The seven fields of a kite, in canonical order.
pub(crate) fn kite_fields(k: &Kite) -> [&str; 7] {
    [
        &k.username,
        &k.environment,
        &k.name,
        &k.version,
        &k.region,
        &k.hostname,
        &k.id,
    ]
}

fn query_fields(q: &KontrolQuery) -> [&str; 7] {
    [
        &q.username,
        &q.environment,
        &q.name,
        &q.version,
        &q.region,
        &q.hostname,
        &q.id,
    ]
}

fn check_text(field: &'static str, value: &str, limit: usize) -> Result<(), ValidationError> {
    if value.len() > limit {
        return Err(ValidationError::FieldTooLong {
            field,
            len: value.len(),
            limit,
        });
    }
    if value.contains('\0') {
        return Err(ValidationError::NulInField(field));
    }
    Ok(())
}

/// The registration check of PROTOCOL.md 1.2 plus the storage limits.
pub(crate) fn validate_registration(
    reg: &Registration,
    limits: &Limits,
) -> Result<(), ValidationError> {
    for (field, value) in FIELDS.iter().zip(kite_fields(&reg.kite)) {
        if value.is_empty() {
            return Err(ValidationError::EmptyField(field));
        }
        if value.contains('/') {
            return Err(ValidationError::SlashInField(field));
        }
        check_text(field, value, limits.max_field_len)?;
    }
    if reg.url.is_empty() {
        return Err(ValidationError::EmptyUrl);
    }
    check_text("url", &reg.url, limits.max_url_len)?;
    if reg.key_id.is_empty() {
        return Err(ValidationError::EmptyKeyId);
    }
    check_text("key_id", &reg.key_id, limits.max_field_len)?;
    Ok(())
}

/// Checks a kite id given alone (refresh, delete).
pub(crate) fn validate_id(id: &str, limits: &Limits) -> Result<(), ValidationError> {
    if id.is_empty() {
        return Err(ValidationError::EmptyField("id"));
    }
    if id.contains('/') {
        return Err(ValidationError::SlashInField("id"));
    }
    check_text("id", id, limits.max_field_len)
}

pub(crate) fn validate_ttl(ttl: Duration, limits: &Limits) -> Result<(), ValidationError> {
    if ttl.is_zero() || ttl > limits.max_ttl {
        return Err(ValidationError::InvalidTtl {
            ttl,
            max: limits.max_ttl,
        });
    }
    Ok(())
}

/// A validated key pair: trimmed PEMs, an id (generated when not given).
#[derive(Debug, Clone)]
pub(crate) struct CheckedKeyPair {
    pub id: String,
    /// Whether the caller chose the id.
    pub explicit_id: bool,
    pub public: String,
    pub private: String,
}

/// Upper bound on a PEM's length (a 16384-bit RSA private key is about 12.7 KiB).
const MAX_PEM_LEN: usize = 64 * 1024;

pub(crate) fn validate_key_pair(
    pair: &NewKeyPair,
    limits: &Limits,
) -> Result<CheckedKeyPair, ValidationError> {
    let public = pair.public.trim();
    let private = pair.private.trim();
    if public.is_empty() {
        return Err(ValidationError::EmptyKeyPairField("public key"));
    }
    if private.is_empty() {
        return Err(ValidationError::EmptyKeyPairField("private key"));
    }
    check_text("public", public, MAX_PEM_LEN)?;
    check_text("private", private, MAX_PEM_LEN)?;
    let (id, explicit_id) = match pair.id.as_deref().map(str::trim) {
        Some("") => return Err(ValidationError::EmptyKeyPairField("id")),
        Some(id) => {
            if id.contains('/') {
                return Err(ValidationError::SlashInField("id"));
            }
            check_text("id", id, limits.max_field_len)?;
            (id.to_owned(), true)
        }
        None => (uuid::Uuid::new_v4().to_string(), false),
    };
    Ok(CheckedKeyPair {
        id,
        explicit_id,
        public: public.to_owned(),
        private: private.to_owned(),
    })
}

/// How a query constrains the version.
#[derive(Debug, Clone)]
pub(crate) enum VersionMatch {
    /// `version` empty.
    Any,
    /// A plain version: exact string match.
    Exact(String),
    /// A constraint list.
    Constraint(Constraints),
}

/// A validated, compiled [`KontrolQuery`].
///
/// Rules: every non-empty field must be equal to the kite's (any subset of fields may be set,
/// gaps allowed); a `version` that is a plain version matches exactly, otherwise it is a
/// constraint list the kite's version must satisfy; a query with every field empty is refused.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    /// Exact values, `None` for "don't care"; the version slot is always `None` (see
    /// `version`).
    exact: [Option<String>; 7],
    version: VersionMatch,
}

impl Matcher {
    pub(crate) fn compile(q: &KontrolQuery, limits: &Limits) -> Result<Matcher, ValidationError> {
        let fields = query_fields(q);
        if fields.iter().all(|f| f.is_empty()) {
            return Err(ValidationError::EmptyQuery);
        }
        let mut exact: [Option<String>; 7] = Default::default();
        let mut version = VersionMatch::Any;
        for (i, (field, value)) in FIELDS.iter().zip(fields).enumerate() {
            if value.is_empty() {
                continue;
            }
            check_text(field, value, limits.max_field_len)?;
            if i == VERSION {
                version = if Version::parse(value).is_some() {
                    VersionMatch::Exact(value.to_owned())
                } else {
                    match Constraints::parse(value) {
                        Some(c) => VersionMatch::Constraint(c),
                        None => return Err(ValidationError::MalformedConstraint(value.to_owned())),
                    }
                };
                continue;
            }
            if value.contains('/') {
                return Err(ValidationError::SlashInField(field));
            }
            exact[i] = Some(value.to_owned());
        }
        if let VersionMatch::Exact(v) = &version {
            exact[VERSION] = Some(v.clone());
        }
        Ok(Matcher { exact, version })
    }

    /// Whether `kite` satisfies the query.
    pub(crate) fn matches(&self, kite: &Kite) -> bool {
        let fields = kite_fields(kite);
        for (want, have) in self.exact.iter().zip(fields) {
            if let Some(w) = want {
                if w != have {
                    return false;
                }
            }
        }
        match &self.version {
            VersionMatch::Constraint(c) => c.check(&kite.version),
            _ => true,
        }
    }

    /// The exact value of field `i` (canonical order), if the query pins it to one value.
    pub(crate) fn exact(&self, i: usize) -> Option<&str> {
        self.exact[i].as_deref()
    }

    /// The longest run of exactly-matched fields starting at `username`: the fields that make
    /// a key prefix in identity order.
    pub(crate) fn exact_prefix(&self) -> Vec<&str> {
        self.exact.iter().map_while(|f| f.as_deref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kite(v: &str) -> Kite {
        Kite {
            username: "devrim".into(),
            environment: "production".into(),
            name: "math".into(),
            version: v.into(),
            region: "eu-west".into(),
            hostname: "worker-3".into(),
            id: "2f1c".into(),
        }
    }

    fn q(f: impl FnOnce(&mut KontrolQuery)) -> Result<Matcher, ValidationError> {
        let mut q = KontrolQuery::default();
        f(&mut q);
        Matcher::compile(&q, &Limits::default())
    }

    #[test]
    fn matching_rules() {
        let k = kite("1.0.0");
        assert!(q(|q| q.username = "devrim".into()).unwrap().matches(&k));
        assert!(q(|q| q.id = "2f1c".into()).unwrap().matches(&k));
        assert!(q(|q| {
            q.username = "devrim".into();
            q.hostname = "worker-3".into();
        })
        .unwrap()
        .matches(&k));
        assert!(!q(|q| q.region = "eu".into()).unwrap().matches(&k));
        assert!(!q(|q| q.version = "1.0".into()).unwrap().matches(&k));
        assert!(q(|q| q.version = "~> 1.0".into()).unwrap().matches(&k));
        assert!(!q(|q| q.version = "> 1.0.0".into()).unwrap().matches(&k));
    }

    #[test]
    fn query_errors() {
        assert_eq!(q(|_| {}).unwrap_err(), ValidationError::EmptyQuery);
        assert_eq!(
            q(|q| q.version = "latest".into()).unwrap_err().to_string(),
            "Malformed constraint: latest"
        );
        assert_eq!(
            q(|q| q.name = "a/b".into()).unwrap_err().to_string(),
            "Field \"name\" must not contain '/'"
        );
    }

    #[test]
    fn prefixes() {
        let m = q(|q| {
            q.username = "u".into();
            q.environment = "e".into();
            q.version = "1.0.0".into();
        })
        .unwrap();
        assert_eq!(m.exact_prefix(), vec!["u", "e"]);
        let m = q(|q| {
            q.username = "u".into();
            q.environment = "e".into();
            q.name = "n".into();
            q.version = "1.0.0".into();
        })
        .unwrap();
        assert_eq!(m.exact_prefix(), vec!["u", "e", "n", "1.0.0"]);
        let m = q(|q| {
            q.username = "u".into();
            q.environment = "e".into();
            q.name = "n".into();
            q.version = ">= 1.0.0".into();
            q.region = "r".into();
        })
        .unwrap();
        assert_eq!(m.exact_prefix(), vec!["u", "e", "n"]);
    }
}
