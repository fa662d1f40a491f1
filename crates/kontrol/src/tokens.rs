//! The token cache (PROTOCOL.md 6.4): signed tokens keyed by (audience, username, issuer,
//! key-pair id), reused for `ttl − leeway`, bounded in size. Lookups do not allocate.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

struct Entry {
    audience: Box<str>,
    username: Box<str>,
    issuer: Box<str>,
    key_id: Box<str>,
    token: Box<str>,
    expires: Instant,
}

impl Entry {
    fn is(&self, key: &TokenKey<'_>) -> bool {
        &*self.audience == key.audience
            && &*self.username == key.username
            && &*self.issuer == key.issuer
            && &*self.key_id == key.key_id
    }
}

/// What a cached token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TokenKey<'a> {
    pub audience: &'a str,
    pub username: &'a str,
    pub issuer: &'a str,
    pub key_id: &'a str,
}

/// Bounded cache of signed tokens.
pub(crate) struct TokenCache {
    buckets: Mutex<Buckets>,
    hasher: RandomState,
    capacity: usize,
    ttl: Duration,
}

#[derive(Default)]
struct Buckets {
    map: HashMap<u64, Vec<Entry>>,
    len: usize,
}

impl TokenCache {
    /// A cache holding at most `capacity` tokens (0 disables caching), each for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        TokenCache {
            buckets: Mutex::new(Buckets::default()),
            hasher: RandomState::new(),
            capacity,
            ttl,
        }
    }

    fn hash(&self, key: &TokenKey<'_>) -> u64 {
        self.hasher.hash_one(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached token for `key`, if still fresh at `now`.
    pub fn get(&self, key: &TokenKey<'_>, now: Instant) -> Option<String> {
        if self.capacity == 0 {
            return None;
        }
        let h = self.hash(key);
        let buckets = self.lock();
        buckets
            .map
            .get(&h)?
            .iter()
            .find(|e| e.is(key) && e.expires > now)
            .map(|e| String::from(&*e.token))
    }

    /// Caches `token` for `key` (replacing any previous one) until `now + ttl`.
    pub fn insert(&self, key: &TokenKey<'_>, token: &str, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let h = self.hash(key);
        let expires = now + self.ttl;
        let mut buckets = self.lock();
        if let Some(entry) = buckets
            .map
            .get_mut(&h)
            .and_then(|bucket| bucket.iter_mut().find(|e| e.is(key)))
        {
            entry.token = token.into();
            entry.expires = expires;
            return;
        }
        if buckets.len >= self.capacity {
            Self::evict(&mut buckets, now, self.capacity - self.capacity / 8);
        }
        buckets.map.entry(h).or_default().push(Entry {
            audience: key.audience.into(),
            username: key.username.into(),
            issuer: key.issuer.into(),
            key_id: key.key_id.into(),
            token: token.into(),
            expires,
        });
        buckets.len += 1;
    }

    /// Drops expired tokens; returns how many remain.
    pub fn purge(&self, now: Instant) -> usize {
        let mut buckets = self.lock();
        Self::evict(&mut buckets, now, usize::MAX);
        buckets.len
    }

    /// Drops every token signed with key pair `key_id` (after it was deleted).
    pub fn forget_key(&self, key_id: &str) {
        let mut buckets = self.lock();
        let mut removed = 0;
        buckets.map.retain(|_, bucket| {
            let before = bucket.len();
            bucket.retain(|e| &*e.key_id != key_id);
            removed += before - bucket.len();
            !bucket.is_empty()
        });
        buckets.len -= removed;
    }

    /// Removes expired entries, then arbitrary ones until at most `target` remain.
    fn evict(buckets: &mut Buckets, now: Instant, target: usize) {
        let mut removed = 0;
        buckets.map.retain(|_, bucket| {
            let before = bucket.len();
            bucket.retain(|e| e.expires > now);
            removed += before - bucket.len();
            !bucket.is_empty()
        });
        buckets.len -= removed;
        if buckets.len > target {
            let mut excess = buckets.len - target;
            buckets.map.retain(|_, bucket| {
                if excess == 0 {
                    return true;
                }
                let n = bucket.len().min(excess);
                bucket.truncate(bucket.len() - n);
                excess -= n;
                !bucket.is_empty()
            });
            buckets.len = target;
        }
    }

    /// Number of cached tokens (expired ones included until purged).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(aud: &'a str, user: &'a str) -> TokenKey<'a> {
        TokenKey {
            audience: aud,
            username: user,
            issuer: "kontrol",
            key_id: "k1",
        }
    }

    #[test]
    fn hit_miss_expiry() {
        let c = TokenCache::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(c.get(&key("/a", "bob"), t0), None);
        c.insert(&key("/a", "bob"), "tok1", t0);
        assert_eq!(c.get(&key("/a", "bob"), t0).as_deref(), Some("tok1"));
        assert_eq!(c.get(&key("/a", "eve"), t0), None);
        c.insert(&key("/a", "bob"), "tok2", t0);
        assert_eq!(c.get(&key("/a", "bob"), t0).as_deref(), Some("tok2"));
        assert_eq!(c.len(), 1);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(c.get(&key("/a", "bob"), later), None);
        assert_eq!(c.purge(later), 0);
    }

    #[test]
    fn bounded() {
        let c = TokenCache::new(16, Duration::from_secs(60));
        let t0 = Instant::now();
        let names: Vec<String> = (0..100).map(|i| format!("/u{i}")).collect();
        for n in &names {
            c.insert(&key(n, "bob"), "t", t0);
            assert!(c.len() <= 16);
        }
        assert_eq!(c.get(&key("/u99", "bob"), t0).as_deref(), Some("t"));
        c.forget_key("k1");
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn disabled() {
        let c = TokenCache::new(0, Duration::from_secs(60));
        let t0 = Instant::now();
        c.insert(&key("/a", "bob"), "t", t0);
        assert_eq!(c.get(&key("/a", "bob"), t0), None);
    }
}
