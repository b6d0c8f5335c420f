//! Distance metrics `d(x, y)` of the consistency losses (Song et al. 2023,
//! Section 5: squared L2, L1, LPIPS; Song & Dhariwal 2023, Section 3.3:
//! pseudo-Huber), behind one [`DistanceMetric`] trait so a learned
//! feature-space metric (LPIPS-like, from cm-eval) plugs in the same way.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{CoreError, Result};

/// A per-example distance between two batches of the same shape `[B, ...]`.
pub trait DistanceMetric {
    /// `d(x_i, y_i)` for each example, shape `[B]`, computed in float32 or
    /// wider.
    fn distance(&self, x: &Tensor, y: &Tensor) -> Tensor;

    /// A short name for logs and reports.
    fn name(&self) -> &str;
}

/// Sum of squares over all but the batch dimension, in float32 or wider.
fn sum_squares(diff: &Tensor) -> Tensor {
    let kind = wide_kind(diff.kind());
    diff.square().flatten(1, -1).sum_dim_intlist(1, false, kind)
}

/// Reductions of half-precision tensors run in float32.
fn wide_kind(kind: Kind) -> Kind {
    match kind {
        Kind::Half | Kind::BFloat16 => Kind::Float,
        k => k,
    }
}

/// Mean squared error per example: `mean((x - y)^2)` over the non-batch
/// dimensions (the reference code's `l2` metric, `mean_flat`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SquaredL2;

impl DistanceMetric for SquaredL2 {
    fn distance(&self, x: &Tensor, y: &Tensor) -> Tensor {
        let diff = x - y;
        diff.square()
            .flatten(1, -1)
            .mean_dim(1, false, wide_kind(diff.kind()))
    }

    fn name(&self) -> &str {
        "l2"
    }
}

/// Mean absolute error per example: `mean(|x - y|)` over the non-batch
/// dimensions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct L1;

impl DistanceMetric for L1 {
    fn distance(&self, x: &Tensor, y: &Tensor) -> Tensor {
        let diff = x - y;
        diff.abs()
            .flatten(1, -1)
            .mean_dim(1, false, wide_kind(diff.kind()))
    }

    fn name(&self) -> &str {
        "l1"
    }
}

/// The pseudo-Huber metric `d(x, y) = sqrt(|x - y|^2 + c^2) - c` (iCT, Eq. 9),
/// where `|.|` is the full L2 norm over the non-batch dimensions. It behaves
/// like `|x - y|^2 / (2c)` near 0 and like `|x - y|` far away.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PseudoHuber {
    /// The transition scale `c` (> 0).
    pub c: f64,
}

impl PseudoHuber {
    /// iCT's choice for data of `dim` values per example: `c = 0.00054 sqrt(dim)`
    /// (0.03 for 3x32x32 CIFAR-10).
    pub fn for_dim(dim: usize) -> Self {
        PseudoHuber {
            c: 0.00054 * (dim as f64).sqrt(),
        }
    }
}

impl DistanceMetric for PseudoHuber {
    fn distance(&self, x: &Tensor, y: &Tensor) -> Tensor {
        // sqrt(s + c^2) - c rewritten as s / (sqrt(s + c^2) + c): the same
        // value and gradient, without the cancellation that makes the
        // textbook form lose all precision in float32 when s << c^2.
        let s = sum_squares(&(x - y));
        let c = self.c;
        &s / ((&s + c * c).sqrt() + c)
    }

    fn name(&self) -> &str {
        "pseudo_huber"
    }
}

/// A distance metric as written in a config: `{ kind = "l2" }`, `{ kind =
/// "l1" }`, `{ kind = "pseudo_huber", c = 0.03 }` (`c` defaults to
/// `0.00054 sqrt(dim)`) or `{ kind = "feature" }` (the LPIPS-style distance
/// on the data set's feature network, cm-eval's `FeatureDistance`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MetricConfig {
    /// [`SquaredL2`].
    #[default]
    L2,
    /// [`L1`].
    L1,
    /// [`PseudoHuber`]; `c` omitted means iCT's `0.00054 sqrt(dim)`.
    PseudoHuber {
        /// Explicit `c`, or `None` for the data-dependent default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        c: Option<f64>,
    },
    /// The learned perceptual distance (cm-eval's `FeatureDistance`): it
    /// needs the data set's feature network, so the training pipelines
    /// build it (`cm_train::build_metric`), not [`MetricConfig::build`].
    Feature,
}

impl MetricConfig {
    /// Checks an explicit pseudo-Huber `c > 0`.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        if let MetricConfig::PseudoHuber { c: Some(c) } = *self {
            if !(c.is_finite() && c > 0.0) {
                return Err(CoreError::invalid(
                    format!("{prefix}c"),
                    c,
                    "a finite number > 0",
                ));
            }
        }
        Ok(())
    }

    /// Builds a closed-form metric for data with `dim` values per example;
    /// `feature` is an error naming `prefix` (it is built from a feature
    /// network by the training pipelines).
    pub fn build(&self, dim: usize, prefix: &str) -> Result<Box<dyn DistanceMetric + Send>> {
        Ok(match *self {
            MetricConfig::L2 => Box::new(SquaredL2),
            MetricConfig::L1 => Box::new(L1),
            MetricConfig::PseudoHuber { c: Some(c) } => Box::new(PseudoHuber { c }),
            MetricConfig::PseudoHuber { c: None } => Box::new(PseudoHuber::for_dim(dim)),
            MetricConfig::Feature => {
                return Err(CoreError::invalid(
                    format!("{prefix}kind"),
                    "feature",
                    "l2, l1 or pseudo_huber here (the feature distance needs a data set's feature \
                     network: CD, CT, iCT and ECT runs build it)",
                ))
            }
        })
    }
}
