//! Input validation and query matching.

use std::time::Duration;

use kite_protocol::{IdentityError, Kite, KontrolQuery, QueryError, VersionFilter};

use super::error::ValidationError;
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
    k.values()
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
    // Kontrol's registration check (PROTOCOL.md 1.2), from the protocol crate.
    reg.kite.validate_for_registration().map_err(|e| match e {
        IdentityError::EmptyKiteField(f) => ValidationError::EmptyField(f),
        IdentityError::FieldContainsSlash(f) => ValidationError::SlashInField(f),
        // The registration check reports nothing else.
        _ => ValidationError::EmptyField("kite"),
    })?;
    for (field, value) in reg.kite.fields() {
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

/// A validated, compiled [`KontrolQuery`].
///
/// Rules (the protocol crate's `KontrolQuery::matches`): every non-empty field except
/// `version` must equal the kite's (any subset of fields may be set, gaps allowed); the
/// version goes through the protocol's [`VersionFilter`] (a plain version matches exactly,
/// anything else must be a constraint list the kite's version satisfies); a query with
/// every field empty is refused. Owned, so that watchers can keep it.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    query: KontrolQuery,
    version: VersionFilter,
}

impl Matcher {
    pub(crate) fn compile(q: &KontrolQuery, limits: &Limits) -> Result<Matcher, ValidationError> {
        q.validate(false).map_err(|e| match e {
            QueryError::Version(v) => ValidationError::Version(v),
            // AllEmpty (EmptyUsername is not asked for).
            _ => ValidationError::EmptyQuery,
        })?;
        for (i, (field, value)) in q.fields().into_iter().enumerate() {
            check_text(field, value, limits.max_field_len)?;
            if i != VERSION && value.contains('/') {
                return Err(ValidationError::SlashInField(field));
            }
        }
        Ok(Matcher {
            query: q.clone(),
            version: q.version_filter().map_err(|e| match e {
                QueryError::Version(v) => ValidationError::Version(v),
                _ => ValidationError::EmptyQuery,
            })?,
        })
    }

    /// Whether `kite` satisfies the query; the same rule as the protocol crate's
    /// `QueryMatcher::matches`, with the version filter parsed once.
    pub(crate) fn matches(&self, kite: &Kite) -> bool {
        let q = self.query.values();
        let k = kite.values();
        (0..7).all(|i| i == VERSION || q[i].is_empty() || q[i] == k[i])
            && self.version.matches(&kite.version)
    }

    /// The exact value of field `i` (canonical order), if the query pins it to one value.
    pub(crate) fn exact(&self, i: usize) -> Option<&str> {
        if i == VERSION {
            return match &self.version {
                VersionFilter::Exact(v) => Some(v),
                _ => None,
            };
        }
        let v = self.query.values()[i];
        (!v.is_empty()).then_some(v)
    }

    /// The longest run of exactly-matched fields starting at `username`: the fields that make
    /// a key prefix in identity order.
    pub(crate) fn exact_prefix(&self) -> Vec<&str> {
        (0..7).map_while(|i| self.exact(i)).collect()
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
        assert!(q(|q| q.version = ">= 1.0, < 1.4".into()).is_ok());
        assert_eq!(
            q(|q| q.name = "a/b".into()).unwrap_err().to_string(),
            "Field \"name\" must not contain '/'"
        );
    }

    /// The compiled matcher agrees with the protocol crate's `KontrolQuery::matches`.
    #[test]
    fn agrees_with_protocol_matches() {
        let kites = [
            kite("1.0.0"),
            kite("1.2.0"),
            kite("1.1.0-beta"),
            kite("v2"),
            kite("garbage"),
            Kite {
                region: "us".into(),
                ..kite("1.0.0")
            },
        ];
        let versions = [
            "",
            "1.0.0",
            "1.0",
            "~> 1.0",
            ">= 1.1, < 2",
            "!= 1.0.0",
            "> 1.1.0-alpha",
        ];
        for v in versions {
            for region in ["", "eu-west", "us"] {
                for user in ["", "devrim", "other"] {
                    let mut query = KontrolQuery {
                        username: user.into(),
                        version: v.into(),
                        region: region.into(),
                        ..Default::default()
                    };
                    if query.is_empty() {
                        query.id = "2f1c".into();
                    }
                    let m = Matcher::compile(&query, &Limits::default()).unwrap();
                    for k in &kites {
                        assert_eq!(m.matches(k), query.matches(k), "{query:?} {k:?}");
                    }
                }
            }
        }
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
