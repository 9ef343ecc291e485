//! A fixed pseudo-random sequence (xorshift64): the matcher's sample of
//! random pairs, and repeatable test and bench data. Never for anything
//! secret: keys come from `joinery_crypto`.

#[derive(Debug, Clone)]
pub struct Sequence(u64);

impl Sequence {
    /// Starts from `seed`, which must not be 0 (the sequence would stay 0).
    pub const fn new(seed: u64) -> Self {
        assert!(seed != 0, "a xorshift sequence cannot start from 0");
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The next number taken below `n` (which must not be 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
