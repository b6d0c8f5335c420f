//! Classifier-free guidance (Ho & Salimans 2022) as a [`Denoiser`] wrapper
//! in LCM's form `D = D_c + w (D_c - D_u)` (Luo et al. 2023, Eq. 9), so every
//! sampler, editing task and teacher ODE step can use a guided model.

use tch::{Kind, Tensor};

use crate::cond::Conditioning;
use crate::error::{CoreError, Result};
use crate::ode::Denoiser;

/// The smallest guidance scale: `w = -1` is the unconditional model
/// (`D = D_c + w (D_c - D_u) = D_u`; diffusers' `guidance_scale = 1 + w =
/// 0`), and `-1 < w < 0` interpolates between the unconditional and the
/// conditional model. LCD may draw `w` below 0 so that `w = 0` lies inside
/// the student's training range rather than on its edge.
pub const MIN_GUIDANCE: f64 = -1.0;

/// The largest guidance scale `w` a config, card or sampling call may name.
pub const MAX_GUIDANCE: f64 = 100.0;

/// Checks a guidance scale `w` named `field`: finite and in
/// [`MIN_GUIDANCE`]`..=`[`MAX_GUIDANCE`].
pub fn check_guidance_scale(field: impl Into<String>, w: f64) -> Result<()> {
    if w.is_finite() && (MIN_GUIDANCE..=MAX_GUIDANCE).contains(&w) {
        return Ok(());
    }
    Err(CoreError::invalid(
        field,
        w,
        format!(
            "a guidance scale w in [{MIN_GUIDANCE}, {MAX_GUIDANCE}] (LCM's convention: 0 = the \
             plain conditional model, -1 = the unconditional one)"
        ),
    ))
}

/// Classifier-free guidance around a class-conditional denoiser:
/// `D_w(x; sigma, c) = D(x; sigma, c) + w (D(x; sigma, c) - D(x; sigma, null))`
/// (LCM's convention: `w = 0` is the plain conditional model; diffusers'
/// `guidance_scale` is `1 + w`). Conditional and unconditional halves run as
/// one batch of `2B`. Without class labels the wrapper is the inner denoiser.
#[derive(Clone, Copy)]
pub struct ClassifierFreeGuidance<'d> {
    inner: &'d dyn Denoiser,
    scale: f64,
    null_class: i64,
}

impl std::fmt::Debug for ClassifierFreeGuidance<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifierFreeGuidance")
            .field("scale", &self.scale)
            .field("null_class", &self.null_class)
            .finish_non_exhaustive()
    }
}

impl<'d> ClassifierFreeGuidance<'d> {
    /// Guidance of scale `w = scale` around `inner` (a class-conditional
    /// denoiser trained with label dropout), whose null-class label is
    /// `null_class` (`num_classes` in cm-nets). Checks `scale`
    /// ([`check_guidance_scale`]) and `null_class` (`>= 1`: a model with at
    /// least one real class).
    pub fn new(inner: &'d dyn Denoiser, scale: f64, null_class: i64) -> Result<Self> {
        check_guidance_scale("guidance_scale", scale)?;
        if null_class < 1 {
            return Err(CoreError::invalid(
                "null_class",
                null_class,
                "the null-class label of a class-conditional model (>= 1)",
            ));
        }
        Ok(ClassifierFreeGuidance {
            inner,
            scale,
            null_class,
        })
    }

    /// The guidance scale `w`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The null-class label.
    pub fn null_class(&self) -> i64 {
        self.null_class
    }

    /// Network evaluations per call with class labels: 1 at `w = 0` (the
    /// conditional model) and `w = -1` (the unconditional one), else 2.
    pub fn evaluations_per_call(&self) -> usize {
        if self.scale == 0.0 || self.scale == MIN_GUIDANCE {
            1
        } else {
            2
        }
    }
}

