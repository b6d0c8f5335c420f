//! Running cargo and the `cm` binary with the libtorch environment `tch`
//! needs, from the workspace root, and turning their exit status into
//! xtask's.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};

use crate::libtorch::{Flavor, Libtorch};

/// The cargo arguments that select the release `cm` binary.
const CM_BINARY: [&str; 6] = ["--release", "--quiet", "-p", "cm-cli", "--bin", "cm"];

/// `cargo run --release -p cm-cli --bin cm -- <args>` in `root` with
/// libtorch set up.
pub fn cargo_run_cm(
    root: &Path,
    torch: &Libtorch,
    cm_args: &[String],
) -> Result<ExitStatus, String> {
    let cargo = cargo_program();
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root)
        .arg("run")
        .args(CM_BINARY)
        .arg("--")
        .args(cm_args)
        .env("LIBTORCH", &torch.dir)
        .env_remove("LIBTORCH_USE_PYTORCH");
    if let Some(dir) = cuda_target_dir(root, torch) {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    eprintln!("xtask: cm {}", cm_args.join(" "));
    cmd.status()
        .map_err(|e| format!("cannot run {}: {e}", PathBuf::from(cargo).display()))
}

/// Builds `cm` in release with cargo `features` of cm-cli and returns the
/// binary's path (in `CARGO_TARGET_DIR` when set).
pub fn build_cm(root: &Path, torch: &Libtorch, features: &[&str]) -> Result<PathBuf, String> {
    let cargo = cargo_program();
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| cuda_target_dir(root, torch))
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    let mut args = vec!["build"];
    args.extend(CM_BINARY);
    let joined = features.join(",");
    if !features.is_empty() {
        args.extend(["--features", joined.as_str()]);
    }
    eprintln!("xtask: building cm (cargo {})", args.join(" "));
    let built = Command::new(&cargo)
        .current_dir(root)
        .args(&args)
        .env("LIBTORCH", &torch.dir)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("LIBTORCH_USE_PYTORCH")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !built.success() {
        return Err(format!(
            "building cm failed (cargo {}; see above)",
            args.join(" ")
        ));
    }
    Ok(target.join("release").join("cm"))
}

/// Runs `cargo <args> [--workspace] <passthrough>` in `root` with
/// `LIBTORCH` pointing at `torch`. Binaries get an rpath to `torch/lib`
/// from the crates' build scripts, so no loader variable is set.
pub fn cargo(
    root: &Path,
    torch: &Libtorch,
    args: &[&str],
    passthrough: &[String],
) -> Result<ExitStatus, String> {
    cargo_with_env(root, torch, args, passthrough, &[])
}

/// [`cargo`] with extra environment variables, each set only where the
/// caller's environment does not already set it.
pub fn cargo_with_env(
    root: &Path,
    torch: &Libtorch,
    args: &[&str],
    passthrough: &[String],
    defaults: &[(&str, &str)],
) -> Result<ExitStatus, String> {
    let cargo = cargo_program();
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if !picks_package(passthrough) {
        args.push("--workspace".into());
    }
    args.extend(passthrough.iter().cloned());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root)
        .args(&args)
        .env("LIBTORCH", &torch.dir)
        // torch-sys prefers a Python torch when this is set; we want ours.
        .env_remove("LIBTORCH_USE_PYTORCH");
    for (key, value) in defaults {
        if env::var_os(key).is_none() {
            cmd.env(key, value);
        }
    }
    if let Some(dir) = cuda_target_dir(root, torch) {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    eprintln!(
        "xtask: LIBTORCH={} cargo {}",
        torch.dir.display(),
        args.join(" ")
    );
    cmd.status()
        .map_err(|e| format!("cannot run {}: {e}", PathBuf::from(cargo).display()))
}

/// The cargo that started xtask (`$CARGO`), else `cargo` from `PATH`.
fn cargo_program() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// True when the user picked packages with `-p` / `--package`; otherwise
/// xtask's cargo commands cover the whole workspace.
pub fn picks_package(passthrough: &[String]) -> bool {
    passthrough
        .iter()
        .any(|a| a == "-p" || a == "--package" || a.starts_with("--package="))
}

/// xtask's exit code for a child's status (1 when it has none).
pub fn exit(status: ExitStatus) -> ExitCode {
    if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8)
    }
}

/// CUDA builds link a different libtorch: give them their own target folder
/// (`root/target/cuda`) unless the user chose one.
pub fn cuda_target_dir(root: &Path, torch: &Libtorch) -> Option<PathBuf> {
    if torch.flavor != Flavor::Cuda || env::var_os("CARGO_TARGET_DIR").is_some() {
        return None;
    }
    Some(root.join("target").join("cuda"))
}

/// `s` single-quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::strings;

    #[test]
    fn package_selection_replaces_workspace() {
        assert!(picks_package(&strings(&["-p", "cm-core"])));
        assert!(picks_package(&strings(&["--package=cm-core"])));
        assert!(!picks_package(&strings(&["--no-fail-fast"])));
    }

    #[test]
    fn shell_quote_escapes_single_quotes() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
