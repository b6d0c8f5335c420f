//! Errors of cm-sample.

use std::path::PathBuf;

/// What can go wrong when loading a model card or sampling.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// A value or config is invalid (names the field and what was expected).
    #[error(transparent)]
    Core(#[from] cm_core::CoreError),
    /// The network or its weights could not be built or read.
    #[error(transparent)]
    Net(#[from] cm_nets::NetError),
    /// A picture or sample file could not be written.
    #[error(transparent)]
    Report(#[from] cm_report::ReportError),
    /// A model card could not be read or written.
    #[error("model card {path}: {message}")]
    Card {
        /// The card file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Result with [`SampleError`].
pub type Result<T, E = SampleError> = std::result::Result<T, E>;
