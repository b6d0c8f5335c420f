//! Loss weightings `lambda(t_n)` of the consistency losses: uniform (CM,
//! Song et al. 2023, Section 5), EDM's `(t^2+sd^2)/(t sd)^2` (Karras et al.
//! 2022, Table 1), and iCT's `1/(t_{n+1} - t_n)` (Song & Dhariwal 2023,
//! Section 3.3).

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{CoreError, Result};
use crate::precond::EdmPreconditioning;

/// A per-example loss weight from the pair of noise levels `(t_n, t_{n+1})`
/// the consistency loss compares (both shape `[B]`).
pub trait LossWeighting {
    /// `lambda` for each example, shape `[B]`.
    fn weight(&self, t_n: &Tensor, t_next: &Tensor) -> Tensor;
}

/// The weightings cm-rs offers, as written in a config
/// (`weighting = "uniform" | "edm" | "inverse_step"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// `lambda = 1` (CM paper).
    #[default]
    Uniform,
    /// EDM's `lambda(t_n) = (t_n^2 + sd^2) / (t_n sd)^2`.
    Edm,
    /// iCT's `lambda(t_n) = 1 / (t_{n+1} - t_n)`: large weights on the finely
    /// spaced small noise levels.
    InverseStep,
}

/// A [`Weighting`] bound to the data standard deviation it may need.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoundWeighting {
    /// The weighting.
    pub weighting: Weighting,
    /// `sigma_data`, used by [`Weighting::Edm`].
    pub sigma_data: f64,
}

impl Weighting {
    /// Binds the weighting to `sigma_data` (> 0).
    pub fn bind(self, sigma_data: f64) -> Result<BoundWeighting> {
        if !(sigma_data.is_finite() && sigma_data > 0.0) {
            return Err(CoreError::invalid(
                "sigma_data",
                sigma_data,
                "a finite number > 0",
            ));
        }
        Ok(BoundWeighting {
            weighting: self,
            sigma_data,
        })
    }
}

impl LossWeighting for BoundWeighting {
    fn weight(&self, t_n: &Tensor, t_next: &Tensor) -> Tensor {
        match self.weighting {
            Weighting::Uniform => t_n.ones_like(),
            Weighting::Edm => EdmPreconditioning {
                sigma_data: self.sigma_data,
            }
            .loss_weight(t_n),
            Weighting::InverseStep => (t_next - t_n).reciprocal(),
        }
    }
}
