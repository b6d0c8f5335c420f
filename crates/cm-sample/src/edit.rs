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

use cm_core::{Conditioning, CoreError, Denoiser, NoiseRange};
use tch::{Device, Kind, Tensor};

use crate::consistency::{check_taus, consistency_chain, denoise_at};
use crate::edm::Sampled;
use crate::noise::{sample_seed, NoiseSource};

/// An orthogonal linear map on image batches: the `A` of Algorithm 4.
///
/// Orthogonality makes the projection of Algorithm 4 an exact orthogonal
/// projection onto the images that agree with `y` on the known coordinates,
/// and makes `inverse` simply the transpose (no solve, no conditioning
/// issues). `forward` and `inverse` may panic on shapes that
/// [`Transform::output_shape`] rejects; [`zero_shot_edit`] checks first.
pub trait Transform {
    /// A short name (`identity`, `luma-chroma`, `patch-dct`).
    fn name(&self) -> &'static str;
    /// The shape of `forward(x)` for an input of shape `input`
    /// (`[B, C, H, W]`), or an error if the transform does not apply.
    fn output_shape(&self, input: &[i64]) -> cm_core::Result<Vec<i64>>;
    /// `A x`.
    fn forward(&self, x: &Tensor) -> Tensor;
    /// `A^-1 y = A^T y`.
    fn inverse(&self, y: &Tensor) -> Tensor;
}

/// Checks that `shape` is `[B, C, H, W]` with every size positive.
fn check_image_shape(field: &str, shape: &[i64]) -> cm_core::Result<()> {
    if shape.len() != 4 || shape.iter().any(|&s| s <= 0) {
        return Err(CoreError::invalid(
            field,
            format!("{shape:?}"),
            "an image batch [B, C, H, W] with positive sizes",
        ));
    }
    Ok(())
}

/// The identity: inpainting's `A`, masks live in pixel space.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl Transform for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn output_shape(&self, input: &[i64]) -> cm_core::Result<Vec<i64>> {
        check_image_shape("image.shape", input)?;
        Ok(input.to_vec())
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.shallow_clone()
    }

    fn inverse(&self, y: &Tensor) -> Tensor {
        y.shallow_clone()
    }
}

/// The per-pixel orthogonal colour transform of colorization: RGB to one
/// luma and two chroma coordinates.
///
/// Row 0 of the 3x3 matrix `Q` is the Rec. 601 luma direction
/// `(0.299, 0.587, 0.114)` normalised to unit length, so a grayscale image
/// fixes exactly output channel 0. Rows 1 and 2 complete an orthonormal basis
/// by Gram–Schmidt of the fixed vectors blue `(0, 0, 1)` and red `(1, 0, 0)`
/// against the rows before them (a blue-difference and a red-difference
/// axis), so the matrix is the same on every run. Output channel 0 is luma,
/// 1 and 2 chroma; the input's kind and device are kept.
#[derive(Clone, Copy, Debug, Default)]
pub struct LumaChroma;

impl LumaChroma {
    /// The Rec. 601 luma weights, before normalisation.
    pub const LUMA: [f64; 3] = [0.299, 0.587, 0.114];

    /// The orthogonal matrix `Q` (rows: luma, blue-difference,
    /// red-difference), computed in f64.
    pub fn matrix() -> [[f64; 3]; 3] {
        fn dot(a: &[f64; 3], b: &[f64; 3]) -> f64 {
            a.iter().zip(b).map(|(x, y)| x * y).sum()
        }
        fn normalised(a: [f64; 3]) -> [f64; 3] {
            let n = dot(&a, &a).sqrt();
            a.map(|x| x / n)
        }
        let mut rows = [normalised(Self::LUMA), [0.0; 3], [0.0; 3]];
        for (i, start) in [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]].into_iter().enumerate() {
            let mut v = start;
            // Modified Gram–Schmidt: subtract each earlier row in turn.
            for prev in rows.iter().take(i + 1) {
                let d = dot(&v, prev);
                for k in 0..3 {
                    v[k] -= d * prev[k];
                }
            }
            rows[i + 1] = normalised(v);
        }
        rows
    }

    /// `Q` as a `[3, 3]` tensor of the given kind and device.
    fn tensor(kind: Kind, device: Device) -> Tensor {
        let flat: Vec<f64> = Self::matrix().iter().flatten().copied().collect();
        square_matrix(&flat, 3, kind, device)
    }
}

