//! A [`Model`] wrapped by a cm-core parameterization: with
//! `EdmPreconditioning` it is the EDM denoiser `D(x; sigma)`, with
//! `ConsistencyParameterization` the consistency function `f(x, t)`.
//! Either way it implements cm-core's [`Denoiser`], so the PF-ODE solvers,
//! samplers and objectives take any of them.

use cm_core::{Conditioning, Denoiser, Parameterization};
use tch::Tensor;

use crate::model::Model;

/// `c_skip x + c_out F(c_in x, c_noise, cond)` around a model.
#[derive(Debug, Clone, Copy)]
pub struct Preconditioned<'a, P> {
    /// The raw network `F`.
    pub model: &'a Model,
    /// The scalings.
    pub param: P,
    /// Dropout on (training) or off.
    pub train: bool,
}

impl<'a, P: Parameterization> Preconditioned<'a, P> {
    /// Evaluation mode (no dropout).
    pub fn eval(model: &'a Model, param: P) -> Self {
        Preconditioned {
            model,
            param,
            train: false,
        }
    }
}

impl<P: Parameterization> Denoiser for Preconditioned<'_, P> {
    fn denoise(&self, x: &Tensor, sigma: &Tensor, cond: Conditioning<'_>) -> Tensor {
        self.param.apply(x, sigma, |x_in, c_noise| {
            self.model.forward_t(x_in, c_noise, cond, self.train)
        })
    }
}
