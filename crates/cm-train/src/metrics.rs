//! The run's `metrics.csv` (`step,loss,lr,grad_norm,elapsed_s,steps_per_s`):
//! truncated to the resumed checkpoint so a resumed run's rows continue
//! exactly, and read back for the loss plot.

use std::fs;
use std::path::Path;

use crate::error::{Result, TrainError};

/// The header of `metrics.csv`.
pub const METRICS_HEADER: &str = "step,loss,lr,grad_norm,elapsed_s,steps_per_s";

pub use cm_core::MAX_METRICS_BYTES;

/// Reads a `metrics.csv`: a regular file of at most [`MAX_METRICS_BYTES`]
/// (a pipe or device in its place would hang or never end).
pub fn read_metrics(path: &Path) -> std::io::Result<String> {
    cm_core::read_bounded_text(path, MAX_METRICS_BYTES, "a metrics.csv")
}

/// Rewrites `metrics.csv` keeping the rows of steps `<= step` (a resumed run
/// continues after its checkpoint; rows written after it are redone).
pub(crate) fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let text = match read_metrics(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(TrainError::io("cannot read", path)(e)),
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
    read_metrics(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut it = l.split(',');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}
