//! cm-eval: sample quality measured the way the field does.
//!
//! - [`toy`]: exact distances between 2-D sample sets (sliced Wasserstein,
//!   energy distance) and mode coverage, for the toy experiments.
//!
//! FID / KID / precision-recall in a learned feature space and standard
//! Inception-v3 FID arrive with the cm-eval issue.

pub mod toy;

pub use toy::{energy_distance, mode_coverage, sliced_wasserstein};
