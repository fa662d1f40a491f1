//! Versions and version constraints as used in Kontrol queries (PROTOCOL.md 1.3).
//!
//! The grammar and semantics are those of the version library Go Kontrol uses:
//!
//! * A **version** is an optional `v`, one or more dot-separated numeric segments, an
//!   optional pre-release (`-beta.1`, or directly attached letters as in `1.0beta`) and
//!   optional build metadata (`+meta`, ignored when comparing). Missing segments count as
//!   zero (`1.0` == `1.0.0`).
//! * A **constraint list** is comma-separated clauses, each an optional operator (`=`,
//!   `!=`, `>`, `<`, `>=`, `<=`, `~>`; none means `=`) and a version, surrounded by
//!   optional whitespace. All clauses must hold.
//! * `~> 1.2` means `>= 1.2` and the same leading segments except the last one given
//!   (`~> 1.2` allows `1.x` with x ≥ 2; `~> 1.2.3` allows `1.2.x` with x ≥ 3).
//! * Pre-releases: a pre-release version only satisfies `>`, `<`, `>=`, `<=` and `~>`
//!   clauses whose own version is a pre-release of the same segments; a clause with a
//!   pre-release never matches release versions through `~>`.
//!
//! ```
//! use kite_protocol::version::{Constraints, Version};
//!
//! let c = Constraints::parse(">= 1.0, < 1.4").unwrap();
//! assert!(c.matches(&Version::parse("1.3.9").unwrap()));
//! assert!(!c.matches(&Version::parse("1.4.0").unwrap()));
//! assert_eq!(
//!     Constraints::parse("latest").unwrap_err().to_string(),
//!     "Malformed constraint: latest"
//! );
//! ```

use std::cmp::Ordering;
use std::fmt;

/// Why a version or constraint did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The string is not a version.
    #[error("Malformed version: {0}")]
    MalformedVersion(String),
    /// A constraint clause is neither a version nor an operator followed by a version.
    #[error("Malformed constraint: {0}")]
    MalformedConstraint(String),
}

/// A parsed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Numeric segments as written (at least one).
    segments: Vec<u64>,
    /// Pre-release identifier without the leading `-` (empty when none).
    pre: String,
    /// Build metadata without the leading `+` (empty when none).
    meta: String,
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'~'
}

/// Consumes `ident ( "." ident )*` starting at `i`; returns the end index, or `None` when
/// an identifier is empty.
fn dotted_idents(s: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let start = i;
        while i < s.len() && is_ident_char(s[i]) {
            i += 1;
        }
        if i == start {
            return None;
        }
        if i < s.len() && s[i] == b'.' {
            i += 1;
        } else {
            return Some(i);
        }
    }
}

impl Version {
    /// Parses a version such as `1.0.0`, `1.0`, `1`, `v1.2.3` or `1.2.3-beta+meta`.
    pub fn parse(text: &str) -> Result<Version, VersionError> {
        let err = || VersionError::MalformedVersion(text.to_string());
        let s = text.as_bytes();
        let mut i = usize::from(s.first() == Some(&b'v'));
        let mut segments = Vec::with_capacity(3);
        loop {
            let start = i;
            while i < s.len() && s[i].is_ascii_digit() {
                i += 1;
            }
            if i == start {
                return Err(err());
            }
            let n: u64 = text[start..i].parse().map_err(|_| err())?;
            segments.push(n);
            // A dot continues the segments only when a digit follows.
            if i + 1 < s.len() && s[i] == b'.' && s[i + 1].is_ascii_digit() {
                i += 1;
            } else {
                break;
            }
        }
        let mut pre = "";
        if i < s.len() && s[i] != b'+' {
            // `-ident...` or letters attached directly (`1.0beta`).
            let start = if s[i] == b'-' {
                i + 1
            } else if s[i].is_ascii_alphabetic() || s[i] == b'~' {
                i
            } else {
                return Err(err());
            };
            let end = dotted_idents(s, start).ok_or_else(err)?;
            pre = &text[start..end];
            i = end;
        }
        let mut meta = "";
        if i < s.len() {
            if s[i] != b'+' {
                return Err(err());
            }
            let end = dotted_idents(s, i + 1).ok_or_else(err)?;
            meta = &text[i + 1..end];
            i = end;
        }
        if i != s.len() {
            return Err(err());
        }
        Ok(Version {
            segments,
            pre: pre.to_string(),
            meta: meta.to_string(),
        })
    }

    /// The numeric segments as written.
    pub fn segments(&self) -> &[u64] {
        &self.segments
    }

    /// The pre-release part (without `-`), empty when none.
    pub fn prerelease(&self) -> &str {
        &self.pre
    }

    /// The build metadata (without `+`), empty when none.
    pub fn metadata(&self) -> &str {
        &self.meta
    }

    fn segment(&self, i: usize) -> u64 {
        self.segments.get(i).copied().unwrap_or(0)
    }

