//! Noise-level samplers: which adjacent pair `(t_n, t_{n+1})` of the training
//! grid a consistency loss is evaluated on (uniform index, CM Algorithms 2-3;
//! discrete lognormal, iCT Section 3.5), and EDM's continuous lognormal noise
//! level for diffusion training (Karras et al. 2022, Section 5).
//!
//! Draws use libtorch's random generator, so a run seeded with
//! `tch::manual_seed` is reproducible.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{CoreError, Result};

/// Chooses pair indices into an ascending training grid `t_1 < ... < t_N`.
/// Index `n` (0-based) names the pair `(grid[n], grid[n + 1])`.
pub trait IndexSampler {
    /// The probability of each of the `N - 1` pairs; sums to 1.
    fn probabilities(&self, grid: &[f64]) -> Vec<f64>;

    /// Draws `batch` pair indices (int64, shape `[batch]`) on `device`.
    fn sample(&self, grid: &[f64], batch: i64, device: Device) -> Tensor {
        let probs = Tensor::from_slice(&self.probabilities(grid));
        probs.multinomial(batch, true).to_device(device)
    }
}

/// Every pair equally likely: `n ~ U{1..N-1}` (CM Algorithms 2 and 3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniformIndex {}

impl IndexSampler for UniformIndex {
    fn probabilities(&self, grid: &[f64]) -> Vec<f64> {
        let pairs = grid.len().saturating_sub(1).max(1);
        vec![1.0 / pairs as f64; pairs]
    }

    fn sample(&self, grid: &[f64], batch: i64, device: Device) -> Tensor {
        let pairs = grid.len().saturating_sub(1).max(1) as i64;
        Tensor::randint(pairs, [batch], (Kind::Int64, device))
    }
}

/// The iCT discrete lognormal over pairs (Song & Dhariwal 2023, Eq. 11):
/// `p(n) ∝ erf((ln t_{n+1} - P_mean)/(√2 P_std)) - erf((ln t_n - P_mean)/(√2 P_std))`,
/// the mass a lognormal `ln t ~ N(P_mean, P_std²)` puts between the two levels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LognormalIndex {
    /// Mean of `ln t`.
    pub p_mean: f64,
    /// Standard deviation of `ln t` (> 0).
    pub p_std: f64,
}

impl Default for LognormalIndex {
    /// The iCT paper's values: P_mean = -1.1, P_std = 2.0.
    fn default() -> Self {
        LognormalIndex {
            p_mean: -1.1,
            p_std: 2.0,
        }
    }
}

impl LognormalIndex {
    /// Checks `p_mean` finite and `p_std > 0`.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        check_lognormal(prefix, self.p_mean, self.p_std)
    }
}

impl IndexSampler for LognormalIndex {
    fn probabilities(&self, grid: &[f64]) -> Vec<f64> {
        let z = |t: f64| (t.ln() - self.p_mean) / (std::f64::consts::SQRT_2 * self.p_std);
        let mass: Vec<f64> = grid
            .windows(2)
            .map(|w| erf_difference(z(w[0]), z(w[1])))
            .collect();
        let total: f64 = mass.iter().sum();
        if !(total > 0.0 && total.is_finite()) {
            // All mass underflowed (a grid far in the tails): fall back to uniform.
            return UniformIndex {}.probabilities(grid);
        }
        mass.into_iter().map(|m| m / total).collect()
    }
}

/// The probability of each skipping-step pair `(t_n, t_{n+k})` of an
/// ascending grid, `n` in `0..N-k` (LCM's skipping step, Luo et al. 2023,
/// Section 4.3, drawn by any [`IndexSampler`]): the pair takes the mass of
/// the `k` adjacent pairs it spans, `p_k(n) ∝ p(n) + ... + p(n + k - 1)`,
/// normalised. For the iCT lognormal this is the mass between `t_n` and
/// `t_{n+k}` (the erf differences telescope); a uniform sampler stays
/// uniform over the `N - k` pairs; `k = 1` is the sampler's own
/// distribution. `skip` is clamped to `1..N-1`.
pub fn skipping_probabilities<S: IndexSampler + ?Sized>(
    sampler: &S,
    grid: &[f64],
    skip: usize,
) -> Vec<f64> {
    let adjacent = sampler.probabilities(grid);
    let k = skip.clamp(1, adjacent.len().max(1));
    if k == 1 {
        return adjacent;
    }
    let spans: Vec<f64> = adjacent.windows(k).map(|w| w.iter().sum()).collect();
    let total: f64 = spans.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return vec![1.0 / spans.len().max(1) as f64; spans.len().max(1)];
    }
    spans.into_iter().map(|p| p / total).collect()
}

/// `erf(b) - erf(a)` for `a <= b`, computed through `erfc` in the upper tail
/// where both `erf` values round to 1 and their difference would cancel.
fn erf_difference(a: f64, b: f64) -> f64 {
    if a >= 0.0 {
        libm::erfc(a) - libm::erfc(b)
    } else if b <= 0.0 {
        libm::erfc(-b) - libm::erfc(-a)
    } else {
        libm::erf(b) - libm::erf(a)
    }
}

/// EDM's continuous training noise levels `ln s ~ N(P_mean, P_std²)`
/// (Karras et al. 2022, Table 1).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LognormalSigma {
    /// Mean of `ln s`.
    pub p_mean: f64,
    /// Standard deviation of `ln s` (> 0).
    pub p_std: f64,
}

impl Default for LognormalSigma {
    /// EDM's values: P_mean = -1.2, P_std = 1.2.
    fn default() -> Self {
        LognormalSigma {
            p_mean: -1.2,
            p_std: 1.2,
        }
    }
}

impl LognormalSigma {
    /// Checks `p_mean` finite and `p_std > 0`.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        check_lognormal(prefix, self.p_mean, self.p_std)
    }

    /// Draws `batch` noise levels (shape `[batch]`).
    pub fn sample(&self, batch: i64, kind: Kind, device: Device) -> Tensor {
        (Tensor::randn([batch], (kind, device)) * self.p_std + self.p_mean).exp()
    }
}

fn check_lognormal(prefix: &str, p_mean: f64, p_std: f64) -> Result<()> {
    if !p_mean.is_finite() {
        return Err(CoreError::invalid(
            format!("{prefix}p_mean"),
            p_mean,
            "a finite number",
        ));
    }
    if !(p_std.is_finite() && p_std > 0.0) {
        return Err(CoreError::invalid(
            format!("{prefix}p_std"),
            p_std,
            "a finite number > 0",
        ));
    }
    Ok(())
}
