//! The run's `metrics.csv` (`step,loss,lr,grad_norm,elapsed_s,steps_per_s`):
//! truncated to the resumed checkpoint so a resumed run's rows continue
//! exactly, and read back for the loss plot.

use std::fs;
use std::path::Path;

use crate::error::{Result, TrainError};

/// The header of `metrics.csv`.
pub const METRICS_HEADER: &str = "step,loss,lr,grad_norm,elapsed_s,steps_per_s";

/// Rewrites `metrics.csv` keeping the rows of steps `<= step` (a resumed run
/// continues after its checkpoint; rows written after it are redone).
pub(crate) fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, line)| {
            *i == 0
                || line
                    .split(',')
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|s| s <= step)
        })
        .map(|(_, l)| l)
        .collect();
    fs::write(path, kept.join("\n") + "\n").map_err(TrainError::io("cannot rewrite", path))
}

/// Reads `(step, loss)` pairs back from `metrics.csv` (for the loss plot).
pub fn read_losses(path: &Path) -> Vec<(u64, f64)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut it = l.split(',');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}
