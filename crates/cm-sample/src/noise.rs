//! Where sampling noise comes from.
//!
//! Samplers draw their Gaussian noise through [`NoiseSource`]: either
//! libtorch's process-global generator ([`GlobalNoise`], fast, what training
//! previews use) or [`SeededNoise`], which gives every sample its own seed
//! and stream. With per-sample seeds, image `i` of a run is the same whatever
//! the batch size, the chunking, the device or the other images in the batch:
//! `cm sample --seed 7 --count 1000` in chunks of 64 reproduces image 513 of
//! `--count 1` started at index 513, which is what makes generated folders and
//! editing results reproducible (the cm-sample issue).

use cm_core::seed::SplitMix64;
use tch::{Device, Kind, Tensor};

/// A source of standard-normal noise shaped like a batch.
pub trait NoiseSource {
    /// A standard-normal tensor shaped, typed and placed like `like`
    /// (`[B, ...]`); every call gives fresh noise.
    fn standard_normal(&mut self, like: &Tensor) -> Tensor;
}

/// libtorch's global generator (`randn_like`): seed it with
/// `tch::manual_seed`. Results depend on batch composition and device.
#[derive(Clone, Copy, Debug, Default)]
pub struct GlobalNoise;

impl NoiseSource for GlobalNoise {
    fn standard_normal(&mut self, like: &Tensor) -> Tensor {
        like.randn_like()
    }
}

/// Per-sample seeded noise: row `i` of draw `d` comes from a SplitMix64
/// stream keyed by `(seeds[i], d)` through the Box–Muller transform, computed
/// on the CPU in f64 and then cast and moved, so it is identical on every
/// device and for every batching.
#[derive(Clone, Debug)]
pub struct SeededNoise {
    seeds: Vec<u64>,
    draws: u64,
}

impl SeededNoise {
    /// One explicit seed per sample.
    pub fn new(seeds: Vec<u64>) -> Self {
        SeededNoise { seeds, draws: 0 }
    }

    /// Samples `first .. first + count` of the run seeded by `seed`: sample
    /// `i` gets `mix(seed, i)`, so any range of a run can be regenerated alone.
    pub fn for_range(seed: u64, first: u64, count: usize) -> Self {
        Self::new(
            (first..first + count as u64)
                .map(|i| sample_seed(seed, i))
                .collect(),
        )
    }

    /// The number of samples (the batch size every draw must have).
    pub fn len(&self) -> usize {
        self.seeds.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.seeds.is_empty()
    }

    /// A `[B, shape...]` draw, `B = self.len()`.
    pub fn draw(&mut self, shape: &[i64], kind: Kind, device: Device) -> Tensor {
        let per: i64 = shape.iter().product();
        let mut values = Vec::with_capacity(self.seeds.len() * per as usize);
        for &seed in &self.seeds {
            let mut rng = SplitMix64::new(sample_seed(seed, self.draws));
            let mut spare: Option<f64> = None;
            for _ in 0..per {
                let z = match spare.take() {
                    Some(z) => z,
                    None => {
                        let (a, b) = rng.box_muller();
                        spare = Some(b);
                        a
                    }
                };
                values.push(z);
            }
        }
        self.draws += 1;
        let mut full = vec![self.seeds.len() as i64];
        full.extend_from_slice(shape);
        Tensor::from_slice(&values)
            .reshape(full)
            .to_kind(kind)
            .to_device(device)
    }
}

impl NoiseSource for SeededNoise {
    /// Panics if `like`'s batch size is not `self.len()`: the sampler and
    /// the noise were set up for different batches, a programming error.
    fn standard_normal(&mut self, like: &Tensor) -> Tensor {
        let size = like.size();
        assert_eq!(
            size[0] as usize,
            self.seeds.len(),
            "SeededNoise holds {} seeds, the batch has {} samples",
            self.seeds.len(),
            size[0]
        );
        self.draw(&size[1..], like.kind(), like.device())
    }
}

/// The seed of sample `index` of a run seeded by `seed` (a SplitMix64 mix,
/// [`cm_core::seed`], so neighbouring indices get unrelated streams).
pub fn sample_seed(seed: u64, index: u64) -> u64 {
    let mut r = SplitMix64::new(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
    r.next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_standard_normal() {
        let mut noise = SeededNoise::for_range(3, 0, 8);
        let x = noise.draw(&[5000], Kind::Double, Device::Cpu);
        let v: Vec<f64> = Vec::try_from(x.flatten(0, -1)).unwrap();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let kurt = v.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n / (var * var);
        // 40,000 draws: standard errors 0.005 (mean), 0.007 (variance), 0.025 (kurtosis).
        assert!(mean.abs() < 0.025, "mean {mean}");
        assert!((var - 1.0).abs() < 0.035, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.15, "kurtosis {kurt}");
    }

    #[test]
    fn sample_seeds_are_pinned() {
        // The value before SplitMix64 moved to cm-core: generated folders
        // of existing runs depend on it.
        assert_eq!(sample_seed(3, 5), 0x586a_2b66_d203_d7af);
    }

    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let mut all = SeededNoise::for_range(11, 0, 6);
        let mut tail = SeededNoise::for_range(11, 4, 2);
        for _ in 0..3 {
            let a = all.draw(&[2, 3], Kind::Float, Device::Cpu);
            let b = tail.draw(&[2, 3], Kind::Float, Device::Cpu);
            assert!(a.narrow(0, 4, 2).equal(&b));
        }
        // Successive draws and different seeds differ.
        let mut n = SeededNoise::new(vec![1, 2]);
        let d0 = n.draw(&[4], Kind::Float, Device::Cpu);
        let d1 = n.draw(&[4], Kind::Float, Device::Cpu);
        assert!(!d0.equal(&d1));
        assert!(!d0.get(0).equal(&d0.get(1)));
    }
}
