//! The samplers of a diffusion denoiser `D(x; sigma)`:
//! - EDM Algorithm 1 (Karras et al. 2022): deterministic Euler or Heun on the
//!   PF-ODE over the Karras grid. Euler with 50 steps is the DDIM-like
//!   baseline: DDIM (Song et al. 2021) is exactly Euler on this ODE once
//!   written in `sigma` (EDM, Section 3), here on EDM's grid.
//! - EDM Algorithm 2: "churn" adds noise to raise `t_i` to
//!   `t_hat = (1 + gamma) t_i` before each step, for levels in
//!   `[s_tmin, s_tmax]`.
//! - Ancestral sampling, the DDPM-like baseline (Ho et al. 2020, Eq. 6-7,
//!   in the variance-exploding form of k-diffusion's `sample_euler_ancestral`):
//!   each step `t -> s` draws from the DDPM posterior
//!   `q(x_s | x_t, x_0 = D(x_t; t))`, mean `D + (s/t)^2 (x_t - D)` and
//!   standard deviation `s sqrt(t^2 - s^2) / t`, over the Karras grid.
//! - Progressive distillation's sampler (Salimans & Ho 2022): the same
//!   solvers on the nested grid of `KarrasGrid::progressive_sigmas`, which
//!   ends at `sigma_min` instead of 0.

use cm_core::{Conditioning, CoreError, Denoiser, KarrasGrid, OdeSolver, Solver};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::noise::{GlobalNoise, NoiseSource};

/// The most sampler steps a card or a sampling call may ask for (DDPM's
/// ancestral sampler uses 1000; each step is a network evaluation per
/// sample).
pub const MAX_SAMPLER_STEPS: usize = 10_000;

/// Which grid of noise levels a sampler walks down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplingGrid {
    /// EDM's grid (Eq. 5), `N` levels from `sigma_max` to `sigma_min`, then 0.
    #[default]
    Karras,
    /// Progressive distillation's nested grid, `N + 1` levels from
    /// `sigma_max` down to `sigma_min` (`KarrasGrid::progressive_sigmas`):
    /// a PD student with `N` steps was trained on exactly these steps.
    Progressive,
}

/// Settings of the sampler of a diffusion denoiser. The defaults are EDM's
/// deterministic CIFAR-10 sampler: 18 Heun steps (35 NFE), no churn.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdmSampler {
    /// Number of steps `N` (grid levels before the final 0).
    pub steps: usize,
    /// Euler or Heun.
    pub solver: Solver,
    /// The grid of noise levels. Not written when it is the default, so
    /// configs written before it existed keep their text (teacher folders
    /// are keyed by it).
    #[serde(skip_serializing_if = "is_karras")]
    pub grid: SamplingGrid,
    /// Ancestral (DDPM-like, stochastic) steps instead of ODE steps; needs
    /// `solver = "euler"` and no churn. Not written when false.
    #[serde(skip_serializing_if = "is_false")]
    pub ancestral: bool,
    /// Total churn `S_churn` (0: deterministic, Algorithm 1).
    pub s_churn: f64,
    /// Churn only for `t` in `[s_tmin, s_tmax]`.
    pub s_tmin: f64,
    /// Upper end of the churn range.
    pub s_tmax: f64,
    /// Noise inflation `S_noise` of the added noise.
    pub s_noise: f64,
}

fn is_karras(grid: &SamplingGrid) -> bool {
    *grid == SamplingGrid::Karras
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for EdmSampler {
    fn default() -> Self {
        EdmSampler {
            steps: 18,
            solver: Solver::Heun,
            grid: SamplingGrid::Karras,
            ancestral: false,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
        }
    }
}

impl EdmSampler {
    /// Checks the settings; `prefix` is the dotted path of the sampler in
    /// its file (e.g. `"sampler."`).
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        let f = |n: &str| format!("{prefix}{n}");
        if !(1..=MAX_SAMPLER_STEPS).contains(&self.steps) {
            return Err(CoreError::invalid(
                f("steps"),
                self.steps,
                format!("1 to {MAX_SAMPLER_STEPS}"),
            ));
        }
        if !(self.s_churn.is_finite() && self.s_churn >= 0.0) {
            return Err(CoreError::invalid(
                f("s_churn"),
                self.s_churn,
                "a finite number >= 0",
            ));
        }
        if !(self.s_noise.is_finite() && self.s_noise > 0.0) {
            return Err(CoreError::invalid(
                f("s_noise"),
                self.s_noise,
                "a finite number > 0",
            ));
        }
        if self.s_tmax.is_nan() {
            return Err(CoreError::invalid(
                f("s_tmax"),
                self.s_tmax,
                "a number >= s_tmin (inf: no upper limit)",
            ));
        }
        if !(self.s_tmin >= 0.0 && self.s_tmin <= self.s_tmax) {
            return Err(CoreError::invalid(
                f("s_tmin"),
                self.s_tmin,
                format!("a number in [0, s_tmax = {}]", self.s_tmax),
            ));
        }
        if self.ancestral && self.solver != Solver::Euler {
            return Err(CoreError::invalid(
                f("solver"),
                "heun",
                "\"euler\" with ancestral = true (ancestral steps are first order)",
            ));
        }
        if self.ancestral && self.s_churn > 0.0 {
            return Err(CoreError::invalid(
                f("s_churn"),
                self.s_churn,
                "0 with ancestral = true (ancestral steps add their own noise)",
            ));
        }
        Ok(())
    }

    /// The noise levels this sampler walks down, from `grid`'s range.
    pub fn sigmas(&self, grid: &KarrasGrid) -> cm_core::Result<Vec<f64>> {
        match self.grid {
            SamplingGrid::Karras => grid.sampling_sigmas(self.steps),
            SamplingGrid::Progressive => grid.progressive_sigmas(self.steps),
        }
    }

    /// The sampler in words, e.g. `"Heun, 18 steps"`,
    /// `"ancestral (DDPM-like), 256 steps"`, `"Euler on the PD grid, 4 steps"`.
    pub fn describe(&self) -> String {
        let method = match (self.ancestral, self.solver) {
            (true, _) => "ancestral (DDPM-like)",
            (false, Solver::Euler) => "Euler",
            (false, Solver::Heun) => "Heun",
        };
        let grid = match self.grid {
            SamplingGrid::Karras => "",
            SamplingGrid::Progressive => " on the PD grid",
        };
        let churn = if self.s_churn > 0.0 {
            format!(", churn {}", self.s_churn)
        } else {
            String::new()
        };
        let unit = if self.steps == 1 { "step" } else { "steps" };
        format!("{method}{grid}, {} {unit}{churn}", self.steps)
    }
}

