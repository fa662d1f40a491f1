//! The five-tuple that identifies every call: (From, FromCluster, To, ToCluster, Method).
//!
//! Mapping onto kite identity (PROTOCOL.md 1.1):
//!
//! | Element | Source |
//! |---|---|
//! | `from` | the caller kite's `name` |
//! | `from_cluster` | the caller's `environment`, plus `/region` when the region is set (`production/eu-west`) |
//! | `to` | the callee kite's `name` (for discovery clients: the query's `name`) |
//! | `to_cluster` | the callee's `environment[/region]` (for discovery clients: from the query; `*` when the query leaves the environment open) |
//! | `method` | the method name |
//!
//! A region is "set" when it is neither empty nor Go's default `unknown`; an empty
//! environment is `unknown` (Go's default). The five-tuple keys circuit breakers, labels
//! metrics and is recorded on spans. Label values are sanitised: control characters become
//! `_` and values are cut at [`MAX_LABEL_LEN`] bytes.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use kite::protocol::Kite as KiteIdentity;

/// Longest label value kept (bytes); longer values are cut.
pub const MAX_LABEL_LEN: usize = 128;

/// The value used for callers beyond a [`CallerInterner`]'s bound.
pub const OTHER: &str = "_other";

/// A cluster name: `environment`, or `environment/region` when the region is set.
///
/// ```
/// assert_eq!(kite_governance::cluster_of("production", "eu-west"), "production/eu-west");
/// assert_eq!(kite_governance::cluster_of("production", "unknown"), "production");
/// assert_eq!(kite_governance::cluster_of("", ""), "unknown");
/// ```
pub fn cluster_of(environment: &str, region: &str) -> String {
    let env = if environment.is_empty() {
        "unknown"
    } else {
        environment
    };
    if region.is_empty() || region == "unknown" {
        env.to_string()
    } else {
        format!("{env}/{region}")
    }
}

/// The cluster of a kite identity (see [`cluster_of`]).
pub fn cluster(kite: &KiteIdentity) -> String {
    cluster_of(&kite.environment, &kite.region)
}

/// A label value: control characters replaced, cut at [`MAX_LABEL_LEN`] bytes.
pub fn label(s: &str) -> Arc<str> {
    if s.len() <= MAX_LABEL_LEN && !s.chars().any(char::is_control) {
        return Arc::from(s);
    }
    let mut out = String::with_capacity(s.len().min(MAX_LABEL_LEN));
    for c in s.chars() {
        if out.len() + c.len_utf8() > MAX_LABEL_LEN {
            break;
        }
        out.push(if c.is_control() { '_' } else { c });
    }
    Arc::from(out)
}

/// The identity of one call: (From, FromCluster, To, ToCluster, Method). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    /// The caller's kite name.
    pub from: Arc<str>,
    /// The caller's cluster (`environment[/region]`).
    pub from_cluster: Arc<str>,
    /// The callee's kite name.
    pub to: Arc<str>,
    /// The callee's cluster (`environment[/region]`).
    pub to_cluster: Arc<str>,
    /// The method.
    pub method: Arc<str>,
}

impl FiveTuple {
    /// A five-tuple from its five parts (sanitised as label values).
    pub fn new(from: &str, from_cluster: &str, to: &str, to_cluster: &str, method: &str) -> Self {
        FiveTuple {
            from: label(from),
            from_cluster: label(from_cluster),
            to: label(to),
            to_cluster: label(to_cluster),
            method: label(method),
        }
    }

    /// The five-tuple of a call from `caller` to `callee`.
    pub fn between(caller: &KiteIdentity, callee: &KiteIdentity, method: &str) -> Self {
        FiveTuple::new(
            &caller.name,
            &cluster(caller),
            &callee.name,
            &cluster(callee),
            method,
        )
    }

    /// The same tuple for another method.
    pub fn with_method(&self, method: &str) -> Self {
        FiveTuple {
            method: label(method),
            ..self.clone()
        }
    }

