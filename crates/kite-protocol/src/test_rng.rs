//! Deterministic pseudo-random numbers for the crate's generated-input tests.

/// xorshift64*: a fixed seed gives the same sequence on every run and machine.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (not zero).
    pub(crate) fn below(&mut self, n: u32) -> u32 {
        (self.next() >> 32) as u32 % n
    }
}
