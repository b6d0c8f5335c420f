//! Network parameterizations: EDM preconditioning (Karras et al. 2022, Table 1)
//! and the consistency-model boundary scalings (Song et al. 2023, Appendix C,
//! Eq. 6), behind one [`Parameterization`] trait.
//!
//! Both wrap a raw network `F` as
//! `D(x; t) = c_skip(t) x + c_out(t) F(c_in(t) x, c_noise(t))`.
//! Noise levels are per-example tensors of shape `[B]`; the scalings come back
//! with the same shape and are broadcast over the sample's other dimensions.

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// The four scalings of a parameterization for a batch of noise levels, each
/// of the noise levels' shape `[B]`.
#[derive(Debug)]
pub struct Scalings {
    /// Weight of the skip connection `c_skip(t)`.
    pub c_skip: Tensor,
    /// Weight of the network output `c_out(t)`.
    pub c_out: Tensor,
    /// Input scaling `c_in(t)`.
    pub c_in: Tensor,
    /// Noise conditioning fed to the network, `c_noise(t)`.
    pub c_noise: Tensor,
}

impl Scalings {
    /// `c_in(t) x`, the network input.
    pub fn scale_input(&self, x: &Tensor) -> Tensor {
        x * append_dims(&self.c_in, x.dim())
    }

    /// `c_skip(t) x + c_out(t) raw`, the parameterized output (one fused
    /// multiply-add into the first product, no third temporary).
    pub fn combine(&self, x: &Tensor, raw: &Tensor) -> Tensor {
        let ndim = x.dim();
        let mut out = x * append_dims(&self.c_skip, ndim);
        let _ = out.addcmul_(raw, &append_dims(&self.c_out, ndim));
        out
    }
}

/// Reshapes a `[B]` tensor to `[B, 1, ..., 1]` with `ndim` dimensions, so it
/// broadcasts against a batch of samples.
pub fn append_dims(t: &Tensor, ndim: usize) -> Tensor {
    let mut shape = t.size();
    shape.resize(ndim.max(shape.len()), 1);
    t.reshape(shape)
}

/// A way of wrapping a raw network into a denoiser / consistency function.
pub trait Parameterization {
    /// The scalings for a batch of noise levels (shape `[B]`).
    fn scalings(&self, sigma: &Tensor) -> Scalings;

    /// The data standard deviation `sigma_data` the scalings assume.
    fn sigma_data(&self) -> f64;

    /// Applies the parameterization around a raw network:
    /// `c_skip x + c_out F(c_in x, c_noise)`. `network` receives the scaled
    /// input and `c_noise` (shape `[B]`).
    fn apply<F>(&self, x: &Tensor, sigma: &Tensor, network: F) -> Tensor
    where
        F: FnOnce(&Tensor, &Tensor) -> Tensor,
        Self: Sized,
    {
        let s = self.scalings(sigma);
        let raw = network(&s.scale_input(x), &s.c_noise);
        s.combine(x, &raw)
    }
}

/// `num / denom` elementwise, with `num` rounded to the tensor's dtype first,
/// so that `ratio(a, 0 + a)` is exactly 1 (the boundary condition needs it).
fn ratio(num: f64, denom: &Tensor) -> Tensor {
    denom.full_like(num) / denom
}

/// How the noise level is encoded for the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseConditioning {
    /// `c_noise = ln(t) / 4` (EDM, Table 1), for EDM-style networks.
    #[default]
    Edm,
    /// `c_noise = 1000 * 0.25 * ln(t + 1e-44)`, what the reference consistency
    /// code (and diffusers' `CMStochasticIterativeScheduler`) feeds its ADM
    /// U-Net (timestep-like range). Computed in f64 as they do, then
    /// returned in `t`'s dtype: in f32 the logarithm alone would move the
    /// time by up to an f32 ulp of ~1100.
    Adm,
}

impl NoiseConditioning {
    /// Encodes a batch of noise levels.
    pub fn c_noise(self, sigma: &Tensor) -> Tensor {
        match self {
            NoiseConditioning::Edm => sigma.log() * 0.25,
            NoiseConditioning::Adm => {
                ((sigma.to_kind(tch::Kind::Double) + 1e-44).log() * 250.0).to_kind(sigma.kind())
            }
        }
    }
}

/// EDM preconditioning (Karras et al. 2022, Table 1, "Ours"):
/// `c_skip = sd^2/(s^2+sd^2)`, `c_out = s sd/sqrt(s^2+sd^2)`,
/// `c_in = 1/sqrt(s^2+sd^2)`, `c_noise = ln(s)/4`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdmPreconditioning {
    /// Data standard deviation (0.5 for images in [-1, 1]).
    pub sigma_data: f64,
}

impl EdmPreconditioning {
    /// EDM's loss weight `lambda(s) = (s^2+sd^2)/(s sd)^2` (Table 1), which
    /// makes the effective training target have unit variance at every level.
    pub fn loss_weight(&self, sigma: &Tensor) -> Tensor {
        let sd2 = self.sigma_data * self.sigma_data;
        (sigma.square() + sd2) / (sigma.square() * sd2)
    }
}

impl Parameterization for EdmPreconditioning {
    fn scalings(&self, sigma: &Tensor) -> Scalings {
        let sd = self.sigma_data;
        let s2_sd2 = sigma.square() + sd * sd;
        let inv_norm = s2_sd2.rsqrt();
        Scalings {
            c_skip: ratio(sd * sd, &s2_sd2),
            c_out: sigma * &inv_norm * sd,
            c_in: inv_norm,
            c_noise: NoiseConditioning::Edm.c_noise(sigma),
        }
    }

    fn sigma_data(&self) -> f64 {
        self.sigma_data
    }
}

/// Consistency-model parameterization with the boundary condition
/// `f(x, sigma_min) = x` (Song et al. 2023, Eq. 6 and Appendix C):
/// `c_skip = sd^2/((t-eps)^2+sd^2)`, `c_out = sd (t-eps)/sqrt(sd^2+t^2)`,
/// `c_in = 1/sqrt(t^2+sd^2)`.
///
/// At `t = eps` the tensor arithmetic gives `c_skip = 1` and `c_out = 0`
/// exactly (`t - eps` is computed first and is exactly zero), so the boundary
/// condition holds bit for bit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConsistencyParameterization {
    /// Data standard deviation `sd`.
    pub sigma_data: f64,
    /// The smallest noise level `eps`, where `f` is the identity.
    pub sigma_min: f64,
    /// How `t` is encoded for the network.
    pub noise_conditioning: NoiseConditioning,
}

impl Parameterization for ConsistencyParameterization {
    fn scalings(&self, sigma: &Tensor) -> Scalings {
        let sd = self.sigma_data;
        let shifted = sigma - self.sigma_min;
        Scalings {
            c_skip: ratio(sd * sd, &(shifted.square() + sd * sd)),
            c_out: &shifted * sd * (sigma.square() + sd * sd).rsqrt(),
            c_in: (sigma.square() + sd * sd).rsqrt(),
            c_noise: self.noise_conditioning.c_noise(sigma),
        }
    }

    fn sigma_data(&self) -> f64 {
        self.sigma_data
    }
}
