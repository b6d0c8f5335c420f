//! The seam between the training loop and what is trained: a batch source
//! and a training objective. The EDM teacher, CD, CT and iCT are objectives
//! on the same loop.

use tch::{Device, Kind, Tensor};

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
    fn sample(&self, model: &Model, latents: &Tensor, class: Option<&Tensor>) -> Result<Tensor>;
}

/// An in-memory data set served in shuffled batches: `batch(step)` is a pure
/// function of `(seed, step)` (one permutation per epoch; the last partial
/// batch of an epoch is dropped).
#[derive(Debug)]
pub struct TensorSource {
    data: Tensor,
    labels: Option<Tensor>,
    batch_size: i64,
    seed: i64,
}

impl TensorSource {
    /// `data` is `[N, ...]`; `labels`, if any, `[N]` int64.
    pub fn new(data: Tensor, labels: Option<Tensor>, batch_size: usize, seed: u64) -> Result<Self> {
        let n = data.size()[0];
        if batch_size == 0 || batch_size as i64 > n {
            return Err(crate::error::TrainError::Batch(format!(
                "batch size {batch_size} must be between 1 and the data set size {n}"
            )));
        }
        Ok(TensorSource {
            data,
            labels,
            batch_size: batch_size as i64,
            seed: seed as i64,
        })
    }
}

impl BatchSource for TensorSource {
    fn batch(&self, step: u64, device: Device) -> Result<Batch> {
        let n = self.data.size()[0];
        let per_epoch = (n / self.batch_size) as u64;
        let (epoch, index) = (step / per_epoch, (step % per_epoch) as i64);
        // A private generator stream per epoch: reseeding the global one here
        // is safe because the loop reseeds it again before the loss.
        tch::manual_seed(crate::trainer::mix_seed(
            self.seed as u64 ^ 0x5EED_DA7A,
            epoch,
        ));
        let perm = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
        let idx = perm.narrow(0, index * self.batch_size, self.batch_size);
        let x = self.data.index_select(0, &idx).to_device(device);
        let labels = self
            .labels
            .as_ref()
            .map(|l| l.index_select(0, &idx).to_device(device));
        Ok(Batch { x, labels })
    }
}
