//! Atomic file writes and the checkpoint file layout: weights in
//! `NAME.safetensors`, the network config beside them in `NAME.toml`.

use std::path::{Path, PathBuf};

use crate::error::{NetError, Result};

/// The config sidecar of a weights file: same name, extension `.toml`.
pub fn sidecar_path(weights: &Path) -> PathBuf {
    weights.with_extension("toml")
}

/// Writes a file atomically: `write` fills a temporary file in the same
/// folder, which is flushed to disk and then renamed over `path`. Readers see
/// the old file or the new one, never a torn one; on error the temporary file
/// is removed and `path` is untouched.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|source| NetError::Io {
        action: "cannot create folder",
        path: dir.clone(),
        source,
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = write(&tmp).and_then(|()| {
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|source| NetError::Io {
                action: "cannot flush",
                path: tmp.clone(),
                source,
            })?;
        std::fs::rename(&tmp, path).map_err(|source| NetError::Io {
            action: "cannot rename into place",
            path: path.to_path_buf(),
            source,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
