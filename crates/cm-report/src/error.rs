//! The error type of cm-report: every variant names the file or the input
//! that is wrong.

use std::path::PathBuf;

/// What can go wrong when drawing or writing a picture.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The input cannot be drawn: `what` names the tensor, series or point,
    /// `reason` says what is wrong with it.
    #[error("{what}: {reason}")]
    InvalidInput {
        /// The input (e.g. "image grid", "line plot series 'CD', point 3").
        what: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// A file or folder could not be written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// plotters failed while drawing a plot.
    #[error("drawing {path}: {message}")]
    Draw {
        /// The picture being drawn.
        path: PathBuf,
        /// plotters' message.
        message: String,
    },
    /// A libtorch operation failed (e.g. reading a tensor's values).
    #[error(transparent)]
    Tch(#[from] tch::TchError),
}

impl ReportError {
    /// An [`ReportError::InvalidInput`] for `what`.
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        ReportError::InvalidInput {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// A closure turning an I/O error into [`ReportError::Io`] for `path`.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ReportError {
        let path = path.into();
        move |source| ReportError::Io {
            action,
            path,
            source,
        }
    }
}

/// Result alias of cm-report.
pub type Result<T, E = ReportError> = std::result::Result<T, E>;
