//! The error type of cm-train.

use std::path::PathBuf;

/// Errors returned by cm-train.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error("loss is {loss} at step {step}: training stopped; the last good checkpoint is kept{}", last_checkpoint.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default())]
    NonFiniteLoss {
        /// The step.
        step: u64,
        /// The loss value.
        loss: f64,
        /// The newest checkpoint on disk, if any.
        last_checkpoint: Option<PathBuf>,
    },
    /// A checkpoint folder is missing a file or holds inconsistent state.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A batch does not fit the network or the objective.
    #[error("batch: {0}")]
    Batch(String),
    /// Config or math errors from cm-core.
    #[error(transparent)]
    Core(#[from] cm_core::CoreError),
    /// Network or checkpoint-tensor errors from cm-nets.
    #[error(transparent)]
    Net(#[from] cm_nets::NetError),
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A libtorch operation failed.
    #[error(transparent)]
    Tch(#[from] tch::TchError),
}

impl TrainError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Io {
            action,
            path,
            source,
        }
    }
}

/// Result alias of cm-train.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
