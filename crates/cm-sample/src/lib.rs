//! cm-sample: every way to get samples out of a trained model.
//!
//! - [`edm`]: the EDM teacher's samplers (Karras et al. 2022): deterministic
//!   Euler or Heun (Algorithm 1) and stochastic with churn (Algorithm 2), any
//!   step count, with the number of network evaluations (NFE) reported.
//! - [`consistency`]: consistency-model one-step and multistep sampling
//!   (Song et al. 2023, Algorithm 1).
//!
//! - [`card`]: the model card (`model.toml`) that names a weights file and
//!   how to sample from it; every command that samples takes one.
//!
//! Zero-shot editing (Algorithm 4) and the timestep search arrive with the
//! cm-sample issue. Samplers take any cm-core `Denoiser` and run without
//! autograd.

pub mod card;
pub mod consistency;
pub mod edm;
pub mod error;

pub use card::{ModelCard, CARD_FILE};
pub use consistency::consistency_sample;
pub use edm::{edm_sample, EdmSampler, Sampled};
pub use error::{Result, SampleError};
