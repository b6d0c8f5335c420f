//! The error type of cm-nets: invalid network configs, checkpoint files that
//! do not match the network, I/O and libtorch failures.

use std::path::PathBuf;

/// Errors returned by cm-nets.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A checkpoint's tensors do not match the network: every missing,
    /// unexpected or mis-shaped tensor is listed.
    #[error("checkpoint {path} does not match the network ({} problem(s)):\n  {}", problems.len(), problems.join("\n  "))]
    CheckpointMismatch {
        /// The weights file.
        path: PathBuf,
        /// One line per problem, naming the tensor.
        problems: Vec<String>,
    },
    /// A LoRA adapter that does not fit the model (rank, alpha, targets or
    /// base weights), or an adapter operation that does not apply.
    #[error("adapter {adapter}: {reason}")]
    Adapter {
        /// The adapter's file or name.
        adapter: String,
        /// What does not fit, with what was expected.
        reason: String,
    },
    /// Samples or class labels that break the network's shape contract.
    #[error("invalid network input: {0}")]
    InvalidInput(String),
    /// An invalid or unparsable config (validated through cm-core's loader).
    #[error(transparent)]
    Config(#[from] cm_core::CoreError),
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot write", ...).
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

/// Result alias of cm-nets.
pub type Result<T, E = NetError> = std::result::Result<T, E>;