impl Transform for LumaChroma {
    fn name(&self) -> &'static str {
        "luma-chroma"
    }

    fn output_shape(&self, input: &[i64]) -> cm_core::Result<Vec<i64>> {
        check_image_shape("image.shape", input)?;
        if input[1] != 3 {
            return Err(CoreError::invalid(
                "image.channels",
                input[1],
                "3 (RGB) for the luma/chroma transform of colorization",
            ));
        }
        Ok(input.to_vec())
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let q = Self::tensor(x.kind(), x.device());
        Tensor::einsum("ij,bjhw->bihw", &[&q, x], None::<i64>)
    }

    fn inverse(&self, y: &Tensor) -> Tensor {
        // Q orthogonal: the inverse is the transpose.
        let q = Self::tensor(y.kind(), y.device());
        Tensor::einsum("ji,bjhw->bihw", &[&q, y], None::<i64>)
    }
}

/// The per-patch orthonormal 2-D DCT-II basis of super-resolution.
///
/// Every channel is cut into non-overlapping `factor x factor` patches, and
/// each patch is expressed in the Kronecker product of two 1-D orthonormal
/// DCT-II bases. The first basis vector is the constant `1 / factor`, so
/// coefficient 0 of a patch is `factor x` its mean: a low-resolution image
/// (the patch means) fixes exactly coefficient 0 of every patch.
///
/// Layout: `[B, C, H, W]` maps to `[B, C * f * f, H / f, W / f]` (`f` =
/// `factor`); channel `c * f * f + u * f + v` holds the coefficient of
/// vertical frequency `u` and horizontal frequency `v` of channel `c`, so the
/// mean coordinate of channel `c` is output channel `c * f * f` (the same
/// channel order as `pixel_unshuffle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchBasis {
    /// Patch side, at least 2; must divide the image height and width.
    pub factor: i64,
}

impl PatchBasis {
    /// A basis of `factor x factor` patches; `factor` must be at least 2.
    pub fn new(factor: i64) -> cm_core::Result<Self> {
        if factor < 2 {
            return Err(CoreError::invalid(
                "factor",
                factor,
                "a patch side of at least 2",
            ));
        }
        Ok(PatchBasis { factor })
    }

    /// The `f^2 x f^2` matrix `D[(u, v), (i, j)] = C[u][i] C[v][j]`, `C` the
    /// orthonormal 1-D DCT-II matrix, as a tensor of the given kind/device.
    fn matrix(&self, kind: Kind, device: Device) -> Tensor {
        let f = self.factor as usize;
        let n = f as f64;
        let c = |k: usize, i: usize| {
            let scale = if k == 0 {
                (1.0 / n).sqrt()
            } else {
                (2.0 / n).sqrt()
            };
            scale * (std::f64::consts::PI * (2 * i + 1) as f64 * k as f64 / (2.0 * n)).cos()
        };
        let mut d = Vec::with_capacity(f.pow(4));
        for u in 0..f {
            for v in 0..f {
                for i in 0..f {
                    for j in 0..f {
                        d.push(c(u, i) * c(v, j));
                    }
                }
            }
        }
        square_matrix(&d, (f * f) as i64, kind, device)
    }
}

impl Transform for PatchBasis {
    fn name(&self) -> &'static str {
        "patch-dct"
    }

    fn output_shape(&self, input: &[i64]) -> cm_core::Result<Vec<i64>> {
        check_image_shape("image.shape", input)?;
        let f = self.factor;
        if f < 2 || input[2] % f != 0 || input[3] % f != 0 {
            return Err(CoreError::invalid(
                "factor",
                f,
                format!(
                    "a patch side >= 2 dividing the image height {} and width {}",
                    input[2], input[3]
                ),
            ));
        }
        Ok(vec![input[0], input[1] * f * f, input[2] / f, input[3] / f])
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let f = self.factor;
        let (b, c, h, w) = x.size4().expect("PatchBasis::forward takes [B, C, H, W]");
        let d = self.matrix(x.kind(), x.device());
        // pixel_unshuffle puts in-patch pixel (i, j) of channel c at channel
        // c*f*f + i*f + j; the DCT then mixes those f*f in-patch positions.
        let patches = x.pixel_unshuffle(f).reshape([b, c, f * f, h / f, w / f]);
        Tensor::einsum("kp,bcphw->bckhw", &[&d, &patches], None::<i64>).reshape([
            b,
            c * f * f,
            h / f,
            w / f,
        ])
    }

    fn inverse(&self, y: &Tensor) -> Tensor {
        let f = self.factor;
        let (b, cff, h, w) = y
            .size4()
            .expect("PatchBasis::inverse takes [B, C*f*f, H/f, W/f]");
        let d = self.matrix(y.kind(), y.device());
        let coeffs = y.reshape([b, cff / (f * f), f * f, h, w]);
        // D orthogonal: the inverse is the transpose (contract over k).
        Tensor::einsum("kp,bckhw->bcphw", &[&d, &coeffs], None::<i64>)
            .reshape([b, cff, h, w])
            .pixel_shuffle(f)
    }
}

