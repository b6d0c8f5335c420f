//! cm-sample: every way to get samples out of a trained model.
//!
//! - [`edm`]: the EDM teacher's samplers (Karras et al. 2022): deterministic
//!   Euler or Heun (Algorithm 1) and stochastic with churn (Algorithm 2), any
//!   step count, with the number of network evaluations (NFE) reported.
//! - [`consistency`]: consistency-model one-step and multistep sampling
//!   (Song et al. 2023, Algorithm 1) on one shared chain.
//! - [`noise`]: where the noise comes from; [`SeededNoise`] makes every
//!   sample reproducible on its own, whatever the batching.
//! - [`edit`]: zero-shot editing (Algorithm 4): inpainting, colorization,
//!   super-resolution, denoising, interpolation, SDEdit.
//! - [`search`]: the search for the intermediate times of 2- and 3-step
//!   sampling against a quality metric.
//! - [`generate`]: N samples in chunks, to PNGs and a tensor file.
//! - [`card`]: the model card (`model.toml`) that names a weights file and
//!   how to sample from it; every command that samples takes one.
//!
//! Samplers take any cm-core `Denoiser` and run without autograd.

pub mod card;
pub mod consistency;
pub mod edit;
pub mod edm;
pub mod error;
pub mod generate;
pub mod noise;
pub mod search;

pub use card::{ModelCard, TauSource, CARD_FILE};
pub use consistency::{
    check_taus, consistency_chain, consistency_sample, consistency_sample_with, denoise_at,
};
pub use edit::{
    box_mask, denoise, half_mask, interpolate, mask_from_image, mask_from_values, project, sdedit,
    slerp, stroke_mask, zero_shot_edit, EditPlan, EditTask, Identity, LumaChroma, PatchBasis, Side,
    Transform,
};
pub use edm::{edm_sample, edm_sample_with, EdmSampler, Sampled};
pub use error::{Result, SampleError};
pub use generate::{generate, ClassChoice, GenerateConfig, Generated};
pub use noise::{sample_seed, GlobalNoise, NoiseSource, SeededNoise};
