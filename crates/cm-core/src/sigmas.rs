//! Karras noise-level grids (Karras et al. 2022, Eq. 5; Song et al. 2023,
//! Section 5): the descending sampling grid with a final 0, and the ascending
//! training grid `t_1 < ... < t_N` consistency models are trained on.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{CoreError, Result};

/// The largest noise level (and `sigma_data`) a config may set: far above
/// any published schedule (EDM and CM use 80, the VE SDE 378), and small
/// enough that `sigma^2 + sigma_data^2` and the preconditioning stay finite
/// and accurate in the f32 the networks run in (`f32::MAX` is 3.4e38).
pub const MAX_SIGMA: f64 = 1e5;

/// The smallest noise level (and `sigma_data`) a config may set: far below
/// any published schedule (EDM and CM end at 0.002), and large enough that
/// it survives the f32 the networks run in. Data in `[-1, 1]` has an f32
/// spacing of up to 1.2e-7, so `x + sigma z` with a smaller `sigma` adds
/// (nearly) nothing, and `sigma^2` of 1e-20 or less loses digits in the
/// preconditioning; 1e-300 even becomes 0 and `ln(sigma)` -inf.
pub const MIN_SIGMA: f64 = 1e-6;

/// The most points a sampling or training grid may have: more than any
/// schedule uses (iCT ends at 1281, EDM samples with 18-256 steps); every
/// point is an f64 and a network evaluation, so this bounds both memory
/// and time.
pub const MAX_GRID_POINTS: usize = 100_000;

/// Checks that `value` is a noise level in `[MIN_SIGMA, MAX_SIGMA]`, named
/// `field`.
pub fn check_sigma(field: &str, value: f64, what: &str) -> Result<()> {
    if !(value.is_finite() && (MIN_SIGMA..=MAX_SIGMA).contains(&value)) {
        return Err(CoreError::invalid(
            field,
            value,
            format!(
                "{what} in [{MIN_SIGMA:e}, {MAX_SIGMA:e}] (smaller values vanish and larger \
                 ones overflow in f32 arithmetic)"
            ),
        ));
    }
    Ok(())
}

/// The noise range `[sigma_min, sigma_max]` of a model: a consistency model
/// keeps `f(x, sigma_min) = x` and samples in one step from `sigma_max z`
/// (Song et al. 2023, Section 3). Samplers and editing tasks take one of
/// these instead of two positional numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseRange {
    /// Smallest noise level (`eps`).
    pub sigma_min: f64,
    /// Largest noise level (`T`).
    pub sigma_max: f64,
}

impl NoiseRange {
    /// Checks `MIN_SIGMA <= sigma_min < sigma_max <= MAX_SIGMA`.
    pub fn new(sigma_min: f64, sigma_max: f64) -> Result<Self> {
        if !(sigma_min > 0.0 && sigma_min.is_finite()) {
            return Err(CoreError::invalid(
                "sigma_min",
                sigma_min,
                "a finite time > 0",
            ));
        }
        check_sigma("sigma_min", sigma_min, "a time")?;
        if !(sigma_max > sigma_min && sigma_max.is_finite()) {
            return Err(CoreError::invalid(
                "sigma_max",
                sigma_max,
                format!("a finite time > sigma_min = {sigma_min}"),
            ));
        }
        check_sigma("sigma_max", sigma_max, "a time")?;
        Ok(NoiseRange {
            sigma_min,
            sigma_max,
        })
    }

    /// Checks a range built field by field (see [`NoiseRange::new`]).
    pub fn validate(&self) -> Result<()> {
        NoiseRange::new(self.sigma_min, self.sigma_max).map(|_| ())
    }

    /// Whether `sigma_min <= t <= sigma_max`.
    pub fn contains(&self, t: f64) -> bool {
        t >= self.sigma_min && t <= self.sigma_max
    }
}

/// The noise range `[sigma_min, sigma_max]` and the exponent `rho` that
/// concentrates Karras grid points near `sigma_min`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KarrasGrid {
    /// Smallest noise level (`eps` of the CM paper).
    pub sigma_min: f64,
    /// Largest noise level (`T` of the CM paper).
    pub sigma_max: f64,
    /// Grid exponent (7 in EDM and CM).
    pub rho: f64,
}