impl Denoiser for ClassifierFreeGuidance<'_> {
    fn denoise(&self, x: &Tensor, sigma: &Tensor, cond: Conditioning<'_>) -> Tensor {
        let Some(class) = cond.class else {
            return self.inner.denoise(x, sigma, cond);
        };
        if self.scale == 0.0 {
            return self.inner.denoise(x, sigma, cond);
        }
        let b = x.size()[0];
        if self.scale == MIN_GUIDANCE {
            // D_c - (D_c - D_u) = D_u: the unconditional model, one evaluation.
            let null = class.full_like(self.null_class).to_kind(Kind::Int64);
            return self.inner.denoise(x, sigma, cond.with_class(Some(&null)));
        }
        // A scalar noise level stands for the whole batch.
        let sigma = &sigma.expand([b], false);
        let null = class.full_like(self.null_class).to_kind(Kind::Int64);
        let classes = Tensor::cat(&[class, &null], 0);
        let guidance = cond.guidance.map(|w| Tensor::cat(&[w, w], 0));
        let mut both = cond.with_class(Some(&classes));
        both.guidance = guidance.as_ref();
        let d = self.inner.denoise(
            &Tensor::cat(&[x, x], 0),
            &Tensor::cat(&[sigma, sigma], 0),
            both,
        );
        let (d_c, d_u) = (d.narrow(0, 0, b), d.narrow(0, b, b));
        &d_c + (&d_c - d_u) * self.scale
    }
}

/// Classifier-free guidance with one scale per example, `w` `[B]`:
/// `D_w = D_c + w (D_c - D_u)` (LCM's form, Luo et al. 2023, Eq. 9), what
/// latent consistency distillation's teacher step uses with `w ~ U[w_min,
/// w_max]` drawn per example (LCM Algorithm 1). Conditional and
/// unconditional halves run as one batch of `2B`; the inner denoiser gets no
/// guidance conditioning (the teacher does not embed `w`).
#[derive(Clone, Copy)]
pub struct PerExampleGuidance<'d> {
    inner: &'d dyn Denoiser,
    scales: &'d Tensor,
    null_class: i64,
}

impl std::fmt::Debug for PerExampleGuidance<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerExampleGuidance")
            .field("scales", &self.scales.size())
            .field("null_class", &self.null_class)
            .finish_non_exhaustive()
    }
}

impl<'d> PerExampleGuidance<'d> {
    /// Guidance of scales `scales` (`[B]`, each passing
    /// [`check_guidance_scale`]) around `inner`, whose null-class label is
    /// `null_class` (`>= 1`).
    pub fn new(inner: &'d dyn Denoiser, scales: &'d Tensor, null_class: i64) -> Result<Self> {
        if scales.dim() != 1 || !scales.is_floating_point() {
            return Err(CoreError::invalid(
                "guidance scales",
                format!("{:?} {:?}", scales.kind(), scales.size()),
                "a floating-point tensor [B]",
            ));
        }
        if scales.numel() > 0 {
            if !bool::try_from(scales.isfinite().all()).unwrap_or(false) {
                return Err(CoreError::invalid(
                    "guidance scales",
                    "non-finite",
                    "finite guidance scales",
                ));
            }
            for w in [scales.min(), scales.max()] {
                check_guidance_scale("guidance scales", f64::try_from(w).unwrap_or(f64::NAN))?;
            }
        }
        if null_class < 1 {
            return Err(CoreError::invalid(
                "null_class",
                null_class,
                "the null-class label of a class-conditional model (>= 1)",
            ));
        }
        Ok(PerExampleGuidance {
            inner,
            scales,
            null_class,
        })
    }
}

impl Denoiser for PerExampleGuidance<'_> {
    fn denoise(&self, x: &Tensor, sigma: &Tensor, cond: Conditioning<'_>) -> Tensor {
        let b = x.size()[0];
        let sigma = &sigma.expand([b], false);
        let class = match cond.class {
            Some(c) => c.shallow_clone(),
            None => Tensor::full([b], self.null_class, (Kind::Int64, x.device())),
        };
        let null = class.full_like(self.null_class);
        let classes = Tensor::cat(&[&class, &null], 0);
        let mut both = Conditioning::class(&classes);
        both.guidance = None;
        let d = self.inner.denoise(
            &Tensor::cat(&[x, x], 0),
            &Tensor::cat(&[sigma, sigma], 0),
            both,
        );
        let (d_c, d_u) = (d.narrow(0, 0, b), d.narrow(0, b, b));
        let mut w_shape = vec![b];
        w_shape.extend(std::iter::repeat_n(1, x.dim() - 1));
        let w = self.scales.to_kind(d_c.kind()).reshape(w_shape);
        &d_c + (&d_c - d_u) * w
    }
}
