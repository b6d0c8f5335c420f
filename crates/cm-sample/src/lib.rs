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
//! - [`pipeline`]: the one-call API, [`Pipeline`]: load a card, generate
//!   `n` samples in `k` steps under a seed (class and guidance for
//!   class-conditional models).
//! - [`generate`]: N samples in chunks, handed to a callback.
//! - [`images`]: samples to 8-bit pixels, PNG files, grids; scatter plots and
//!   CSV for 2-D models.
//! - [`diffusers`]: the published diffusers consistency models: diffusers'
//!   `CMStochasticIterativeScheduler` (sigmas and timesteps exactly as
//!   diffusers computes them) and the card of a diffusers folder.
//! - [`latent`]: the latent space of latent consistency models: an
//!   autoencoder's card and [`LatentCodec`] (images <-> scaled latents).
//! - [`card`]: the model card (`model.toml`) that names a weights file and
//!   how to sample from it; every command that samples takes one.
//!
//! Samplers take any cm-core `Denoiser` and run without autograd.
//!
//! Embedding in another program (a crate outside this workspace, with its
//! libtorch link set-up) is described in `docs/embedding.md`.

/// cm-runtime, re-exported: the CPU set-up (allocator, thread policy) a
/// program embedding the sampler applies at the start of `main`.
pub use cm_runtime as runtime;
/// The `tch` this crate is built on (tensors, devices), so an embedding
/// program needs no matching `tch` dependency of its own.
pub use tch;

pub mod card;
pub mod consistency;
pub mod diffusers;
pub mod edit;
pub mod edm;
pub mod error;
pub mod generate;
pub mod images;
pub mod latent;
pub mod noise;
pub mod pipeline;
pub mod search;

pub use card::{LoraRef, ModelCard, TauSource, CARD_FILE, MAX_ADAPTERS, MAX_GUIDANCE, META_CARD};
pub use consistency::{
    check_taus, consistency_chain, consistency_sample, consistency_sample_with, denoise_at,
};
pub use diffusers::{
    ClipDenoised, CmSchedulerConfig, CmStochasticIterativeScheduler, DiffusersCardFile,
    DiffusersFolder,
};
pub use edit::{
    box_mask, denoise, half_mask, interpolate, mask_from_image, mask_from_values, project, sdedit,
    slerp, stroke_mask, zero_shot_edit, EditPlan, EditTask, Identity, LumaChroma, PatchBasis, Side,
    Transform,
};
pub use edm::{edm_sample, edm_sample_with, EdmSampler, Sampled, SamplingGrid, MAX_SAMPLER_STEPS};
pub use error::{Result, SampleError};
pub use generate::{generate, ClassChoice, GenerateConfig, Generated, MAX_BATCH_SIZE};
pub use latent::{AutoencoderCard, LatentCodec, CODEC_CHUNK};
pub use noise::{sample_seed, GlobalNoise, NoiseSource, SeededNoise};
pub use pipeline::{Pipeline, MAX_PIPELINE_COUNT};
