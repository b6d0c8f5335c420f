//! Atomic file writes: a picture is written to a temporary file beside its
//! destination, flushed, then renamed into place, so a reader never sees half
//! a PNG (the same scheme as cm-nets' checkpoints).

use std::path::{Path, PathBuf};

use crate::error::{ReportError, Result};

/// Writes `path` through `write(tmp)`, then renames `tmp` onto `path`;
/// creates the parent folder; removes the temporary file on failure.
pub(crate) fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(ReportError::io("cannot create folder", &dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = write(&tmp).and_then(|()| {
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(ReportError::io("cannot flush", &tmp))?;
        std::fs::rename(&tmp, path).map_err(ReportError::io("cannot rename into place", path))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes an 8-bit grey or RGB image as PNG, atomically.
pub(crate) fn save_png<P>(img: &image::ImageBuffer<P, Vec<u8>>, path: &Path) -> Result<()>
where
    P: image::PixelWithColorType<Subpixel = u8>,
{
    write_atomic(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| ReportError::Io {
                action: "cannot write PNG",
                path: tmp.to_path_buf(),
                source: std::io::Error::other(e),
            })
    })
}

/// Writes `text` (an SVG document) atomically.
pub(crate) fn save_text(text: &str, path: &Path) -> Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, text).map_err(ReportError::io("cannot write", tmp))
    })
}