    fn cmp_segments(&self, other: &Version) -> Ordering {
        let n = self.segments.len().max(other.segments.len());
        (0..n)
            .map(|i| self.segment(i).cmp(&other.segment(i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

fn cmp_prerelease(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        (false, false) => {}
    }
    let mut ai = a.split('.');
    let mut bi = b.split('.');
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(p), Ok(q)) => p.cmp(&q),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if o.is_ne() {
                    return o;
                }
            }
        }
    }
}

impl Ord for Version {
    /// Precedence order: segments (missing ones are zero), then pre-release (a release is
    /// greater than its pre-releases). Metadata is ignored, so `Ord` is coarser than `Eq`.
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_segments(other)
            .then_with(|| cmp_prerelease(&self.pre, &other.pre))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{s}")?;
        }
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre)?;
        }
        if !self.meta.is_empty() {
            write!(f, "+{}", self.meta)?;
        }
        Ok(())
    }
}

/// A constraint operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `=` (or no operator).
    Eq,
    /// `!=`.
    Ne,
    /// `>`.
    Gt,
    /// `<`.
    Lt,
    /// `>=`.
    Ge,
    /// `<=`.
    Le,
    /// `~>` (pessimistic).
    Pessimistic,
}

impl Operator {
    fn as_str(self) -> &'static str {
        match self {
            Operator::Eq => "=",
            Operator::Ne => "!=",
            Operator::Gt => ">",
            Operator::Lt => "<",
            Operator::Ge => ">=",
            Operator::Le => "<=",
            Operator::Pessimistic => "~>",
        }
    }
}

/// One clause of a constraint list: an operator and a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// The operator.
    pub op: Operator,
    /// The version it compares against.
    pub version: Version,
}

/// Go's `\s`: ASCII whitespace without vertical tab.
fn is_go_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c')
}

impl Constraint {
    /// Parses one clause such as `>= 1.0` or `1.2.3`.
    pub fn parse(clause: &str) -> Result<Constraint, VersionError> {
        let err = || VersionError::MalformedConstraint(clause.to_string());
        let s = clause.trim_matches(is_go_space);
        // Longest operators first.
        const OPS: [(&str, Operator); 7] = [
            (">=", Operator::Ge),
            ("<=", Operator::Le),
            ("!=", Operator::Ne),
            ("~>", Operator::Pessimistic),
            ("=", Operator::Eq),
            (">", Operator::Gt),
            ("<", Operator::Lt),
        ];
        let (op, rest) = OPS
            .iter()
            .find_map(|(text, op)| s.strip_prefix(text).map(|rest| (*op, rest)))
            .unwrap_or((Operator::Eq, s));
        let version = Version::parse(rest.trim_start_matches(is_go_space)).map_err(|_| err())?;
        Ok(Constraint { op, version })
    }

    /// Whether `v` satisfies this clause.
    pub fn matches(&self, v: &Version) -> bool {
        let c = &self.version;
        match self.op {
            Operator::Eq => v.cmp(c).is_eq(),
            Operator::Ne => v.cmp(c).is_ne(),
            Operator::Gt => prerelease_ok(v, c) && v > c,
            Operator::Lt => prerelease_ok(v, c) && v < c,
            Operator::Ge => prerelease_ok(v, c) && v >= c,
            Operator::Le => prerelease_ok(v, c) && v <= c,
            Operator::Pessimistic => {
                if !prerelease_ok(v, c) || (!c.pre.is_empty() && v.pre.is_empty()) || v < c {
                    return false;
                }
                // All given segments but the last must be equal.
                let fixed = c.segments.len().saturating_sub(1);
                (0..fixed).all(|i| v.segment(i) == c.segment(i))
            }
        }
    }
}

/// Pre-release rule shared by the ordering operators: a pre-release version only matches
/// a clause whose version is a pre-release of the same segments.
fn prerelease_ok(v: &Version, c: &Version) -> bool {
    match (v.pre.is_empty(), c.pre.is_empty()) {
        (false, false) => v.cmp_segments(c).is_eq(),
        (false, true) => false,
        _ => true,
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op.as_str(), self.version)
    }
}

/// A list of clauses that must all hold (`>= 1.0, < 1.4`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraints(pub Vec<Constraint>);

impl Constraints {
    /// Parses a comma-separated constraint list. The error names the first bad clause:
    /// `Malformed constraint: latest`.
    pub fn parse(text: &str) -> Result<Constraints, VersionError> {
        text.split(',')
            .map(Constraint::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Constraints)
    }

    /// Whether `v` satisfies every clause.
    pub fn matches(&self, v: &Version) -> bool {
        self.0.iter().all(|c| c.matches(v))
    }

    /// Parses `version` and checks it; an unparsable version matches nothing.
    pub fn matches_str(&self, version: &str) -> bool {
        Version::parse(version).is_ok_and(|v| self.matches(&v))
    }
}

impl fmt::Display for Constraints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// How the `version` field of a Kontrol query selects kites (PROTOCOL.md 1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionFilter {
    /// Empty field: any version.
    Any,
    /// A plain version: the kite's version string must be exactly this string.
    Exact(String),
    /// A constraint list: the kite's version must parse and satisfy it.
    Constraints(Constraints),
}