/// Samples with the network-evaluation count.
#[derive(Debug)]
pub struct Sampled {
    /// The samples.
    pub x: Tensor,
    /// Denoiser evaluations per sample (NFE).
    pub nfe: usize,
}

/// Runs the EDM sampler from `latents` (standard normal, `[B, ...]`) down the
/// Karras grid. Churn noise (Algorithm 2) comes from libtorch's generator.
/// Runs without autograd.
pub fn edm_sample(
    denoiser: &dyn Denoiser,
    latents: &Tensor,
    grid: &KarrasGrid,
    sampler: &EdmSampler,
    cond: Conditioning<'_>,
) -> cm_core::Result<Sampled> {
    edm_sample_with(denoiser, latents, grid, sampler, cond, &mut GlobalNoise)
}

/// [`edm_sample`] with the churn noise drawn from `noise` (for example
/// [`crate::SeededNoise`], reproducible per sample).
pub fn edm_sample_with(
    denoiser: &dyn Denoiser,
    latents: &Tensor,
    grid: &KarrasGrid,
    sampler: &EdmSampler,
    cond: Conditioning<'_>,
    noise: &mut dyn NoiseSource,
) -> cm_core::Result<Sampled> {
    sampler.validate_at("sampler.")?;
    let sigmas = sampler.sigmas(grid)?;
    let _guard = tch::no_grad_guard();
    let batch = latents.size()[0];
    let opts = (latents.kind(), latents.device());
    let level = |t: f64| Tensor::full([batch], t, opts);
    let mut x = latents * sigmas[0];
    let mut nfe = 0;
    let gamma_max = (sampler.s_churn / sampler.steps as f64).min(std::f64::consts::SQRT_2 - 1.0);
    for w in sigmas.windows(2) {
        let (t_cur, t_next) = (w[0], w[1]);
        let gamma = if sampler.s_churn > 0.0 && (sampler.s_tmin..=sampler.s_tmax).contains(&t_cur) {
            gamma_max
        } else {
            0.0
        };
        if sampler.ancestral {
            x = ancestral_step(denoiser, &x, t_cur, t_next, cond, noise);
            nfe += 1;
            continue;
        }
        let t_hat = t_cur * (1.0 + gamma);
        if gamma > 0.0 {
            x = &x
                + noise.standard_normal(&x)
                    * ((t_hat * t_hat - t_cur * t_cur).sqrt() * sampler.s_noise);
        }
        x = sampler
            .solver
            .step(denoiser, &x, &level(t_hat), &level(t_next), cond);
        nfe += sampler.solver.evaluations(t_next == 0.0);
    }
    Ok(Sampled { x, nfe })
}

/// One ancestral step `t -> s` (DDPM's posterior given `x_0 = D(x_t; t)`,
/// Ho et al. 2020, Eq. 6-7, in `sigma` form): an Euler step down to
/// `sigma_down = s^2 / t`, then fresh noise of standard deviation
/// `sigma_up = s sqrt(t^2 - s^2) / t`, so that the variance added matches
/// the posterior's; `s = 0` returns `D`.
fn ancestral_step(
    denoiser: &dyn Denoiser,
    x: &Tensor,
    t: f64,
    s: f64,
    cond: Conditioning<'_>,
    noise: &mut dyn NoiseSource,
) -> Tensor {
    let level = Tensor::full([x.size()[0]], t, (x.kind(), x.device()));
    let denoised = denoiser.denoise(x, &level, cond);
    if s == 0.0 {
        return denoised;
    }
    let sigma_up = s * (t * t - s * s).max(0.0).sqrt() / t;
    let sigma_down = s * s / t;
    // x + (sigma_down - t) (x - D) / t = D + (sigma_down / t) (x - D).
    let mean = &denoised + (x - &denoised) * (sigma_down / t);
    mean + noise.standard_normal(x) * sigma_up
}
