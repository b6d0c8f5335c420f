//! Consistency-model sampling (Song et al. 2023, Algorithm 1): one step
//! `x = f(T z, T)`, and multistep: for each `tau` of a decreasing sequence,
//! re-noise `x^ = x + sqrt(tau^2 - eps^2) z'` and map back `x = f(x^, tau)`.
//! One network evaluation per step.
//!
//! [`consistency_chain`] is the shared core: the same loop, with a
//! projection applied after every evaluation, is zero-shot editing
//! (Algorithm 4, see [`crate::edit`]), and started from a partly noised image
//! it is SDEdit.

use cm_core::{Conditioning, CoreError, Denoiser, NoiseRange};
use tch::Tensor;

use crate::edm::Sampled;
use crate::noise::{GlobalNoise, NoiseSource};

/// Checks that `taus` decrease strictly inside `(sigma_min, start)`.
pub fn check_taus(taus: &[f64], sigma_min: f64, start: f64) -> cm_core::Result<()> {
    let mut prev = start;
    for (i, &tau) in taus.iter().enumerate() {
        if !(tau > sigma_min && tau < prev) {
            return Err(CoreError::invalid(
                format!("taus[{i}]"),
                tau,
                format!("a decreasing time in ({sigma_min}, {prev})"),
            ));
        }
        prev = tau;
    }
    Ok(())
}

/// `f(x, t)` with the one time `t` for every sample of the batch `x`.
pub fn denoise_at(f: &dyn Denoiser, x: &Tensor, t: f64, cond: Conditioning<'_>) -> Tensor {
    f.denoise(
        x,
        &Tensor::full([x.size()[0]], t, (x.kind(), x.device())),
        cond,
    )
}

/// The multistep refinement of Algorithm 1 / 4 from a clean estimate `x`:
/// for each `tau`, `x <- project(f(x + sqrt(tau^2 - eps^2) z, tau))`, one
/// network evaluation per `tau`. Runs without autograd;
/// `taus` must already be checked ([`check_taus`]).
pub fn consistency_chain(
    f: &dyn Denoiser,
    mut x: Tensor,
    taus: &[f64],
    range: NoiseRange,
    cond: Conditioning<'_>,
    noise: &mut dyn NoiseSource,
    project: &mut dyn FnMut(Tensor) -> Tensor,
) -> Tensor {
    let _guard = tch::no_grad_guard();
    let sigma_min = range.sigma_min;
    for &tau in taus {
        let noisy = &x + noise.standard_normal(&x) * (tau * tau - sigma_min * sigma_min).sqrt();
        x = project(denoise_at(f, &noisy, tau, cond));
    }
    x
}

/// Runs Algorithm 1 with consistency function `f` from standard-normal
/// `latents`: `range` is `[eps, T]`, `taus` the
/// intermediate times (empty for one step; each in `(eps, T)`, decreasing).
/// Fresh noise for the re-noising comes from libtorch's generator. Runs
/// without autograd.
pub fn consistency_sample(
    f: &dyn Denoiser,
    latents: &Tensor,
    range: NoiseRange,
    taus: &[f64],
    cond: Conditioning<'_>,
) -> cm_core::Result<Sampled> {
    consistency_sample_with(f, latents, range, taus, cond, &mut GlobalNoise)
}

/// [`consistency_sample`] with the re-noising drawn from `noise` (for
/// example [`crate::SeededNoise`], reproducible per sample).
pub fn consistency_sample_with(
    f: &dyn Denoiser,
    latents: &Tensor,
    range: NoiseRange,
    taus: &[f64],
    cond: Conditioning<'_>,
    noise: &mut dyn NoiseSource,
) -> cm_core::Result<Sampled> {
    range.validate()?;
    let NoiseRange {
        sigma_min,
        sigma_max,
    } = range;
    check_taus(taus, sigma_min, sigma_max)?;
    let _guard = tch::no_grad_guard();
    let x = denoise_at(f, &(latents * sigma_max), sigma_max, cond);
    let x = consistency_chain(f, x, taus, range, cond, noise, &mut |x| x);
    Ok(Sampled {
        x,
        nfe: 1 + taus.len(),
    })
}
