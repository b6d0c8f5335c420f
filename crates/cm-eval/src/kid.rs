//! Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD
//! GANs", Sec. 4 / App. D): the unbiased estimator of the squared maximum
//! mean discrepancy with the cubic polynomial kernel
//! `k(x, y) = (x . y / d + 1)^3`, averaged over random subsets of both sets
//! (the reference code's `n_subsets = 100`, `subset_size = 1000`).
//!
//! Unlike FID, the estimator is unbiased, so values at small N are
//! comparable; it can be slightly negative.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{EvalError, Result};

/// Subset settings of KID.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KidConfig {
    /// Number of random subset pairs averaged.
    pub subsets: usize,
    /// Size of each subset (capped at the smaller set's size).
    pub subset_size: usize,
    /// Seed of the subset draws.
    pub seed: u64,
}

impl Default for KidConfig {
    /// Bińkowski et al.'s reference values: 100 subsets of 1000.
    fn default() -> Self {
        KidConfig {
            subsets: 100,
            subset_size: 1000,
            seed: 0,
        }
    }
}

impl KidConfig {
    /// Checks the fields; `prefix` names the section in errors.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        if self.subsets == 0 {
            return Err(cm_core::CoreError::invalid(
                format!("{prefix}subsets"),
                0,
                "at least 1",
            ));
        }
        if self.subset_size < 2 {
            return Err(cm_core::CoreError::invalid(
                format!("{prefix}subset_size"),
                self.subset_size,
                "at least 2",
            ));
        }
        Ok(())
    }
}

/// KID: mean and standard deviation of the unbiased MMD^2 over subsets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Kid {
    /// Mean over subsets.
    pub mean: f64,
    /// Standard deviation over subsets (0 for one subset).
    pub std: f64,
}

/// The cubic polynomial kernel matrix `(x y^T / d + 1)^3` in float64.
pub fn polynomial_kernel(x: &Tensor, y: &Tensor) -> Tensor {
    let d = x.size()[1] as f64;
    (x.to_kind(Kind::Double)
        .matmul(&y.to_kind(Kind::Double).tr())
        / d
        + 1.0)
        .pow_tensor_scalar(3)
}

fn check_pair(x: &Tensor, y: &Tensor, min: i64) -> Result<()> {
    let (a, b) = (x.size(), y.size());
    if a.len() != 2 || b.len() != 2 || a[1] != b[1] || a[0] < min || b[0] < min {
        return Err(EvalError::InvalidInput(format!(
            "expected feature sets [N, D] and [M, D] with N, M >= {min}, found {a:?} and {b:?}"
        )));
    }
    Ok(())
}

/// The unbiased MMD^2 estimate between `x` `[m, D]` and `y` `[n, D]`
/// (Gretton et al. 2012, Eq. 3): mean of `k(x_i, x_j)` over `i != j`, plus
/// the same for `y`, minus twice the mean of `k(x_i, y_j)` over all pairs.
pub fn mmd2_unbiased(x: &Tensor, y: &Tensor) -> Result<f64> {
    check_pair(x, y, 2)?;
    let _guard = tch::no_grad_guard();
    let (m, n) = (x.size()[0] as f64, y.size()[0] as f64);
    let off_diag_mean = |k: Tensor, n: f64| {
        (k.sum(Kind::Double).double_value(&[]) - k.trace().double_value(&[])) / (n * (n - 1.0))
    };
    let kxx = off_diag_mean(polynomial_kernel(x, x), m);
    let kyy = off_diag_mean(polynomial_kernel(y, y), n);
    let kxy = polynomial_kernel(x, y).mean(Kind::Double).double_value(&[]);
    Ok(kxx + kyy - 2.0 * kxy)
}

/// The subset generator (SplitMix64, shared from cm-core); kept under this
/// path for the rest of the crate.
pub(crate) use cm_core::seed::SplitMix64;

/// KID between feature sets `x` and `y`: the unbiased MMD^2 on
/// `config.subsets` pairs of random subsets of size
/// `min(subset_size, |x|, |y|)`, drawn without replacement. An invalid
/// `config` is an [`EvalError::Config`] naming the field (`kid.subsets`).
pub fn kid(x: &Tensor, y: &Tensor, config: &KidConfig) -> Result<Kid> {
    check_pair(x, y, 2)?;
    config.validate_at("kid.")?;
    let (nx, ny) = (x.size()[0] as usize, y.size()[0] as usize);
    let m = config.subset_size.min(nx).min(ny);
    let mut rng = SplitMix64(config.seed ^ 0x6b69_645f_7375_6273);
    let mut values = Vec::with_capacity(config.subsets);
    for _ in 0..config.subsets {
        let ix = Tensor::from_slice(&rng.choose(nx, m));
        let iy = Tensor::from_slice(&rng.choose(ny, m));
        values.push(mmd2_unbiased(
            &x.index_select(0, &ix.to_device(x.device())),
            &y.index_select(0, &iy.to_device(y.device())),
        )?);
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let std = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
    } else {
        0.0
    };
    Ok(Kid { mean, std })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_config_is_a_config_error_with_the_field_path() {
        let x = Tensor::zeros([4, 2], (Kind::Float, tch::Device::Cpu));
        let config = KidConfig {
            subsets: 0,
            ..KidConfig::default()
        };
        match kid(&x, &x, &config) {
            Err(EvalError::Config(cm_core::CoreError::InvalidConfig { field, .. })) => {
                assert_eq!(field, "kid.subsets")
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
