//! The editing tasks of Song et al. 2023, "Consistency Models": zero-shot
//! editing by Algorithm 4 ([`zero_shot_edit`], its projection step
//! [`project`], and [`EditTask`] / [`EditPlan`] for inpainting,
//! colorization and super-resolution), and the edits of Section 6.3 that
//! need no projection: [`denoise`], [`slerp`] / [`interpolate`] and
//! [`sdedit`].

use cm_core::{Conditioning, CoreError, Denoiser, NoiseRange};
use tch::{Kind, Tensor};

use super::checks::{check_class, check_image_shape, check_images};
use super::mask::check_mask;
use super::transform::{Identity, LumaChroma, PatchBasis, Transform};
use crate::consistency::{check_taus, consistency_chain, denoise_at};
use crate::edm::Sampled;
use crate::noise::NoiseSource;

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
        ///
        /// [`box_mask`]: super::box_mask
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
