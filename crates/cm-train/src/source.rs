//! Where training batches come from, behind [`BatchSource`]: cm-data's
//! random-access loader ([`LoaderSource`], built by [`loader_for`] with the
//! shape checks) and an in-memory tensor ([`TensorSource`]). Both are pure
//! functions of `(seed, step)`, so a resumed run sees exactly the batches
//! an uninterrupted one would.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use cm_data::{BatchLoader, LoaderConfig};
use cm_nets::NetConfig;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::objective::{Batch, BatchSource};
use crate::trainer::mix_seed;

/// Loader options beyond batch size and seed (which come from `[train]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderOptions {
    /// Random horizontal flips.
    pub hflip: bool,
    /// Pixels of padding (value -1) on each side; 2 turns 28 into 32.
    pub pad: usize,
}

/// Adapts cm-data's random-access loader to the training loop.
#[derive(Debug)]
pub struct LoaderSource(pub BatchLoader);

impl BatchSource for LoaderSource {
    fn batch(&self, step: u64, device: Device) -> Result<Batch> {
        let b = self
            .0
            .batch(step)
            .map_err(|e| TrainError::Batch(e.to_string()))?;
        Ok(Batch {
            x: b.x.to_device(device),
            labels: b.labels.map(|l| l.to_device(device)),
        })
    }
}

/// Builds the batch source for a data set, checking that its examples fit
/// the network.
pub fn loader_for(
    data: &cm_data::Dataset,
    options: LoaderOptions,
    train: &TrainConfig,
    net: &NetConfig,
) -> Result<LoaderSource> {
    let config = LoaderConfig::new(train.batch_size, train.seed)
        .with_hflip(options.hflip)
        .with_pad(options.pad);
    let loader =
        BatchLoader::new(data.train(), config).map_err(|e| TrainError::Batch(e.to_string()))?;
    let mut shape: Vec<i64> = data.example_shape().iter().map(|&d| d as i64).collect();
    if shape.len() == 3 {
        shape[1] += 2 * options.pad as i64;
        shape[2] += 2 * options.pad as i64;
    }
    if shape != net.sample_shape() {
        return Err(TrainError::Batch(format!(
            "the data gives examples of shape {shape:?} (after padding), the network takes {:?}",
            net.sample_shape()
        )));
    }
    if net.num_classes() > 0 && net.num_classes() != data.num_classes() {
        return Err(TrainError::Batch(format!(
            "the network has {} classes, the data {}",
            net.num_classes(),
            data.num_classes()
        )));
    }
    Ok(LoaderSource(loader))
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
        tch::manual_seed(mix_seed(self.seed as u64 ^ 0x5EED_DA7A, epoch));
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
