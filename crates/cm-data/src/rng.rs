//! Seeded random streams for cm-data: ChaCha8 keyed by `(seed, purpose)`
//! with the stream number selecting the epoch, step or split, plus an
//! unbiased bounded integer (Lemire 2019, "Fast random integer generation in
//! an interval", Algorithm 5) and a Fisher-Yates shuffle built on it.
//!
//! Everything here depends only on the ChaCha8 keystream, which
//! `rand_chacha` keeps stable, never on `rand`'s own sampling algorithms:
//! batches and toy data stay reproducible across `rand` releases.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a random stream is for; part of the ChaCha key, so streams for
/// different purposes never overlap even under the same seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Tag {
    /// Per-epoch permutation of the batch loader (stream = epoch).
    Permutation = 1,
    /// Per-step horizontal-flip decisions of the batch loader (stream = step).
    Flip = 2,
    /// Toy distributions (stream 0 train, 1 held-out).
    Toy = 3,
    /// Fixed order of the splits after a stratified split.
    Order = 4,
    /// Per-image tints of the coloured variants (stream = image index).
    Colour = 5,
}

/// ChaCha8 keyed with `seed` and `tag`, positioned at the start of `stream`.
pub fn chacha(seed: u64, tag: Tag, stream: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(tag as u64).to_le_bytes());
    key[16..24].copy_from_slice(b"cm-data1");
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(stream);
    rng
}

/// A uniform integer in `0..n` (`n >= 1`), without modulo bias.
pub fn below(rng: &mut impl RngCore, n: u64) -> u64 {
    debug_assert!(n > 0);
    let mut m = u128::from(rng.next_u64()) * u128::from(n);
    let mut low = m as u64;
    if low < n {
        let threshold = n.wrapping_neg() % n;
        while low < threshold {
            m = u128::from(rng.next_u64()) * u128::from(n);
            low = m as u64;
        }
    }
    (m >> 64) as u64
}

/// Fisher-Yates shuffle in place (Durstenfeld's variant, from the back).
pub fn shuffle<T>(items: &mut [T], rng: &mut impl RngCore) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// A uniform f64 in `[0, 1)` from the top 53 bits of one u64.
pub fn unit_f64(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_in_range_and_covers() {
        let mut rng = chacha(1, Tag::Permutation, 0);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let v = below(&mut rng, 7);
            assert!(v < 7);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..100).collect();
        shuffle(&mut v, &mut chacha(3, Tag::Order, 0));
        let mut s = v.clone();
        s.sort_unstable();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(v, s);
    }

    #[test]
    fn streams_differ() {
        let a = chacha(5, Tag::Flip, 0).next_u64();
        let b = chacha(5, Tag::Flip, 1).next_u64();
        let c = chacha(5, Tag::Toy, 0).next_u64();
        assert_ne!(a, b);
        assert_ne!(a, c);
    }
}
