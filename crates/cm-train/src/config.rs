//! The loop settings every method shares (`[train]` in a run config):
//! steps, batch, seed, optimizer, evaluation EMAs, checkpoint, sample-grid
//! and logging cadence, with their checks.

use serde::{Deserialize, Serialize};

use cm_core::CoreError;

use crate::optim::OptimizerConfig;

/// Loop settings shared by every objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Total optimizer steps.
    pub steps: u64,
    /// Examples per step.
    pub batch_size: usize,
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
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        let f = |n: &str| format!("{prefix}{n}");
        for (name, v) in [
            ("steps", self.steps),
            ("checkpoint_every", self.checkpoint_every),
            ("log_every", self.log_every),
        ] {
            if v == 0 {
                return Err(CoreError::invalid(f(name), v, "at least 1"));
            }
        }
        for (name, v) in [
            ("batch_size", self.batch_size),
            ("keep_last", self.keep_last),
            ("sample_count", self.sample_count),
        ] {
            if v == 0 {
                return Err(CoreError::invalid(f(name), v, "at least 1"));
            }
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
}
