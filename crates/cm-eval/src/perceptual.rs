//! A learned perceptual distance in the style of LPIPS (Zhang et al. 2018),
//! on the project's own feature network (the CNN classifier of
//! [`crate::classifier`]; LPIPS's VGG/AlexNet weights cannot be downloaded
//! here). The CM paper found LPIPS the best metric for consistency
//! distillation (Song et al. 2023, Section 6); this is its stand-in, used as
//! `metric = { kind = "feature" }` by CD, CT, iCT and ECT.
//!
//! For images `x`, `y` and each layer `l` of the network (the three conv
//! blocks after ReLU, and the feature vector), the activations are
//! normalised to unit length along the channel dimension (LPIPS Eq. 1),
//! their squared difference summed over channels and averaged over
//! positions:
//!
//! ```text
//! d_l(x, y) = mean_{h,w} | a_l(x)_{hw} / |a_l(x)_{hw}| - a_l(y)_{hw} / |a_l(y)_{hw}| |^2
//! d(x, y)   = sum_l w_l d_l(x, y),   w_l = 1/4 for each of the 4 layers
//! ```
//!
//! LPIPS learns per-channel weights on a human-judgement data set; with no
//! such data here every channel and layer weighs the same (the "lin = 1"
//! variant of LPIPS). Each `d_l` lies in `[0, 4]` (ReLU activations are
//! non-negative, so in fact `[0, 2]`). The network's weights are frozen and
//! batch norm uses its running statistics, so the distance of one pair does
//! not depend on the rest of the batch; gradients flow to the inputs.

use tch::{Kind, Tensor};

use cm_core::DistanceMetric;

use crate::classifier::FeatureNet;
use crate::error::{EvalError, Result};

/// The per-layer weights `w_l`: the three conv blocks, then the feature
/// vector.
pub const LAYER_WEIGHTS: [f64; 4] = [0.25, 0.25, 0.25, 0.25];

/// Guards the unit normalisation of an all-zero activation (LPIPS's 1e-10).
const NORM_EPS: f64 = 1e-10;

/// The LPIPS-style distance on a frozen [`FeatureNet`].
#[derive(Debug)]
pub struct FeatureDistance {
    net: FeatureNet,
}

impl FeatureDistance {
    /// Freezes `net` and wraps it.
    pub fn new(mut net: FeatureNet) -> Self {
        net.var_store_mut().freeze();
        FeatureDistance { net }
    }

    /// The image shape `[C, H, W]` the network takes.
    pub fn shape(&self) -> [i64; 3] {
        self.net.shape()
    }

    /// Checks that batches of `shape` (without the batch dimension) fit.
    pub fn check_shape(&self, shape: &[i64]) -> Result<()> {
        if shape != self.net.shape() {
            return Err(EvalError::InvalidInput(format!(
                "the feature distance's network takes images {:?}, the model makes {shape:?}",
                self.net.shape()
            )));
        }
        Ok(())
    }

    /// `d_l(x, y)` for each layer, each `[B]` (float32).
    pub fn layer_distances(&self, x: &Tensor, y: &Tensor) -> Vec<Tensor> {
        let device = self.net.var_store().device();
        let to = |t: &Tensor| t.to_device(device).to_kind(Kind::Float);
        let (ax, ay) = (
            self.net.layer_activations(&to(x)),
            self.net.layer_activations(&to(y)),
        );
        ax.iter()
            .zip(&ay)
            .map(|(a, b)| {
                // Channels are dim 1 for conv maps [B, C, H, W] and vectors [B, D].
                let unit = |t: &Tensor| {
                    t / (t.square().sum_dim_intlist(1, true, Kind::Float).sqrt() + NORM_EPS)
                };
                let sq = (unit(a) - unit(b))
                    .square()
                    .sum_dim_intlist(1, false, Kind::Float);
                if sq.dim() > 1 {
                    sq.flatten(1, -1).mean_dim(1, false, Kind::Float)
                } else {
                    sq
                }
                .to_device(x.device())
            })
            .collect()
    }
}

impl DistanceMetric for FeatureDistance {
    fn distance(&self, x: &Tensor, y: &Tensor) -> Tensor {
        self.layer_distances(x, y)
            .into_iter()
            .zip(LAYER_WEIGHTS)
            .map(|(d, w)| d * w)
            .reduce(|a, b| a + b)
            .expect("four layers")
    }

    fn name(&self) -> &str {
        "feature"
    }
}
