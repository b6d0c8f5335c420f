//! What a network or denoiser evaluation is conditioned on besides the noise
//! level ([`Conditioning`]: class labels, a guidance scale, room for more).
//! Classifier-free guidance on top of it is [`crate::guidance`].

use tch::Tensor;

/// The conditioning of one batched evaluation. Fields are optional and
/// borrowed; `Conditioning::default()` is unconditional. New kinds of
/// conditioning (text embeddings, ...) become new fields, so the struct is
/// `#[non_exhaustive]`: build it with [`Conditioning::none`],
/// [`Conditioning::class`] and the `with_*` methods.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct Conditioning<'a> {
    /// Class labels, `[B]` int64 in `0..=num_classes` (the last is the null
    /// class); `None` means the null class for every example.
    pub class: Option<&'a Tensor>,
    /// Guidance scale `w` per example, `[B]` float, for networks that embed
    /// it (LCM's w-conditioning); `None` for networks that do not.
    pub guidance: Option<&'a Tensor>,
}

impl<'a> Conditioning<'a> {
    /// Unconditional (null class, no guidance embedding).
    pub fn none() -> Self {
        Conditioning::default()
    }

    /// Conditioned on class labels `[B]` int64.
    pub fn class(labels: &'a Tensor) -> Self {
        Conditioning {
            class: Some(labels),
            ..Default::default()
        }
    }

    /// Conditioned on class labels when there are any.
    pub fn from_class(labels: Option<&'a Tensor>) -> Self {
        Conditioning {
            class: labels,
            ..Default::default()
        }
    }

    /// The same conditioning with a per-example guidance scale `[B]`.
    pub fn with_guidance(self, w: &'a Tensor) -> Self {
        Conditioning {
            guidance: Some(w),
            ..self
        }
    }

    /// The same conditioning with other class labels.
    pub fn with_class(self, labels: Option<&'a Tensor>) -> Self {
        Conditioning {
            class: labels,
            ..self
        }
    }
}