/// The projection step of Algorithm 4:
/// `A^-1[(A y) ⊙ (1 - Omega) + (A x) ⊙ Omega]`.
///
/// `known` is `A y` (the full coefficients of the reference; only those
/// where `omega` is 0 are used), `omega` the binary mask in `A`'s output
/// space (1 = generated, broadcastable to `known`). The selection is done by
/// `where` rather than arithmetic, which is the same for a 0/1 mask but
/// copies the known coefficients bit for bit (and keeps a non-finite
/// generated value from leaking into them). Shapes are assumed checked (as
/// [`zero_shot_edit`] does).
pub fn project(transform: &dyn Transform, omega: &Tensor, known: &Tensor, x: &Tensor) -> Tensor {
    let generate = omega.to_device(x.device()).gt(0.5);
    transform.inverse(&transform.forward(x).where_self(&generate, known))
}

/// Checks that `mask` is 4-D, broadcastable to `target` (each size 1 or
/// equal) and holds only 0 and 1.
fn check_mask(field: &str, mask: &Tensor, target: &[i64]) -> cm_core::Result<()> {
    let shape = mask.size();
    let fits =
        shape.len() == target.len() && shape.iter().zip(target).all(|(&m, &t)| m == t || m == 1);
    if !fits {
        return Err(CoreError::invalid(
            field,
            format!("shape {shape:?}"),
            format!("a mask broadcastable to {target:?} (each size 1 or equal)"),
        ));
    }
    let binary = mask.eq(0.0).logical_or(&mask.eq(1.0)).all();
    if !bool::try_from(&binary).unwrap_or(false) {
        return Err(CoreError::invalid(
            field,
            "non-binary values",
            "a mask of 0 (known) and 1 (to generate) only",
        ));
    }
    Ok(())
}

/// Checks that `x` is a floating-point `[B, C, H, W]` batch.
fn check_images(field: &str, x: &Tensor) -> cm_core::Result<()> {
    check_image_shape(&format!("{field}.shape"), &x.size())?;
    if !x.is_floating_point() {
        return Err(CoreError::invalid(
            format!("{field}.kind"),
            format!("{:?}", x.kind()),
            "a floating-point tensor",
        ));
    }
    Ok(())
}

/// Checks that `class`, when given, has `batch` rows.
fn check_class(class: Option<&Tensor>, batch: i64) -> cm_core::Result<()> {
    if let Some(c) = class {
        let rows = c.size().first().copied().unwrap_or(0);
        if rows != batch {
            return Err(CoreError::invalid(
                "class",
                format!("shape {:?}", c.size()),
                format!("one label row per image ({batch})"),
            ));
        }
    }
    Ok(())
}

