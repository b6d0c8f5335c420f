//! Consistency-model sampling (Song et al. 2023, Algorithm 1): one step
//! `x = f(T z, T)`, and multistep: for each `tau` of a decreasing sequence,
//! re-noise `x^ = x + sqrt(tau^2 - eps^2) z'` and map back `x = f(x^, tau)`.
//! One network evaluation per step.

use cm_core::{CoreError, Denoiser};
use tch::Tensor;

use crate::edm::Sampled;

/// Runs Algorithm 1 with consistency function `f` from standard-normal
/// `latents`: `sigma_max` is `T`, `sigma_min` is `eps`, `taus` the
/// intermediate times (empty for one step; each in `(eps, T)`, decreasing).
/// Fresh noise for the re-noising comes from libtorch's generator. Runs
/// without autograd.
pub fn consistency_sample(
    f: &dyn Denoiser,
    latents: &Tensor,
    sigma_max: f64,
    sigma_min: f64,
    taus: &[f64],
    class: Option<&Tensor>,
) -> cm_core::Result<Sampled> {
    let mut prev = sigma_max;
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
    let _guard = tch::no_grad_guard();
    let batch = latents.size()[0];
    let opts = (latents.kind(), latents.device());
    let mut x = f.denoise(
        &(latents * sigma_max),
        &Tensor::full([batch], sigma_max, opts),
        class,
    );
    for &tau in taus {
        let noisy = &x + x.randn_like() * (tau * tau - sigma_min * sigma_min).sqrt();
        x = f.denoise(&noisy, &Tensor::full([batch], tau, opts), class);
    }
    Ok(Sampled {
        x,
        nfe: 1 + taus.len(),
    })
}