    /// The five (label name, value) pairs, in order.
    pub fn labels(&self) -> [(&'static str, &str); 5] {
        [
            ("from", &self.from),
            ("from_cluster", &self.from_cluster),
            ("to", &self.to),
            ("to_cluster", &self.to_cluster),
            ("method", &self.method),
        ]
    }
}

impl fmt::Debug for FiveTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "({}, {}, {}, {}, {})",
            self.from, self.from_cluster, self.to, self.to_cluster, self.method
        )
    }
}

/// The fixed part of the five-tuple of a client: who calls whom. `route.tuple(method)`
/// completes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// The caller's kite name.
    pub from: Arc<str>,
    /// The caller's cluster.
    pub from_cluster: Arc<str>,
    /// The callee's kite name.
    pub to: Arc<str>,
    /// The callee's cluster.
    pub to_cluster: Arc<str>,
}

impl Route {
    /// A route from the local kite `from` to the kites named `to` in cluster `to_cluster`.
    pub fn new(from: &KiteIdentity, to: &str, to_cluster: &str) -> Route {
        Route {
            from: label(&from.name),
            from_cluster: label(&cluster(from)),
            to: label(to),
            to_cluster: label(to_cluster),
        }
    }

    /// The route from `from` to one known kite.
    pub fn to_kite(from: &KiteIdentity, to: &KiteIdentity) -> Route {
        Route::new(from, &to.name, &cluster(to))
    }

    /// The five-tuple of a call of `method` on this route.
    pub fn tuple(&self, method: &str) -> FiveTuple {
        FiveTuple {
            from: self.from.clone(),
            from_cluster: self.from_cluster.clone(),
            to: self.to.clone(),
            to_cluster: self.to_cluster.clone(),
            method: label(method),
        }
    }
}

type Interned = (Arc<str>, Arc<str>);

/// Interns caller (name, cluster) pairs for server-side five-tuples, bounding how many
/// distinct callers are tracked: beyond `max` callers, new ones are reported as
/// [`OTHER`] (so a flood of made-up caller names cannot grow metrics or limiter state
/// without bound).
#[derive(Debug)]
pub struct CallerInterner {
    max: usize,
    map: Mutex<HashMap<(String, String), Interned>>,
    other: Arc<str>,
}

impl CallerInterner {
    /// Tracks at most `max` distinct callers.
    pub fn new(max: usize) -> Self {
        CallerInterner {
            max,
            map: Mutex::new(HashMap::new()),
            other: Arc::from(OTHER),
        }
    }

    /// The interned (name, cluster) of a caller.
    pub fn intern(&self, caller: &KiteIdentity) -> (Arc<str>, Arc<str>) {
        let cluster = cluster(caller);
        let mut map = match self.map.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let key = (caller.name.clone(), cluster);
        if let Some(v) = map.get(&key) {
            return v.clone();
        }
        if map.len() >= self.max {
            return (self.other.clone(), self.other.clone());
        }
        let v = (label(&key.0), label(&key.1));
        map.insert(key, v.clone());
        v
    }

    /// The server-side five-tuple of a request from `caller` to `local`.
    pub fn tuple(&self, caller: &KiteIdentity, local: &Route, method: &str) -> FiveTuple {
        let (from, from_cluster) = self.intern(caller);
        FiveTuple {
            from,
            from_cluster,
            to: local.to.clone(),
            to_cluster: local.to_cluster.clone(),
            method: label(method),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sanitised_and_bounded() {
        assert_eq!(&*label("a\nb\"c"), "a_b\"c");
        assert_eq!(label(&"x".repeat(500)).len(), MAX_LABEL_LEN);
        assert_eq!(label(&"é".repeat(100)).len(), MAX_LABEL_LEN);
    }

    #[test]
    fn interner_bounds_callers() {
        let i = CallerInterner::new(2);
        let k = |n: &str| KiteIdentity {
            name: n.into(),
            environment: "prod".into(),
            region: "eu".into(),
            ..Default::default()
        };
        assert_eq!(&*i.intern(&k("a")).0, "a");
        assert_eq!(&*i.intern(&k("a")).1, "prod/eu");
        assert_eq!(&*i.intern(&k("b")).0, "b");
        assert_eq!(&*i.intern(&k("c")).0, OTHER);
        assert_eq!(&*i.intern(&k("a")).0, "a");
    }
}