/// Zero-shot editing, Algorithm 4 of the paper: fills the coordinates of
/// `A x` where `omega` is 1 with samples from the consistency function `f`
/// while keeping `A y` where it is 0.
///
/// `y` is the reference batch `[B, C, H, W]` (for super-resolution the
/// low-resolution image upsampled by nearest neighbour, for colorization the
/// grayscale image repeated over three channels); `omega` a 0/1 mask
/// broadcastable to `transform`'s output (1 = to generate); `range` is
/// `[eps, T]`; `taus` the decreasing times of the refinement
/// steps in `(eps, T)` (empty: one step). The projection follows the first
/// evaluation and every step, so the known part of the result is exactly the
/// reference's. `noise` must be set up for `B` samples (a [`crate::SeededNoise`]
/// of another size panics). `nfe = 1 + taus.len()`. Runs without autograd.
#[allow(clippy::too_many_arguments)] // the algorithm's inputs, as in the paper
pub fn zero_shot_edit(
    f: &dyn Denoiser,
    y: &Tensor,
    transform: &dyn Transform,
    omega: &Tensor,
    range: NoiseRange,
    taus: &[f64],
    cond: Conditioning<'_>,
    noise: &mut dyn NoiseSource,
) -> cm_core::Result<Sampled> {
    check_images("y", y)?;
    let out_shape = transform.output_shape(&y.size())?;
    check_mask("omega", omega, &out_shape)?;
    range.validate()?;
    let NoiseRange {
        sigma_min,
        sigma_max,
    } = range;
    check_taus(taus, sigma_min, sigma_max)?;
    let batch = y.size()[0];
    check_class(cond.class, batch)?;

    let _guard = tch::no_grad_guard();
    let omega = omega.to_kind(y.kind()).to_device(y.device());
    let known = transform.forward(y);
    // y <- A^-1[(A y) ⊙ (1 - Omega)]: the unknown coordinates start at 0.
    let start = project(transform, &omega, &known, &y.zeros_like());
    let z = noise.standard_normal(&start);
    let x = denoise_at(f, &(&start + z * sigma_max), sigma_max, cond);
    let x = project(transform, &omega, &known, &x);
    let x = consistency_chain(f, x, taus, range, cond, noise, &mut |x| {
        project(transform, &omega, &known, &x)
    });
    Ok(Sampled {
        x,
        nfe: 1 + taus.len(),
    })
}

/// An edit of Algorithm 4, described by what it keeps.
#[derive(Debug)]
pub enum EditTask {
    /// Fill a region: `A = I`, `Omega = mask`.
    Inpaint {
        /// 0/1 mask, `[1 or B, 1 or C, H, W]`, 1 = to generate (see
        /// [`box_mask`] and friends).
        mask: Tensor,
    },
    /// Colour a grayscale image: `A` = [`LumaChroma`], `Omega` = the two
    /// chroma channels. Needs 3-channel images.
    Colorize,
    /// Add detail to a low-resolution image: `A` = [`PatchBasis`] of
    /// `factor`, `Omega` = every coefficient but each patch's mean.
    SuperResolution {
        /// The upsampling factor (patch side), at least 2, dividing H and W.
        factor: i64,
    },
}

/// The `A` and `Omega` of an [`EditTask`] for one image shape.
pub struct EditPlan {
    /// The orthogonal map `A`.
    pub transform: Box<dyn Transform>,
    /// The 0/1 mask in `A`'s output space (f32, broadcastable to it),
    /// 1 = to generate.
    pub omega: Tensor,
}

impl std::fmt::Debug for EditPlan {
    fn fmt(&self, fmt: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fmt.debug_struct("EditPlan")
            .field("transform", &self.transform.name())
            .field("omega", &self.omega.size())
            .finish()
    }
}

impl EditTask {
    /// A short name (`inpaint`, `colorize`, `super-resolution`).
    pub fn name(&self) -> &'static str {
        match self {
            EditTask::Inpaint { .. } => "inpaint",
            EditTask::Colorize => "colorize",
            EditTask::SuperResolution { .. } => "super-resolution",
        }
    }

    /// The transform and mask for images of shape `[B, C, H, W]`; errors
    /// (naming the field) if the task does not apply to that shape.
    pub fn plan(&self, shape: &[i64]) -> cm_core::Result<EditPlan> {
        check_image_shape("image.shape", shape)?;
        match self {
            EditTask::Inpaint { mask } => {
                Identity.output_shape(shape)?;
                check_mask("mask", mask, shape)?;
                Ok(EditPlan {
                    transform: Box::new(Identity),
                    omega: mask.to_kind(Kind::Float),
                })
            }
            EditTask::Colorize => {
                LumaChroma.output_shape(shape)?;
                Ok(EditPlan {
                    transform: Box::new(LumaChroma),
                    omega: Tensor::from_slice(&[0f32, 1.0, 1.0]).reshape([1, 3, 1, 1]),
                })
            }
            EditTask::SuperResolution { factor } => {
                let basis = PatchBasis::new(*factor)?;
                let out = basis.output_shape(shape)?;
                let per = factor * factor;
                // Generate everything but coefficient 0 (the mean) of each
                // channel's patch block.
                let omega: Vec<f32> = (0..out[1])
                    .map(|k| if k % per == 0 { 0.0 } else { 1.0 })
                    .collect();
                Ok(EditPlan {
                    transform: Box::new(basis),
                    omega: Tensor::from_slice(&omega).reshape([1, out[1], 1, 1]),
                })
            }
        }
    }

    /// [`EditTask::plan`] for `y`'s shape, then [`zero_shot_edit`].
    pub fn run(
        &self,
        f: &dyn Denoiser,
        y: &Tensor,
        range: NoiseRange,
        taus: &[f64],
        cond: Conditioning<'_>,
        noise: &mut dyn NoiseSource,
    ) -> cm_core::Result<Sampled> {
        check_images("y", y)?;
        let plan = self.plan(&y.size())?;
        zero_shot_edit(
            f,
            y,
            plan.transform.as_ref(),
            &plan.omega,
            range,
            taus,
            cond,
            noise,
        )
    }
}

