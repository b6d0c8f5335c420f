//! The error type of cm-eval.

use std::path::PathBuf;

/// Errors returned by cm-eval.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Features, images or statistics that break a metric's contract
    /// (wrong rank, mismatched dimensions, too few samples).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An invalid or unparsable config (validated through cm-core's loader).
    #[error(transparent)]
    Config(#[from] cm_core::CoreError),
    /// Loading a data set failed.
    #[error(transparent)]
    Data(#[from] cm_data::DataError),
    /// A network or checkpoint problem.
    #[error(transparent)]
    Net(#[from] cm_nets::NetError),
    /// Sampling failed.
    #[error(transparent)]
    Sample(#[from] cm_sample::SampleError),
    /// A weights file does not match the network: every missing, unexpected
    /// or mis-shaped tensor is listed by name.
    #[error("weights {path} do not match the network ({} problem(s)):\n  {}", problems.len(), problems.join("\n  "))]
    WeightsMismatch {
        /// The weights file.
        path: PathBuf,
        /// One line per problem.
        problems: Vec<String>,
    },
    /// A file could not be read or written.
    #[error("{action} {path}: {message}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        message: String,
    },
    /// A libtorch operation failed.
    #[error(transparent)]
    Tch(#[from] tch::TchError),
}

impl EvalError {
    pub(crate) fn io(
        action: &'static str,
        path: &std::path::Path,
        e: impl std::fmt::Display,
    ) -> Self {
        EvalError::Io {
            action,
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

/// Result alias of cm-eval.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
