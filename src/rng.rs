//! A small portable RNG (SplitMix64): the same seed gives the same numbers on every platform and
//! compiler, so generated test models are bit-identical everywhere.

pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 random bits (exact in f32).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform with mean 0 and standard deviation `std`.
    pub fn uniform_std(&mut self, std: f32) -> f32 {
        (self.next_f32() * 2.0 - 1.0) * std * 3f32.sqrt()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_sequence() {
        // Reference values of SplitMix64 for seed 1234567.
        let mut r = super::SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }
}