/// Denoising (paper Section 6.3): a consistency model maps `x_s`, an image
/// with Gaussian noise of known standard deviation `sigma`, straight to a
/// clean image: `f(x_s, sigma)`. `sigma` must lie in `[sigma_min,
/// sigma_max]`, the times `f` is defined on; `nfe = 1`. Runs without
/// autograd.
pub fn denoise(
    f: &dyn Denoiser,
    x_noisy: &Tensor,
    sigma: f64,
    range: NoiseRange,
    cond: Conditioning<'_>,
) -> cm_core::Result<Sampled> {
    check_images("x_noisy", x_noisy)?;
    range.validate()?;
    let NoiseRange {
        sigma_min,
        sigma_max,
    } = range;
    if !range.contains(sigma) {
        return Err(CoreError::invalid(
            "sigma",
            sigma,
            format!("a noise level in [{sigma_min}, {sigma_max}]"),
        ));
    }
    let batch = x_noisy.size()[0];
    check_class(cond.class, batch)?;
    let _guard = tch::no_grad_guard();
    let x = denoise_at(f, x_noisy, sigma, cond);
    Ok(Sampled { x, nfe: 1 })
}

/// Spherical interpolation, per sample, between `z0` and `z1` (same shape
/// `[B, ...]`): with `theta` the angle between the flattened rows,
/// `sin((1 - alpha) theta) / sin(theta) z0 + sin(alpha theta) / sin(theta) z1`.
///
/// High-dimensional Gaussian latents concentrate on a sphere; slerp stays on
/// it where linear interpolation would cut through the low-norm interior the
/// model never saw. Rows that are nearly parallel (or zero) fall back to
/// linear interpolation; `alpha` 0 and 1 return exact copies of `z0` and
/// `z1`.
pub fn slerp(z0: &Tensor, z1: &Tensor, alpha: f64) -> cm_core::Result<Tensor> {
    if z0.size() != z1.size() || z0.dim() == 0 {
        return Err(CoreError::invalid(
            "z1",
            format!("shape {:?}", z1.size()),
            format!("the shape of z0, {:?}, with a batch dimension", z0.size()),
        ));
    }
    if !z0.is_floating_point() || z0.kind() != z1.kind() {
        return Err(CoreError::invalid(
            "z0.kind",
            format!("{:?} and {:?}", z0.kind(), z1.kind()),
            "two tensors of the same floating-point kind",
        ));
    }
    if !alpha.is_finite() {
        return Err(CoreError::invalid("alpha", alpha, "a finite weight"));
    }
    if alpha == 0.0 {
        return Ok(z0.copy());
    }
    if alpha == 1.0 {
        return Ok(z1.copy());
    }
    let _guard = tch::no_grad_guard();
    let batch = z0.size()[0];
    let a = z0.reshape([batch, -1]);
    let b = z1.to_device(z0.device()).reshape([batch, -1]);
    let kind = a.kind();
    let dot = (&a * &b).sum_dim_intlist(1, false, kind);
    let norms = a.square().sum_dim_intlist(1, false, kind).sqrt()
        * b.square().sum_dim_intlist(1, false, kind).sqrt();
    let nonzero = norms.gt(0.0);
    let cos = (dot / norms.where_self(&nonzero, &norms.ones_like()))
        .where_self(&nonzero, &norms.ones_like())
        .clamp(-1.0, 1.0);
    let theta = cos.acos();
    let sin = theta.sin();
    // sin(theta) ~ 0: parallel (or anti-parallel) rows, slerp's weights are
    // 0/0; linear interpolation is the limit for parallel rows.
    let curved = sin.abs().gt(1e-6);
    let safe_sin = sin.where_self(&curved, &sin.ones_like());
    let w0 = ((&theta * (1.0 - alpha)).sin() / &safe_sin)
        .where_self(&curved, &sin.full_like(1.0 - alpha));
    let w1 = ((&theta * alpha).sin() / &safe_sin).where_self(&curved, &sin.full_like(alpha));
    Ok((a * w0.unsqueeze(1) + b * w1.unsqueeze(1)).reshape(z0.size()))
}