impl VersionFilter {
    /// Classifies a query's `version` field: empty → [`VersionFilter::Any`], a plain
    /// version → [`VersionFilter::Exact`], else a constraint list (or its error).
    pub fn parse(field: &str) -> Result<VersionFilter, VersionError> {
        if field.is_empty() {
            Ok(VersionFilter::Any)
        } else if Version::parse(field).is_ok() {
            Ok(VersionFilter::Exact(field.to_string()))
        } else {
            Constraints::parse(field).map(VersionFilter::Constraints)
        }
    }

    /// Whether a kite with version string `version` passes the filter.
    pub fn matches(&self, version: &str) -> bool {
        match self {
            VersionFilter::Any => true,
            VersionFilter::Exact(v) => v == version,
            VersionFilter::Constraints(c) => c.matches_str(version),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn parses_plain_versions() {
        for ok in [
            "1.0.0",
            "1.0",
            "1",
            "v1.2.3",
            "1.2.3-beta+meta",
            "1.2.3-beta.1",
            "1.0beta",
            "1.2.3+build.5",
            "1.2.3.4",
            "0.0.1",
        ] {
            assert!(Version::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "latest",
            "v",
            "1.",
            ".1",
            "1..2",
            "1.2.3-",
            "1.2.3+",
            "1.2.3 ",
            " 1",
            ">=1",
            "1.2.3-a..b",
            "1.2.3-a+",
            "1_2",
            "99999999999999999999999",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
        let x = v("v1.2.3-beta.2+meta");
        assert_eq!(x.segments(), &[1, 2, 3]);
        assert_eq!(x.prerelease(), "beta.2");
        assert_eq!(x.metadata(), "meta");
        assert_eq!(x.to_string(), "1.2.3-beta.2+meta");
    }

    #[test]
    fn orders_versions() {
        assert_eq!(v("1.0").cmp(&v("1.0.0")), Ordering::Equal);
        assert!(v("1.0.0-alpha") < v("1.0.0"));
        assert!(v("1.0.0-alpha") < v("1.0.0-alpha.1"));
        assert!(v("1.0.0-alpha.1") < v("1.0.0-alpha.beta"));
        assert!(v("1.0.0-beta.2") < v("1.0.0-beta.11"));
        assert!(v("1.0.0-rc.1") < v("1.0.0"));
        assert!(v("1.2.10") > v("1.2.9"));
        assert_eq!(v("1.2.3+a").cmp(&v("1.2.3+b")), Ordering::Equal);
    }

    #[test]
    fn constraint_lists() {
        let c = Constraints::parse(">= 1.0, < 1.4").unwrap();
        assert!(c.matches(&v("1.0.0")));
        assert!(c.matches(&v("1.3.99")));
        assert!(!c.matches(&v("1.4.0")));
        assert!(!c.matches(&v("0.9")));
        assert!(
            !c.matches(&v("1.3.0-beta")),
            "pre-release vs release clause"
        );

        let p = Constraints::parse("~> 1.1").unwrap();
        assert!(p.matches(&v("1.1.0")));
        assert!(p.matches(&v("1.9.3")));
        assert!(!p.matches(&v("2.0.0")));
        assert!(!p.matches(&v("1.0.9")));
        let p = Constraints::parse("~>1.2.3").unwrap();
        assert!(p.matches(&v("1.2.7")));
        assert!(!p.matches(&v("1.3.0")));
        let p = Constraints::parse("~> 1").unwrap();
        assert!(p.matches(&v("3.0.0")));

        let ne = Constraints::parse("!= 1.0.0").unwrap();
        assert!(!ne.matches(&v("1.0")));
        assert!(ne.matches(&v("1.0.1")));
        let eq = Constraints::parse("=1.0").unwrap();
        assert!(eq.matches(&v("1.0.0")));
        let gt = Constraints::parse(" > 1.0.0-beta ").unwrap();
        assert!(gt.matches(&v("1.0.0-rc")));
        assert!(gt.matches(&v("1.0.0")));
        assert!(
            !gt.matches(&v("1.0.1-rc")),
            "other segments' pre-releases never match"
        );

        assert_eq!(
            Constraints::parse("latest").unwrap_err().to_string(),
            "Malformed constraint: latest"
        );
        assert_eq!(
            Constraints::parse(">= 1.0, <x").unwrap_err().to_string(),
            "Malformed constraint:  <x",
            "the clause as written, like Go"
        );
        assert!(Constraints::parse("").is_err());
        assert!(Constraints::parse(">= 1.0,").is_err());
        assert!(Constraints::parse("=> 1.0").is_err());
    }

    #[test]
    fn version_filters() {
        assert_eq!(VersionFilter::parse("").unwrap(), VersionFilter::Any);
        let exact = VersionFilter::parse("1.0").unwrap();
        assert!(exact.matches("1.0"));
        assert!(!exact.matches("1.0.0"), "plain versions compare as strings");
        let c = VersionFilter::parse(">= 1.0").unwrap();
        assert!(c.matches("1.0.0"));
        assert!(!c.matches("garbage"));
        assert!(VersionFilter::parse("latest").is_err());
    }
}
