//! Open MPI for data-parallel training: `cargo xtask setup --mpi` checks for
//! it (and for libclang, which rsmpi's bindgen needs) and installs the
//! Debian packages with apt-get when it can; `--procs N` builds `cm` with
//! the `mpi` feature and launches it through `mpirun`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::libtorch::Libtorch;
use crate::process::cargo_run_cm;

/// The Debian packages: Open MPI's headers and libraries, its launcher,
/// and libclang for rsmpi's bindgen.
pub const PACKAGES: &[&str] = &["libopenmpi-dev", "openmpi-bin", "libclang-dev"];

/// What is missing for an MPI build, in words (empty: nothing).
pub fn missing() -> Vec<&'static str> {
    let mut out = Vec::new();
    if find_on_path("mpirun").is_none() {
        out.push("mpirun (openmpi-bin)");
    }
    if find_on_path("mpicc").is_none() {
        out.push("Open MPI's headers and mpicc (libopenmpi-dev)");
    }
    if !has_libclang() {
        out.push("libclang (libclang-dev)");
    }
    out
}

/// Makes sure Open MPI and libclang are installed: nothing to do, or
/// `apt-get install` as root, or an error that says what to run.
pub fn ensure() -> Result<(), String> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!(
        "apt-get install -y --no-install-recommends {}",
        PACKAGES.join(" ")
    );
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || find_on_path("apt-get").is_none() {
        return Err(format!(
            "data-parallel training needs {}; install them (Debian / Ubuntu: `sudo {install}`; \
             elsewhere Open MPI >= 4 and libclang from your package manager), then run this again",
            missing.join(", ")
        ));
    }
    eprintln!(
        "xtask: installing {} with apt-get (missing: {})",
        PACKAGES.join(" "),
        missing.join(", ")
    );
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(PACKAGES);
    // A fresh container has no package lists yet: update once and retry.
    let installed = apt(&args) || (apt(&["update", "-q"]) && apt(&args));
    if !installed {
        return Err(format!("`{install}` failed; run it yourself and try again"));
    }
    match self::missing().as_slice() {
        [] => Ok(()),
        still => Err(format!(
            "after apt-get, still missing: {}",
            still.join(", ")
        )),
    }
}

/// `name` on `PATH`, if there.
fn find_on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// True when a libclang shared library is installed where bindgen's
/// clang-sys looks (`LIBCLANG_PATH`, the LLVM folders, the linker cache).
fn has_libclang() -> bool {
    if env::var_os("LIBCLANG_PATH").is_some() {
        return true;
    }
    let llvm = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
        .any(|e| {
            std::fs::read_dir(e.path().join("lib"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|f| f.file_name().to_string_lossy().starts_with("libclang.so"))
        });
    llvm || Command::new("ldconfig")
        .arg("-p")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("libclang.so"))
}

/// The mpirun flags every launch gets: no pinning (ranks share the cores
/// with each other and libtorch's threads), and the flags a container
/// running as root needs.
pub fn mpirun_flags(procs: usize, hostfile: Option<&str>) -> Vec<String> {
    let mut flags = vec!["--bind-to".to_string(), "none".into()];
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        flags.push("--allow-run-as-root".into());
    }
    match hostfile {
        Some(file) => flags.extend(["--hostfile".into(), file.into()]),
        // One machine: as many ranks as asked, whatever its core count.
        None => flags.push("--oversubscribe".into()),
    }
    flags.extend(["-n".into(), procs.to_string()]);
    flags
}

/// Runs `cm <cm_args>`: with `--procs N` (and a command that trains),
/// data-parallel through mpirun ([`crate::mpi::launch`]), else in one
/// process ([`cargo_run_cm`]).
pub fn run_cm(
    root: &Path,
    torch: &Libtorch,
    args: &crate::args::Args,
    cm_args: &[String],
) -> Result<ExitStatus, String> {
    const TRAINING: &[&str] = &[
        "train-teacher",
        "distill",
        "train-pd",
        "train-ect",
        "train-ct",
    ];
    match args.procs {
        Some(procs)
            if cm_args
                .first()
                .is_some_and(|c| TRAINING.contains(&c.as_str())) =>
        {
            launch(root, torch, procs, args.hostfile.as_deref(), cm_args)
        }
        _ => cargo_run_cm(root, torch, cm_args),
    }
}

/// Builds `cm` with the `mpi` feature (release, after [`ensure`]) and
/// returns the binary's path.
pub fn build_cm(root: &Path, torch: &Libtorch) -> Result<PathBuf, String> {
    ensure()?;
    crate::process::build_cm(root, torch, &["mpi"])
}

/// Builds `cm` with MPI ([`build_cm`]) and runs `mpirun <flags> -n procs
/// cm <cm_args>` in `root`, with one libtorch thread per rank unless
/// `cm_args` sets `--threads`.
pub fn launch(
    root: &Path,
    torch: &Libtorch,
    procs: usize,
    hostfile: Option<&str>,
    cm_args: &[String],
) -> Result<ExitStatus, String> {
    let cm = build_cm(root, torch)?;
    let mut args: Vec<String> = cm_args.to_vec();
    if !args
        .iter()
        .any(|a| a == "--threads" || a.starts_with("--threads="))
    {
        args.extend(["--threads".into(), "1".into()]);
    }
    let flags = mpirun_flags(procs, hostfile);
    eprintln!(
        "xtask: mpirun {} {} {}",
        flags.join(" "),
        cm.display(),
        args.join(" ")
    );
    Command::new("mpirun")
        .current_dir(root)
        .args(&flags)
        .arg(&cm)
        .args(&args)
        .status()
        .map_err(|e| format!("cannot run mpirun: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpirun_flags_never_pin_and_oversubscribe_only_without_a_hostfile() {
        let one = mpirun_flags(2, None);
        assert!(one.windows(2).any(|w| w == ["--bind-to", "none"]));
        assert!(one.contains(&"--oversubscribe".to_string()));
        assert_eq!(&one[one.len() - 2..], ["-n", "2"]);
        let many = mpirun_flags(16, Some("hosts.txt"));
        assert!(many.windows(2).any(|w| w == ["--hostfile", "hosts.txt"]));
        assert!(!many.contains(&"--oversubscribe".to_string()));
    }
}