/// Latent interpolation (paper Section 6.3): `steps` images along the slerp
/// path from latent `z0` to `z1` (standard normal, `[1, C, H, W]` or
/// `[C, H, W]`), image `i` being `f(T slerp(z0, z1, i / (steps - 1)), T)`
/// with `T = sigma_max`. The `steps` latents go through `f` as one batch, so
/// the denoiser is called once and `nfe = 1` (per image). `class`, if given,
/// has 1 row (shared) or `steps` rows. Errors if `steps < 2`. Runs without
/// autograd.
pub fn interpolate(
    f: &dyn Denoiser,
    z0: &Tensor,
    z1: &Tensor,
    steps: usize,
    sigma_max: f64,
    cond: Conditioning<'_>,
) -> cm_core::Result<Sampled> {
    if steps < 2 {
        return Err(CoreError::invalid(
            "steps",
            steps,
            "at least 2 (both endpoints)",
        ));
    }
    if !(sigma_max > 0.0 && sigma_max.is_finite()) {
        return Err(CoreError::invalid(
            "sigma_max",
            sigma_max,
            "a finite time > 0",
        ));
    }
    let single = |z: &Tensor, field: &str| -> cm_core::Result<Tensor> {
        let shape = z.size();
        match shape.len() {
            3 => Ok(z.unsqueeze(0)),
            4 if shape[0] == 1 => Ok(z.shallow_clone()),
            _ => Err(CoreError::invalid(
                field,
                format!("shape {shape:?}"),
                "one latent, [1, C, H, W] or [C, H, W]",
            )),
        }
    };
    let (a, b) = (single(z0, "z0")?, single(z1, "z1")?);
    check_images("z0", &a)?;
    let n = steps as i64;
    let class = match cond.class {
        Some(c) if c.dim() > 0 && c.size()[0] == 1 && n > 1 => {
            let mut reps = vec![1i64; c.dim()];
            reps[0] = n;
            Some(c.repeat(reps))
        }
        Some(c) => {
            check_class(Some(c), n)?;
            Some(c.shallow_clone())
        }
        None => None,
    };
    let _guard = tch::no_grad_guard();
    let path = (0..steps)
        .map(|i| slerp(&a, &b, i as f64 / (steps - 1) as f64))
        .collect::<cm_core::Result<Vec<_>>>()?;
    let latents = Tensor::cat(&path, 0);
    let x = denoise_at(
        f,
        &(&latents * sigma_max),
        sigma_max,
        cond.with_class(class.as_ref()),
    );
    Ok(Sampled { x, nfe: 1 })
}

/// Stroke-guided editing, SDEdit with a consistency model (paper Section
/// 6.3): a rough stroke painting carries the layout but not the detail, so
/// noise it to a middle time `tau_start` and let the model fill in:
/// `x = f(strokes + sqrt(tau_start^2 - eps^2) z, tau_start)`, then the
/// multistep chain over `taus` (decreasing, in `(eps, tau_start)`).
/// `tau_start` must lie in `(sigma_min, sigma_max]`; higher keeps less of
/// the strokes. `nfe = 1 + taus.len()`. Runs without autograd.
#[allow(clippy::too_many_arguments)] // the chain's inputs plus the start time
pub fn sdedit(
    f: &dyn Denoiser,
    strokes: &Tensor,
    tau_start: f64,
    taus: &[f64],
    range: NoiseRange,
    cond: Conditioning<'_>,
    noise: &mut dyn NoiseSource,
) -> cm_core::Result<Sampled> {
    check_images("strokes", strokes)?;
    range.validate()?;
    let NoiseRange {
        sigma_min,
        sigma_max,
    } = range;
    if !(tau_start > sigma_min && tau_start <= sigma_max) {
        return Err(CoreError::invalid(
            "tau_start",
            tau_start,
            format!("a time in ({sigma_min}, {sigma_max}]"),
        ));
    }
    check_taus(taus, sigma_min, tau_start)?;
    let batch = strokes.size()[0];
    check_class(cond.class, batch)?;
    let _guard = tch::no_grad_guard();
    let z = noise.standard_normal(strokes);
    let spread = (tau_start * tau_start - sigma_min * sigma_min).sqrt();
    let x = denoise_at(f, &(strokes + z * spread), tau_start, cond);
    let x = consistency_chain(f, x, taus, range, cond, noise, &mut |x| x);
    Ok(Sampled {
        x,
        nfe: 1 + taus.len(),
    })
}

