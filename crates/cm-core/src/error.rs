//! The error type of cm-core: invalid configuration values, unreadable or
//! malformed config files, and libtorch failures.

use std::path::PathBuf;

/// Errors returned by cm-core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A configuration value is outside its valid range.
    #[error("invalid config value `{field}` = {value}: {expected}")]
    InvalidConfig {
        /// Dotted path of the field, e.g. `schedule.s1`.
        field: String,
        /// The offending value, as written.
        value: String,
        /// What was expected instead.
        expected: String,
    },
    /// A TOML document could not be parsed into the config structs.
    #[error("cannot parse {origin}: at `{field}`: {message}")]
    Parse {
        /// The file path or other origin of the text.
        origin: String,
        /// Dotted path of the field where parsing failed (`.` for the root).
        field: String,
        /// The parser's message (line and column included where known).
        message: String,
    },
    /// A config file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
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

impl CoreError {
    /// Shorthand for [`CoreError::InvalidConfig`].
    pub fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        CoreError::InvalidConfig {
            field: field.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// [`CoreError::invalid`] with the value shown as `{:?}` (lists,
    /// strings in quotes).
    pub fn invalid_debug(
        field: impl Into<String>,
        value: impl std::fmt::Debug,
        expected: impl Into<String>,
    ) -> Self {
        Self::invalid(field, format!("{value:?}"), expected)
    }
}

/// Result alias of cm-core.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
