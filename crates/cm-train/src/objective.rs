//! The seam between the training loop and what is trained: a batch source
//! and a training objective. The EDM teacher, CD, CT and iCT are objectives
//! on the same loop. In-memory and file-backed batch sources are in
//! [`crate::source`].

use tch::{Device, Tensor};

use cm_core::Conditioning;

use cm_nets::Model;

use crate::error::Result;

/// One training batch: samples in the model's space (`[B, ...]`, images in
/// [-1, 1]) and optional class labels (`[B]` int64).
#[derive(Debug)]
pub struct Batch {
    /// Samples.
    pub x: Tensor,
    /// Class labels, if the data has them.
    pub labels: Option<Tensor>,
}

/// Random-access batches: `batch(step)` must be a pure function of the
/// step (and the source's own seed), so a resumed run sees exactly the
/// batches an uninterrupted one would.
pub trait BatchSource {
    /// The batch for training step `step` on `device`.
    fn batch(&self, step: u64, device: Device) -> Result<Batch>;
}

/// A training objective on the shared loop.
pub trait Objective {
    /// A short name for logs ("edm", "cd", "ct", "ict").
    fn name(&self) -> &str;

    /// The scalar loss of a batch at step `k`, with `online` in training
    /// mode. Randomness must come from libtorch's generator, which the loop
    /// reseeds every step.
    fn loss(&mut self, online: &Model, batch: &Batch, step: u64) -> Result<Tensor>;

    /// Runs after each optimizer step (e.g. the target network's EMA).
    fn after_step(&mut self, _online: &Model, _step: u64) -> Result<()> {
        Ok(())
    }

    /// Networks the objective owns and that must be checkpointed with the
    /// run (e.g. `("target", &target)`).
    fn extra_models(&self) -> Vec<(&'static str, &Model)> {
        Vec::new()
    }

    /// Mutable access to the same networks, for resuming.
    fn extra_models_mut(&mut self) -> Vec<(&'static str, &mut Model)> {
        Vec::new()
    }

    /// Samples from `model` (an evaluation EMA) for the periodic grids,
    /// starting from standard-normal `latents`.
    fn sample(&self, model: &Model, latents: &Tensor, cond: Conditioning<'_>) -> Result<Tensor>;

    /// How many rows of the grids' latents [`Objective::sample`] and the
    /// report's samplers take at once (their activations are held
    /// together), for a run of `batch_size`; `None`: all in one call. The
    /// default is the batch size: a run that holds a training batch with
    /// autograd holds that many samples without it.
    fn grid_chunk(&self, batch_size: usize) -> Option<usize> {
        Some(batch_size)
    }
}