/// Which half of the image [`half_mask`] generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The left `W / 2` columns (rounded down).
    Left,
    /// The right `W / 2` columns (rounded down).
    Right,
    /// The top `H / 2` rows (rounded down).
    Top,
    /// The bottom `H / 2` rows (rounded down).
    Bottom,
}

/// A row-major `side x side` f64 matrix as a tensor of `kind` on `device`.
fn square_matrix(values: &[f64], side: i64, kind: Kind, device: Device) -> Tensor {
    Tensor::from_slice(values)
        .reshape([side, side])
        .to_kind(kind)
        .to_device(device)
}

/// Checks a mask size.
fn check_size(h: i64, w: i64) -> cm_core::Result<()> {
    if h <= 0 || w <= 0 {
        return Err(CoreError::invalid(
            "mask.size",
            format!("{h}x{w}"),
            "a positive height and width",
        ));
    }
    Ok(())
}

/// A `[1, 1, H, W]` f32 mask from row-major 0/1 values.
fn mask_tensor(values: &[f32], h: i64, w: i64) -> Tensor {
    Tensor::from_slice(values).reshape([1, 1, h, w])
}

/// An inpainting mask (`[1, 1, h, w]`, f32, 1 = to generate) that generates
/// the box of `height x width` pixels whose top-left corner is `(top,
/// left)`; the box must lie inside the image and be non-empty.
pub fn box_mask(
    h: i64,
    w: i64,
    top: i64,
    left: i64,
    height: i64,
    width: i64,
) -> cm_core::Result<Tensor> {
    check_size(h, w)?;
    let inside = top >= 0
        && left >= 0
        && height > 0
        && width > 0
        && top.checked_add(height).is_some_and(|b| b <= h)
        && left.checked_add(width).is_some_and(|r| r <= w);
    if !inside {
        return Err(CoreError::invalid(
            "box",
            format!("top {top}, left {left}, {height}x{width}"),
            format!("a non-empty box inside the {h}x{w} image"),
        ));
    }
    let values: Vec<f32> = (0..h)
        .flat_map(|r| {
            (0..w).map(move |c| {
                let hit = (top..top + height).contains(&r) && (left..left + width).contains(&c);
                f32::from(u8::from(hit))
            })
        })
        .collect();
    Ok(mask_tensor(&values, h, w))
}

/// An inpainting mask (`[1, 1, h, w]`, f32) that generates one half of the
/// image, `side` (half the rows or columns, rounded down), and keeps the
/// other.
pub fn half_mask(h: i64, w: i64, side: Side) -> cm_core::Result<Tensor> {
    check_size(h, w)?;
    let values: Vec<f32> = (0..h)
        .flat_map(|r| {
            (0..w).map(move |c| {
                let hit = match side {
                    Side::Left => c < w / 2,
                    Side::Right => c >= w - w / 2,
                    Side::Top => r < h / 2,
                    Side::Bottom => r >= h - h / 2,
                };
                f32::from(u8::from(hit))
            })
        })
        .collect();
    Ok(mask_tensor(&values, h, w))
}

