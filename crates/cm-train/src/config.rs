//! The loop settings every method shares (`[train]` in a run config):
//! steps, batch, seed, optimizer, evaluation EMAs, checkpoint, sample-grid
//! and logging cadence, with their checks.

use serde::{Deserialize, Serialize};

use cm_core::CoreError;

use crate::optim::OptimizerConfig;

/// The most training steps (and checkpoint / log intervals) a run may set.
pub const MAX_STEPS: u64 = 1 << 40;
/// The largest training batch (its activations are held at once).
pub const MAX_BATCH_SIZE: usize = 65_536;
/// The most checkpoints kept.
pub const MAX_KEEP_LAST: usize = 1_000;
/// The most samples a periodic grid or scatter draws: a 64 x 64 grid
/// (100,000,000 passed 20 GB). They are sampled in chunks of `batch_size`,
/// so only the images themselves are held at once (4,096 CIFAR-10 images
/// are 50 MB).
pub const MAX_SAMPLE_COUNT: usize = 4_096;
/// The most EMA copies a run keeps.
pub const MAX_EMA_RATES: usize = 16;

/// Loop settings shared by every objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Total optimizer steps.
    pub steps: u64,
    /// Examples per step: the global batch, whatever the number of ranks.
    pub batch_size: usize,
    /// Shards of each global batch (`None`: one per rank). A shard is
    /// `batch_size / shards` examples with its own noise stream, seeded by
    /// `(seed, step, shard)`; rank `r` of `R` computes shards `r, r + R,
    /// ...` (gradient accumulation when there are more shards than ranks).
    /// Set it to train the same run on any number of ranks dividing it:
    /// `shards = 2` gives the same parameters (to float rounding) on one
    /// process as on two (docs/scale.md). Must divide `batch_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// Seed of everything random (weights, batches, noise).
    pub seed: u64,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// EMA rates of the evaluation copies (the first one makes the sample grids).
    pub ema_rates: Vec<f64>,
    /// Warm the EMA rates up as `min(rate, (1+k)/(10+k))`.
    pub ema_warmup: bool,
    /// Save a checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Keep this many newest checkpoints.
    pub keep_last: usize,
    /// Write a sample grid every this many steps (0: only at the end).
    pub sample_every: u64,
    /// Samples in each grid.
    pub sample_count: usize,
    /// Report to the observer every this many steps.
    pub log_every: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            batch_size: 64,
            shards: None,
            seed: 0,
            optimizer: OptimizerConfig::default(),
            ema_rates: vec![0.999],
            ema_warmup: true,
            checkpoint_every: 500,
            keep_last: 2,
            sample_every: 0,
            sample_count: 64,
            log_every: 10,
        }
    }
}

impl TrainConfig {
    /// Checks the ranges; `prefix` is the dotted path of the section.
    /// Every count is bounded (see the `MAX_*` constants): a config cannot
    /// ask for more than a machine can hold.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        let f = |n: &str| format!("{prefix}{n}");
        for (name, v) in [
            ("steps", self.steps),
            ("checkpoint_every", self.checkpoint_every),
            ("log_every", self.log_every),
        ] {
            if v == 0 || v > MAX_STEPS {
                return Err(CoreError::invalid(f(name), v, format!("1 to {MAX_STEPS}")));
            }
        }
        for (name, v, max) in [
            ("batch_size", self.batch_size, MAX_BATCH_SIZE),
            ("keep_last", self.keep_last, MAX_KEEP_LAST),
            ("sample_count", self.sample_count, MAX_SAMPLE_COUNT),
        ] {
            if v == 0 || v > max {
                return Err(CoreError::invalid(f(name), v, format!("1 to {max}")));
            }
        }
        if let Some(s) = self.shards {
            if s == 0 || s > self.batch_size || !self.batch_size.is_multiple_of(s) {
                return Err(CoreError::invalid(
                    f("shards"),
                    s,
                    format!("a divisor of batch_size = {}", self.batch_size),
                ));
            }
        }
        if self.ema_rates.len() > MAX_EMA_RATES {
            return Err(CoreError::invalid(
                f("ema_rates"),
                format!("{} rates", self.ema_rates.len()),
                format!("at most {MAX_EMA_RATES} (each is a full copy of the network)"),
            ));
        }
        if let Some(r) = self.ema_rates.iter().find(|r| !(0.0..1.0).contains(*r)) {
            return Err(CoreError::invalid(f("ema_rates"), r, "rates in [0, 1)"));
        }
        for (i, r) in self.ema_rates.iter().enumerate() {
            if self.ema_rates[..i].contains(r) {
                return Err(CoreError::invalid(
                    f("ema_rates"),
                    r,
                    "distinct rates (each names a checkpoint file)",
                ));
            }
        }
        self.optimizer.validate_at(&f("optimizer."))
    }

    /// The shards of each global batch on `ranks` ranks: `shards`, or one
    /// per rank. An error (naming the field) unless the shards divide the
    /// batch and the ranks divide the shards.
    /// `prefix` is the dotted path of the section (`"train."`,
    /// `"teacher.train."`).
    pub fn shards_for(&self, ranks: usize, prefix: &str) -> cm_core::Result<usize> {
        let shards = self.shards.unwrap_or(ranks);
        if shards == 0 || !self.batch_size.is_multiple_of(shards) {
            return Err(CoreError::invalid(
                format!("{prefix}batch_size"),
                self.batch_size,
                format!(
                    "a multiple of the {shards} shards ({ranks} ranks): every rank takes an equal \
                     shard (or set {prefix}shards to a divisor that the ranks divide)"
                ),
            ));
        }
        if !shards.is_multiple_of(ranks) {
            return Err(CoreError::invalid(
                format!("{prefix}shards"),
                shards,
                format!("a multiple of the {ranks} ranks"),
            ));
        }
        Ok(shards)
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn counts_are_bounded_with_the_field_named() {
        let ok = TrainConfig::default();
        ok.validate_at("train.").unwrap();
        let cases: [(&str, TrainConfig); 4] = [
            (
                "train.sample_count",
                TrainConfig {
                    sample_count: 100_000_000,
                    ..ok.clone()
                },
            ),
            (
                "train.batch_size",
                TrainConfig {
                    batch_size: usize::MAX,
                    ..ok.clone()
                },
            ),
            (
                "train.steps",
                TrainConfig {
                    steps: u64::MAX,
                    ..ok.clone()
                },
            ),
            (
                "train.ema_rates",
                TrainConfig {
                    ema_rates: (0..20).map(|i| i as f64 / 20.0).collect(),
                    ..ok.clone()
                },
            ),
        ];
        for (field, config) in cases {
            let err = config.validate_at("train.").unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
