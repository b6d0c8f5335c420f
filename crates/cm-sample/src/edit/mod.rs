//! Zero-shot editing with a consistency model (Song et al. 2023,
//! "Consistency Models", Algorithm 4 and Section 6.3).
//!
//! A consistency model maps any noisy point of a PF-ODE trajectory to its
//! origin, so edits that only constrain *part* of an image need no
//! retraining: alternate "denoise with `f`" and "put the known part back".
//! Algorithm 4 takes a reference image `y`, an invertible linear map `A`
//! (here always orthogonal, so `A^-1 = A^T`), a binary mask `Omega` in `A`'s
//! output space (1 = to generate, 0 = known) and times `tau_1 > tau_2 > ...`:
//!
//! ```text
//! y <- A^-1[(A y) ⊙ (1 - Omega) + 0 ⊙ Omega]
//! x <- f(y + T z, T)
//! x <- A^-1[(A y) ⊙ (1 - Omega) + (A x) ⊙ Omega]
//! for tau in taus:
//!     x <- f(x + sqrt(tau^2 - eps^2) z', tau)
//!     x <- A^-1[(A y) ⊙ (1 - Omega) + (A x) ⊙ Omega]
//! ```
//!
//! with `T = sigma_max`, `eps = sigma_min`; [`zero_shot_edit`] runs it on the
//! shared chain of [`crate::consistency_chain`]. The tasks differ only in `A`
//! and `Omega` ([`EditTask`]):
//!
//! - inpainting: `A = I` ([`Identity`]), `Omega` the region to fill
//!   ([`box_mask`], [`half_mask`], [`stroke_mask`], [`mask_from_values`],
//!   [`mask_from_image`]);
//! - colorization: `A` the per-pixel orthogonal colour transform
//!   [`LumaChroma`] (luma plus two chroma axes), `Omega` = chroma;
//! - super-resolution: `A` the per-patch orthonormal DCT-II basis
//!   [`PatchBasis`], whose first vector is the patch mean, `Omega` = every
//!   coefficient but the mean.
//!
//! The other edits of the paper need no projection: [`denoise`] (one
//! evaluation `f(x_s, s)` at the known noise level), [`interpolate`]
//! (spherical interpolation of two latents, then `f(T ·, T)`) and [`sdedit`]
//! (stroke-guided editing: noise a stroke painting to a middle time and run
//! the multistep chain from there).
//!
//! Images are `[B, C, H, W]` tensors in `[-1, 1]`. Everything runs without
//! autograd, and bad input (shapes, factors, noise levels, masks) is an
//! error naming the offending field, never a panic.

mod checks;
mod mask;
mod tasks;
mod transform;

pub use mask::{box_mask, half_mask, mask_from_image, mask_from_values, stroke_mask, Side};
pub use tasks::{denoise, interpolate, project, sdedit, slerp, zero_shot_edit, EditPlan, EditTask};
pub use transform::{Identity, LumaChroma, PatchBasis, Transform};
