//! Seed mixing shared by every cm-rs crate: SplitMix64 (Steele, Lea and
//! Flood 2014, "Fast splittable pseudorandom number generators", OOPSLA;
//! Vigna's reference `splitmix64.c`) and 64-bit FNV-1a.
//!
//! SplitMix64 keeps one `u64` of state, adds the odd "golden gamma"
//! `0x9E3779B97F4A7C15` (2^64 / phi) per step and passes the state through a
//! finalizer (Stafford's Mix13 variant of MurmurHash3's `fmix64`:
//! xor-shift 30, multiply, xor-shift 27, multiply, xor-shift 31). The
//! finalizer is a bijection of `u64` with full avalanche, so it also turns
//! nearby seeds (`seed`, `seed + 1`, a step counter) into unrelated ones;
//! that is what [`mix_seed`] uses it for. Streams keyed this way are cheap:
//! a new generator is one `u64`.
//!
//! FNV-1a (Fowler, Noll and Vo) hashes bytes to a stable 64-bit name for
//! cache folders and configs; it is not a cryptographic hash.
//!
//! Everything here is pure integer arithmetic: results are identical on
//! every platform and never depend on libtorch's generators.

/// The SplitMix64 increment, `2^64 / phi` rounded to odd.
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 finalizer (Stafford's Mix13): a bijective mix of `z` in
/// which every input bit affects every output bit.
#[inline]
pub const fn splitmix64_mix(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One SplitMix64 step: advances `state` by [`GOLDEN_GAMMA`] and returns the
/// finalized new state (Vigna's `splitmix64.c` `next()`).
#[inline]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN_GAMMA);
    splitmix64_mix(*state)
}

/// Mixes a run seed and a step (or any counter) into one non-negative
/// libtorch generator seed, so every step draws from its own reproducible
/// stream: the finalizer of `seed ^ step * GOLDEN_GAMMA`, shifted right by
/// one so it fits `i64` (`tch::manual_seed`) without going negative.
pub fn mix_seed(seed: u64, step: u64) -> i64 {
    (splitmix64_mix(seed ^ step.wrapping_mul(GOLDEN_GAMMA)) >> 1) as i64
}

/// 64-bit FNV-1a of `bytes`: a stable, platform-independent name (cache
/// keys, config hashes).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A SplitMix64 generator; the field is its whole state (the seed before the
/// first draw).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// A generator whose first output is `splitmix64_mix(seed + GOLDEN_GAMMA)`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    /// Uniform in `[0, 1)`: the top 53 bits of one output.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `(0, 1)`: the top 53 bits of one output plus one half, so
    /// never 0 (safe under a logarithm) and never 1.
    pub fn open_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Two independent standard normals from two [`open_unit`] draws (the
    /// Box–Muller transform: radius first, then angle).
    ///
    /// [`open_unit`]: SplitMix64::open_unit
    pub fn box_muller(&mut self) -> (f64, f64) {
        let r = (-2.0 * self.open_unit().ln()).sqrt();
        let theta = std::f64::consts::TAU * self.open_unit();
        (r * theta.cos(), r * theta.sin())
    }

    /// `k` distinct indices of `0..n` (partial Fisher–Yates; `k` is capped at
    /// `n`). Each swap target is `next_u64() % (n - i)`: slightly biased for
    /// huge `n`, kept because it fixes which subsets existing seeds select.
    pub fn choose(&mut self, n: usize, k: usize) -> Vec<i64> {
        let mut idx: Vec<i64> = (0..n as i64).collect();
        for i in 0..k.min(n) {
            let j = i + (self.next_u64() % (n - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx.truncate(k);
        idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // Vigna's splitmix64.c seeded with 0 (also the first outputs quoted
        // for java.util.SplittableRandom's mixer).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xe220_a839_7b1d_cdaf);
        assert_eq!(s, GOLDEN_GAMMA);
    }

    #[test]
    fn mix_seed_is_pinned() {
        // Values of cm-train's `mix_seed` before it moved here: training
        // streams of existing runs depend on them.
        assert_eq!(mix_seed(0, 0), 0);
        assert_eq!(mix_seed(0, 1), 8_147_104_208_329_303_767);
        // Step 1 of seed 0 is the first SplitMix64 output, halved.
        assert_eq!(mix_seed(0, 1), (0xe220_a839_7b1d_cdafu64 >> 1) as i64);
        assert_eq!(mix_seed(7, u64::MAX), 8_473_283_588_866_667_343);
        assert_eq!(mix_seed(42, 1000), 5_550_426_705_955_898_071);
        assert!(mix_seed(u64::MAX, 3) >= 0);
    }

    #[test]
    fn fnv1a64_matches_the_published_vectors() {
        // Test vectors of the FNV reference (Noll, "FNV hash" test suite).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn helpers_are_pinned() {
        // Values of the copies in cm-sample (`SeededNoise`) and cm-eval
        // (KID subsets, classifier augmentation) before they moved here.
        let mut r = SplitMix64::new(0);
        assert_eq!(
            r.unit_f64(),
            (0xe220_a839_7b1d_cdafu64 >> 11) as f64 / 2f64.powi(53)
        );
        let mut r = SplitMix64::new(1);
        assert_eq!(r.choose(10, 4), [5, 8, 1, 3]);
        // k > n is capped at n.
        assert_eq!(SplitMix64::new(3).choose(3, 7), [0, 2, 1]);
        let (a, b) = SplitMix64::new(5).box_muller();
        assert_eq!(
            (a.to_bits(), b.to_bits()),
            (0x3f94_7567_2662_cbcf, 0xbff6_0d25_4767_f6b1)
        );
    }
}