/// An inpainting mask (`[1, 1, h, w]`, f32) of `strokes` random brush
/// strokes of `width` pixels, like the free-form masks of inpainting
/// benchmarks. Each stroke is a polyline of 4 segments starting at a
/// uniform point and turning at random, each segment 10–35 % of the longer
/// image side, clamped to the image; a pixel is generated when its centre is
/// within `width / 2` of a segment. Fully determined by `seed` (stroke `s`
/// draws from `sample_seed(seed, s)`), so masks are reproducible.
pub fn stroke_mask(
    h: i64,
    w: i64,
    strokes: usize,
    width: f64,
    seed: u64,
) -> cm_core::Result<Tensor> {
    check_size(h, w)?;
    if !(width > 0.0 && width.is_finite()) {
        return Err(CoreError::invalid(
            "width",
            width,
            "a finite stroke width > 0",
        ));
    }
    let (hf, wf) = (h as f64, w as f64);
    let side = hf.max(wf);
    let mut segments: Vec<[f64; 4]> = Vec::new();
    for s in 0..strokes {
        let key = sample_seed(seed, s as u64);
        let mut draw = 0u64;
        // Uniform in [0, 1) from the stroke's key and a counter.
        let mut uniform = || {
            draw += 1;
            (sample_seed(key, draw) >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut y, mut x) = (uniform() * hf, uniform() * wf);
        let mut angle = uniform() * std::f64::consts::TAU;
        for _ in 0..4 {
            let len = (0.10 + 0.25 * uniform()) * side;
            // Turn by up to ±90 degrees so strokes wander but stay strokes.
            angle += (uniform() - 0.5) * std::f64::consts::PI;
            let ny = (y + len * angle.sin()).clamp(0.0, hf);
            let nx = (x + len * angle.cos()).clamp(0.0, wf);
            segments.push([y, x, ny, nx]);
            (y, x) = (ny, nx);
        }
    }
    let radius2 = (width / 2.0).powi(2);
    let near = |py: f64, px: f64| {
        segments.iter().any(|&[y0, x0, y1, x1]| {
            let (dy, dx) = (y1 - y0, x1 - x0);
            let len2 = dy * dy + dx * dx;
            let t = if len2 > 0.0 {
                (((py - y0) * dy + (px - x0) * dx) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let (ey, ex) = (py - (y0 + t * dy), px - (x0 + t * dx));
            ey * ey + ex * ex <= radius2
        })
    };
    let values: Vec<f32> = (0..h)
        .flat_map(|r| (0..w).map(move |c| (r, c)))
        .map(|(r, c)| f32::from(u8::from(near(r as f64 + 0.5, c as f64 + 0.5))))
        .collect();
    Ok(mask_tensor(&values, h, w))
}

/// An inpainting mask (`[1, 1, h, w]`, f32) from row-major 8-bit gray
/// values, e.g. a PNG mask: white (>= 128, above half of 255) = to generate,
/// black = known.
pub fn mask_from_values(values: &[u8], h: i64, w: i64) -> cm_core::Result<Tensor> {
    check_size(h, w)?;
    if values.len() as u64 != (h as u64) * (w as u64) {
        return Err(CoreError::invalid(
            "mask.values",
            format!("{} values", values.len()),
            format!("h * w = {} values ({h}x{w}, row-major)", h * w),
        ));
    }
    let values: Vec<f32> = values
        .iter()
        .map(|&v| f32::from(u8::from(v >= 128)))
        .collect();
    Ok(mask_tensor(&values, h, w))
}

/// An inpainting mask (`[1, 1, H, W]`, f32) from a mask image in the crate's
/// `[-1, 1]` convention (`[H, W]`, `[C, H, W]` or `[1, C, H, W]`): a pixel is
/// generated where the mean over channels is above 0 (white), known where it
/// is at most 0 (black).
pub fn mask_from_image(image: &Tensor) -> cm_core::Result<Tensor> {
    let shape = image.size();
    let chw = match shape.len() {
        2 => image.unsqueeze(0),
        3 => image.shallow_clone(),
        4 if shape[0] == 1 => image.squeeze_dim(0),
        _ => {
            return Err(CoreError::invalid(
                "mask.shape",
                format!("{shape:?}"),
                "one mask image, [H, W], [C, H, W] or [1, C, H, W]",
            ))
        }
    };
    if !image.is_floating_point() || chw.size().iter().any(|&s| s <= 0) {
        return Err(CoreError::invalid(
            "mask",
            format!("{:?} {shape:?}", image.kind()),
            "a non-empty floating-point image in [-1, 1]",
        ));
    }
    let mean = chw.to_kind(Kind::Double).mean_dim(0, true, Kind::Double);
    Ok(mean
        .gt(0.0)
        .to_kind(Kind::Float)
        .unsqueeze(0)
        .to_device(Device::Cpu))
}
