//! The one network trait every architecture implements: a raw network
//! `F(x_in, c_noise, cond)` of the EDM / consistency parameterizations.
//! [`crate::Model`] owns one with its weights.

use cm_core::Conditioning;
use tch::Tensor;

/// A raw network `F(x_in, c_noise, cond)` of the EDM / consistency
/// parameterizations (cm-core wraps it with `c_skip`, `c_out`, `c_in`).
///
/// Shape contract: `x` is `[B, ...sample_shape]` (already scaled by `c_in`),
/// `c_noise` is `[B]`, `cond.class` is `[B]` int64 in `0..=num_classes` (the
/// last being the null class) or `None` (null class for all); the output has
/// the shape of `x`. `train` switches dropout on. Conditioning a network
/// does not embed (a guidance scale for these networks) is rejected by
/// [`crate::Model::check_input`].
pub trait Network: Send + std::fmt::Debug {
    /// `F(x, c_noise, cond)`.
    fn forward_t(
        &self,
        x: &Tensor,
        c_noise: &Tensor,
        cond: Conditioning<'_>,
        train: bool,
    ) -> Tensor;
}
