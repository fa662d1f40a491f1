//! Versions and version constraints for query filtering (PROTOCOL.md 1.3), after the rules of
//! HashiCorp's go-version that Go Kontrol uses.
//!
//! Private to the storage layer until `kite-protocol` provides `KontrolQuery::matches`.

use std::cmp::Ordering;

/// A parsed version: `v?N(.N)*` with an optional pre-release and build metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Version {
    /// Numeric segments, padded with zeros to at least three.
    segments: Vec<u64>,
    /// How many segments were written.
    written: usize,
    /// Pre-release (without the leading `-`), empty when none.
    pre: String,
}

impl Version {
    /// Parses a plain version (`1`, `1.0`, `v1.2.3`, `1.2.3-beta.1+meta`).
    pub(crate) fn parse(s: &str) -> Option<Version> {
        let rest = s.strip_prefix('v').unwrap_or(s);
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (nums, mut tail) = rest.split_at(num_end);
        let mut segments = Vec::with_capacity(3);
        for part in nums.split('.') {
            if part.is_empty() {
                return None;
            }
            segments.push(part.parse::<u64>().ok()?);
        }
        let written = segments.len();
        while segments.len() < 3 {
            segments.push(0);
        }
        let mut pre = String::new();
        if !tail.is_empty() && !tail.starts_with('+') {
            // "-pre" or, go-version style, a pre-release starting with a letter: "1.2beta".
            let body = match tail.strip_prefix('-') {
                Some(b) => b,
                None if tail.starts_with(|c: char| c.is_ascii_alphabetic() || c == '~') => tail,
                None => return None,
            };
            let end = body.find('+').unwrap_or(body.len());
            let (p, t) = body.split_at(end);
            if !valid_dotted(p) {
                return None;
            }
            pre = p.to_owned();
            tail = t;
        }
        if let Some(meta) = tail.strip_prefix('+') {
            if !valid_dotted(meta) {
                return None;
            }
        } else if !tail.is_empty() {
            return None;
        }
        Some(Version {
            segments,
            written,
            pre,
        })
    }

    fn compare(&self, other: &Version) -> Ordering {
        let n = self.segments.len().max(other.segments.len());
        for i in 0..n {
            let a = self.segments.get(i).copied().unwrap_or(0);
            let b = other.segments.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => compare_pre(&self.pre, &other.pre),
        }
    }
}

fn valid_dotted(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '~')
        })
}

fn compare_pre(a: &str, b: &str) -> Ordering {
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
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Pessimistic,
}

/// A list of AND-ed constraint clauses such as `>= 1.0, < 1.4` or `~> 1.1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Constraints(Vec<(Op, Version)>);

impl Constraints {
    /// Parses a constraint list; `None` if any clause is malformed.
    pub(crate) fn parse(s: &str) -> Option<Constraints> {
        let mut clauses = Vec::new();
        for clause in s.split(',') {
            let c = clause.trim();
            let (op, rest) = [
                ("!=", Op::Ne),
                (">=", Op::Ge),
                ("<=", Op::Le),
                ("~>", Op::Pessimistic),
                ("=", Op::Eq),
                (">", Op::Gt),
                ("<", Op::Lt),
            ]
            .iter()
            .find_map(|(p, op)| c.strip_prefix(p).map(|r| (*op, r)))
            .unwrap_or((Op::Eq, c));
            clauses.push((op, Version::parse(rest.trim())?));
        }
        Some(Constraints(clauses))
    }

    /// Whether `version` (a kite's version string) satisfies every clause. A version that
    /// does not parse satisfies nothing.
    pub(crate) fn check(&self, version: &str) -> bool {
        let Some(v) = Version::parse(version) else {
            return false;
        };
        self.0.iter().all(|(op, c)| check_clause(*op, &v, c))
    }
}

/// go-version's rule: a pre-release version only satisfies a constraint that names a
/// pre-release of the same base version.
fn prerelease_ok(v: &Version, c: &Version) -> bool {
    match (v.pre.is_empty(), c.pre.is_empty()) {
        (false, false) => v.segments == c.segments,
        (false, true) => false,
        _ => true,
    }
}

fn check_clause(op: Op, v: &Version, c: &Version) -> bool {
    let ord = v.compare(c);
    match op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Gt => prerelease_ok(v, c) && ord == Ordering::Greater,
        Op::Lt => prerelease_ok(v, c) && ord == Ordering::Less,
        Op::Ge => prerelease_ok(v, c) && ord != Ordering::Less,
        Op::Le => prerelease_ok(v, c) && ord != Ordering::Greater,
        Op::Pessimistic => {
            if !prerelease_ok(v, c) || (!c.pre.is_empty() && v.pre.is_empty()) {
                return false;
            }
            if ord == Ordering::Less {
                return false;
            }
            // All written segments but the last must be equal; the last may grow.
            let n = c.written;
            if n > v.segments.len() {
                return false;
            }
            if v.segments[..n - 1] != c.segments[..n - 1] {
                return false;
            }
            v.segments[n - 1] >= c.segments[n - 1]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_versions() {
        for ok in [
            "1",
            "1.0",
            "1.0.0",
            "v1.2.3",
            "1.2.3-beta+meta",
            "1.2.3-rc.1",
            "1.2beta",
            "0.0.1",
            "1.2.3.4",
        ] {
            assert!(Version::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "", "latest", ">= 1.0", "1..2", ".1", "1.", "~> 1.1", "1.0, 2.0", "1.0 ", "v", "1-",
        ] {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn constraints() {
        let c = |s: &str| Constraints::parse(s).unwrap();
        assert!(c(">= 1.0, < 1.4").check("1.0.0"));
        assert!(c(">= 1.0, < 1.4").check("1.3.9"));
        assert!(!c(">= 1.0, < 1.4").check("1.4.0"));
        assert!(!c(">= 1.0, < 1.4").check("0.9.0"));
        assert!(c("~> 1.1").check("1.1.0"));
        assert!(c("~> 1.1").check("1.9.0"));
        assert!(!c("~> 1.1").check("2.0.0"));
        assert!(!c("~> 1.1").check("1.0.9"));
        assert!(c("~> 1.1.2").check("1.1.5"));
        assert!(!c("~> 1.1.2").check("1.2.0"));
        assert!(c("1.0.0").check("1.0"));
        assert!(c("= 1.0.0").check("v1.0.0"));
        assert!(c("!= 1.0.0").check("1.0.1"));
        assert!(!c("!= 1.0.0").check("1.0.0"));
        assert!(c("> 1.0.0").check("1.0.1"));
        assert!(!c("> 1.0.0").check("1.0.1-beta"));
        assert!(c("> 1.0.0-alpha").check("1.0.0-beta"));
        assert!(!c("< 2").check("garbage"));
        assert!(Constraints::parse("latest").is_none());
        assert!(Constraints::parse(">= 1.0,").is_none());
        assert!(Constraints::parse("=> 1.0").is_none());
    }
}
