//! A small bounded map for verification results, keyed by the credential (or PEM) string.
//!
//! Reads take a shared lock for the duration of a closure (no clone of the entry); writes a
//! brief exclusive lock. Never held across an await. Each cache carries the generation of
//! the Kontrol settings it was filled under; inserts computed under an older generation are
//! dropped, so a verification racing with a Kontrol key change cannot re-add a stale entry.

use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{PoisonError, RwLock};

/// How many trailing bytes of a key [`KeyHashing::Tail`] hashes.
const TAIL: usize = 64;

/// What part of a key string is hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyHashing {
    /// The whole key. For keys an attacker can choose freely and get inserted.
    Full,
    /// Only the last [`TAIL`] bytes (keyed SipHash, full equality on lookup). For JWTs that
    /// are inserted only after their signature verified: the tail is signature material,
    /// unpredictable and not attacker-chosen, so collisions cannot be provoked, and a cache
    /// hit costs a 64-byte hash instead of hashing the ~600-byte token.
    Tail,
}

#[derive(Clone)]
struct KeyHasherBuilder {
    random: RandomState,
    hashing: KeyHashing,
}

impl BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            inner: self.random.build_hasher(),
            hashing: self.hashing,
        }
    }
}

struct KeyHasher {
    inner: DefaultHasher,
    hashing: KeyHashing,
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        match self.hashing {
            KeyHashing::Full => self.inner.write(bytes),
            KeyHashing::Tail => self.inner.write(&bytes[bytes.len().saturating_sub(TAIL)..]),
        }
    }

    fn finish(&self) -> u64 {
        self.inner.finish()
    }
}

pub(crate) struct Cache<V> {
    inner: RwLock<Inner<V>>,
    capacity: usize,
}

struct Inner<V> {
    generation: u64,
    map: HashMap<Box<str>, V, KeyHasherBuilder>,
}

impl<V> Cache<V> {
    pub(crate) fn new(capacity: usize, hashing: KeyHashing) -> Self {
        Self {
            inner: RwLock::new(Inner {
                generation: 0,
                map: HashMap::with_hasher(KeyHasherBuilder {
                    random: RandomState::new(),
                    hashing,
                }),
            }),
            capacity,
        }
    }

    /// Runs `f` on the entry for `key`, if any.
    pub(crate) fn with<R>(&self, key: &str, f: impl FnOnce(&V) -> R) -> Option<R> {
        if self.capacity == 0 {
            return None;
        }
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.map.get(key).map(f)
    }

    /// Inserts unless the cache moved on to a newer generation. When full, entries for which
    /// `stale` holds are dropped first; if that frees less than a quarter of the room, an
    /// arbitrary half of the entries goes too (bounded memory, amortised O(1)).
    pub(crate) fn insert(&self, generation: u64, key: &str, value: V, stale: impl Fn(&V) -> bool) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if inner.generation != generation {
            return;
        }
        if inner.map.len() >= self.capacity && !inner.map.contains_key(key) {
            inner.map.retain(|_, v| !stale(v));
            if inner.map.len() > self.capacity - self.capacity / 4 {
                let mut drop = inner.map.len() / 2 + 1;
                inner.map.retain(|_, _| {
                    if drop > 0 {
                        drop -= 1;
                        false
                    } else {
                        true
                    }
                });
            }
        }
        inner.map.insert(key.into(), value);
    }

    pub(crate) fn remove(&self, key: &str) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.map.remove(key);
    }

    /// Empties the cache and moves it to `generation`.
    pub(crate) fn reset(&self, generation: u64) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.generation = generation;
        inner.map.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_generational() {
        let cache = Cache::new(8, KeyHashing::Tail);
        for i in 0..100 {
            cache.insert(0, &i.to_string(), i, |_| false);
            assert!(cache.len() <= 8);
        }
        assert_eq!(cache.with("99", |v| *v), Some(99));
        cache.insert(0, "stale-first", 1000, |v| *v < 1000);
        cache.reset(1);
        assert_eq!(cache.len(), 0);
        cache.insert(0, "old", 1, |_| false);
        assert_eq!(cache.with("old", |v| *v), None);
        cache.insert(1, "new", 2, |_| false);
        assert_eq!(cache.with("new", |v| *v), Some(2));
        cache.remove("new");
        assert_eq!(cache.with("new", |v| *v), None);

        let off = Cache::new(0, KeyHashing::Full);
        off.insert(0, "x", 1, |_| false);
        assert_eq!(off.with("x", |v| *v), None);
    }

    #[test]
    fn tail_hashing_still_compares_whole_keys() {
        let cache = Cache::new(8, KeyHashing::Tail);
        let tail = "t".repeat(100);
        cache.insert(0, &format!("a{tail}"), 1, |_| false);
        cache.insert(0, &format!("b{tail}"), 2, |_| false);
        assert_eq!(cache.with(&format!("a{tail}"), |v| *v), Some(1));
        assert_eq!(cache.with(&format!("b{tail}"), |v| *v), Some(2));
        assert_eq!(cache.with(&format!("c{tail}"), |v| *v), None);
        assert_eq!(cache.with("short", |v| *v), None);
    }
}
