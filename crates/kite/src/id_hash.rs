//! A cheap hasher for the callback ids a connection assigns itself.
//!
//! `std`'s default SipHash resists keys chosen to collide, which only matters when a peer
//! picks what is inserted. A connection's callback table holds ids from its own counter
//! (0, 1, 2, ...); a peer can only look ids up, and a lookup cannot make the table's
//! buckets uneven. So the ids are mixed with SplitMix64's finaliser instead (two multiplies
//! and three shifts): the low bits (the bucket) and the high bits (the table's tag byte)
//! both depend on every bit of the id.

use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by locally assigned `u64` ids.
pub(crate) type IdMap<V> = std::collections::HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Hashes one `u64` (other input is folded in word by word, for completeness).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let mut z = self.0 ^ n;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        self.0 = z ^ (z >> 31);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::*;

    fn hash(n: u64) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(n)
    }

    #[test]
    fn sequential_ids_spread_over_buckets_and_tags() {
        let n = 1 << 16;
        let hashes: Vec<u64> = (0..n).map(hash).collect();
        assert_eq!(hashes.iter().collect::<HashSet<_>>().len(), n as usize);
        // Bucket index: the low bits. Tag: the top 7 bits. Each should be close to even.
        for (name, bits) in [
            (
                "low 10 bits",
                hashes.iter().map(|h| h & 1023).collect::<Vec<_>>(),
            ),
            (
                "top 7 bits",
                hashes.iter().map(|h| h >> 57).collect::<Vec<_>>(),
            ),
        ] {
            let buckets = if name.starts_with("low") { 1024 } else { 128 };
            let mut counts = vec![0u32; buckets];
            for b in bits {
                counts[b as usize] += 1;
            }
            let expected = n as u32 / buckets as u32;
            let (min, max) = (counts.iter().min(), counts.iter().max());
            assert!(
                min >= Some(&(expected / 2)) && max <= Some(&(expected * 2)),
                "{name}: {min:?}..{max:?} around {expected}"
            );
        }
    }

    #[test]
    fn works_as_a_map() {
        let mut m: IdMap<u64> = IdMap::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        for i in (0..10_000).step_by(2) {
            assert_eq!(m.remove(&i), Some(i * 2));
        }
        assert_eq!(m.len(), 5_000);
        assert_eq!(m.get(&9_999), Some(&19_998));
        assert_eq!(m.get(&u64::MAX), None);
    }
}