impl Default for KarrasGrid {
    /// EDM / CM values: `sigma_min = 0.002`, `sigma_max = 80`, `rho = 7`.
    fn default() -> Self {
        KarrasGrid {
            sigma_min: 0.002,
            sigma_max: 80.0,
            rho: 7.0,
        }
    }
}

impl KarrasGrid {
    /// Checks `MIN_SIGMA <= sigma_min < sigma_max <= MAX_SIGMA` and `rho > 0`; `prefix` is
    /// the dotted path of the struct in its config, used in the error.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let f = |name: &str| format!("{prefix}{name}");
        if !(self.sigma_min.is_finite() && self.sigma_min > 0.0) {
            return Err(CoreError::invalid(
                f("sigma_min"),
                self.sigma_min,
                "a finite number > 0",
            ));
        }
        check_sigma(&f("sigma_min"), self.sigma_min, "a noise level")?;
        if !(self.sigma_max.is_finite() && self.sigma_max > self.sigma_min) {
            return Err(CoreError::invalid(
                f("sigma_max"),
                self.sigma_max,
                format!("a finite number > sigma_min = {}", self.sigma_min),
            ));
        }
        check_sigma(&f("sigma_max"), self.sigma_max, "a noise level")?;
        if !(self.rho.is_finite() && self.rho > 0.0) {
            return Err(CoreError::invalid(
                f("rho"),
                self.rho,
                "a finite number > 0",
            ));
        }
        Ok(())
    }

    /// The noise range `[sigma_min, sigma_max]`.
    pub fn range(&self) -> NoiseRange {
        NoiseRange {
            sigma_min: self.sigma_min,
            sigma_max: self.sigma_max,
        }
    }

    /// The noise level a fraction `u` of the way from `sigma_min` (u = 0) to
    /// `sigma_max` (u = 1) in `sigma^(1/rho)` space:
    /// `(sigma_min^(1/rho) + u (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho`.
    pub fn interpolate(&self, u: f64) -> f64 {
        let inv_rho = 1.0 / self.rho;
        let lo = self.sigma_min.powf(inv_rho);
        let hi = self.sigma_max.powf(inv_rho);
        (lo + u * (hi - lo)).powf(self.rho)
    }

    /// The EDM sampling grid for `n` steps (Karras et al. 2022, Eq. 5):
    /// `t_i = (T^(1/rho) + i/(n-1) (eps^(1/rho) - T^(1/rho)))^rho` for
    /// `i = 0..n-1`, descending from `sigma_max` to `sigma_min`, then `t_n = 0`;
    /// `n + 1` values. `n = 1` gives `[sigma_max, 0]`. The end points are set
    /// exactly (the powers do not round-trip in floating point).
    pub fn sampling_sigmas(&self, n: usize) -> Result<Vec<f64>> {
        if n == 0 || n > MAX_GRID_POINTS {
            return Err(CoreError::invalid(
                "steps",
                n,
                format!("1 to {MAX_GRID_POINTS} sampling steps"),
            ));
        }
        let mut sigmas: Vec<f64> = if n == 1 {
            vec![self.sigma_max]
        } else {
            (0..n)
                .map(|i| self.interpolate(1.0 - i as f64 / (n - 1) as f64))
                .collect()
        };
        sigmas[0] = self.sigma_max;
        if n > 1 {
            sigmas[n - 1] = self.sigma_min;
        }
        sigmas.push(0.0);
        Ok(sigmas)
    }

    /// The consistency training grid with `n` points (Song et al. 2023,
    /// Section 5): `t_i = (eps^(1/rho) + (i-1)/(n-1) (T^(1/rho) - eps^(1/rho)))^rho`
    /// for `i = 1..n`, ascending; `t_1 = sigma_min` and `t_n = sigma_max`
    /// exactly. Needs `n >= 2` (one adjacent pair).
    pub fn training_sigmas(&self, n: usize) -> Result<Vec<f64>> {
        if !(2..=MAX_GRID_POINTS).contains(&n) {
            return Err(CoreError::invalid(
                "n",
                n,
                format!("2 to {MAX_GRID_POINTS} grid points"),
            ));
        }
        let mut sigmas: Vec<f64> = (0..n)
            .map(|i| self.interpolate(i as f64 / (n - 1) as f64))
            .collect();
        sigmas[0] = self.sigma_min;
        sigmas[n - 1] = self.sigma_max;
        Ok(sigmas)
    }

    /// The grid of progressive distillation with `n` steps, in the form of
    /// openai's `progdist_losses`: `t_i = (T^(1/rho) + i/n (eps^(1/rho) -
    /// T^(1/rho)))^rho` for `i = 0..=n`, descending from `sigma_max` to
    /// `sigma_min` (`n + 1` values, end points exact). Unlike
    /// [`Self::sampling_sigmas`], the grids nest: the `2n`-step grid holds
    /// every point of the `n`-step one at its even indices, so one student
    /// step `t_i -> t_{i+1}` spans exactly two teacher steps (Salimans & Ho
    /// 2022, Algorithm 2). The last step lands on `sigma_min`, not 0.
    pub fn progressive_sigmas(&self, n: usize) -> Result<Vec<f64>> {
        if n == 0 || n >= MAX_GRID_POINTS {
            return Err(CoreError::invalid(
                "steps",
                n,
                format!(
                    "1 to {} progressive-distillation steps",
                    MAX_GRID_POINTS - 1
                ),
            ));
        }
        let mut sigmas = self.training_sigmas(n + 1)?;
        sigmas.reverse();
        Ok(sigmas)
    }
}

