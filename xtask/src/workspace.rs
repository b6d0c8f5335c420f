//! Finding the cm-rs workspace at run time: the checkout `cargo xtask` was
//! started in, not the one xtask happened to be compiled in (a checkout
//! copied together with its `target/` must not run pipelines in the old
//! folder).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// The workspace root: the nearest folder at or above the start that holds a
/// `Cargo.toml` with a `[workspace]` table. The start is the run-time
/// `CARGO_MANIFEST_DIR`, which `cargo run` (and so `cargo xtask`) sets to
/// xtask's own folder in the checkout it built; without it (the binary run
/// directly) the current directory.
pub fn root() -> Result<PathBuf, String> {
    let start = match env::var_os("CARGO_MANIFEST_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))?
        }
    };
    find_root(&start)
}

/// The nearest folder at or above `start` whose `Cargo.toml` declares
/// `[workspace]`; an error naming `start` when there is none.
pub fn find_root(start: &Path) -> Result<PathBuf, String> {
    start
        .ancestors()
        .find(|dir| is_workspace_manifest(&dir.join("Cargo.toml")))
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            format!(
                "no Cargo.toml with [workspace] in {} or any folder above it; \
                 run `cargo xtask` inside the cm-rs checkout",
                start.display()
            )
        })
}

/// Whether `manifest` exists and has a `[workspace]` table header.
fn is_workspace_manifest(manifest: &Path) -> bool {
    fs::read_to_string(manifest).is_ok_and(|text| {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .any(|l| l == "[workspace]")
    })
}

/// A fresh empty folder `xtask-<name>-<pid>` under the system temp folder
/// (tests only).
#[cfg(test)]
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let dir = env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_workspace_from_xtask_and_from_a_subfolder() {
        let root = root().unwrap();
        assert!(
            root.join("xtask/Cargo.toml").is_file(),
            "{}",
            root.display()
        );
        assert!(root.join("configs").is_dir());
        assert_eq!(find_root(&root.join("xtask/src")).unwrap(), root);
    }

    #[test]
    fn a_member_manifest_is_skipped_and_no_workspace_is_an_error() {
        let dir = temp_dir("root");
        fs::write(dir.join("Cargo.toml"), "[workspace]\nmembers = [\"a\"]\n").unwrap();
        fs::create_dir_all(dir.join("a/src")).unwrap();
        fs::write(
            dir.join("a/Cargo.toml"),
            "[package]\nname = \"a\" # [workspace]\n",
        )
        .unwrap();
        assert_eq!(find_root(&dir.join("a/src")).unwrap(), dir);
        fs::write(dir.join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
        let err = find_root(&dir.join("a")).unwrap_err();
        assert!(
            err.contains("[workspace]") && err.contains("xtask-root"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