/// LCM's sampling times (Luo et al. 2023; diffusers' `LCMScheduler.set_timesteps`):
/// of an ascending training grid, the skipping-step grid from the top
/// (`grid[N-1], grid[N-1-k], grid[N-1-2k], ...` down to index 1, never
/// `grid[0] = sigma_min`; the times latent
/// consistency distillation trains on), and of those `steps` evenly spaced
/// ones, `floor(linspace(0, len, steps, endpoint = False))`, descending. The
/// first is `grid[N-1]` (where sampling starts), the rest are the
/// intermediate times of multistep sampling. With a 1,000-point grid of
/// timestep indices and `k = 20` this gives diffusers' `[999, 759, 499,
/// 259]` for 4 steps. Needs `1 <= k < N` and `1 <= steps <= len`.
pub fn lcm_times(grid: &[f64], skip: usize, steps: usize) -> Result<Vec<f64>> {
    let n = grid.len();
    if skip == 0 || skip >= n {
        return Err(CoreError::invalid(
            "skip",
            skip,
            format!("a skipping step in 1..{n} (the grid has {n} points)"),
        ));
    }
    // Index 0 is sigma_min, where f is the identity: not a time to
    // re-noise to (diffusers' grid likewise ends at k - 1).
    let skipping: Vec<f64> = (1..n).rev().step_by(skip).map(|i| grid[i]).collect();
    let len = skipping.len();
    if steps == 0 || steps > len {
        return Err(CoreError::invalid(
            "steps",
            steps,
            format!("1 to {len} (the skipping-step grid of k = {skip} has {len} times)"),
        ));
    }
    Ok((0..steps).map(|j| skipping[j * len / steps]).collect())
}

/// Turns a grid into a 1-D float tensor on `device`.
pub fn grid_tensor(sigmas: &[f64], kind: Kind, device: Device) -> Tensor {
    Tensor::from_slice(sigmas).to_kind(kind).to_device(device)
}

/// For 0-based pair indices `n` (shape `[B]`, int64) into an ascending grid,
/// returns `(t_n, t_{n+1})`, each of shape `[B]`.
pub fn adjacent_pairs(grid: &Tensor, index: &Tensor) -> (Tensor, Tensor) {
    skipping_pairs(grid, index, 1)
}

/// LCM's skipping-step pairs (Luo et al. 2023, Algorithm 1): for 0-based
/// indices `n` in `0..N-k` (shape `[B]`, int64) into an ascending grid,
/// `(t_n, t_{n+k})`, each of shape `[B]`; `k = 1` is CD's adjacent pairs.
pub fn skipping_pairs(grid: &Tensor, index: &Tensor, k: i64) -> (Tensor, Tensor) {
    (
        grid.index_select(0, index),
        grid.index_select(0, &(index + k)),
    )
}
