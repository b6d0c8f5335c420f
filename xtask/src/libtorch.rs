//! libtorch provisioning: installs libtorch 2.13.0 (what `tch 0.26` builds
//! against) from the PyPI `torch` wheel into a per-user cache folder, and
//! describes it to cargo through the `LIBTORCH` variable that `torch-sys` reads.
//!
//! Why the wheel: the canonical libtorch zip is not on a package registry, but
//! the `torch` wheel carries a complete libtorch (`torch/lib`, `torch/include`).
//! The CPU flavour takes the wheel without its dependencies plus the two CUDA
//! runtime libraries `libtorch_cpu.so` names as needed (`libcudart.so.13`,
//! `libcupti.so.13`, found through its RPATH `$ORIGIN/../../nvidia/cu13/lib`),
//! then deletes the CUDA-only libraries so `torch-sys` links a CPU build. The
//! CUDA flavour installs the wheel with its whole dependency tree.
//!
//! Every download is pinned by version, and the CPU set by sha256 as well (pip's
//! hash-checking mode); the CUDA flavour pins the `torch` wheel by hash and lets
//! pip resolve torch's own exact `==` pins for the NVIDIA libraries.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The libtorch release `tch 0.26` / `torch-sys 0.26` is written against.
pub const TORCH_VERSION: &str = cm_build::TORCH_VERSION;

/// sha256 of `torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl` on PyPI.
const TORCH_WHEEL_SHA256: &str = "60fcdcb2f3876e21146cb4524ef06397d727ca9ad5f020818547e25075fe3cb7";

/// The pinned, hash-checked requirement set of the CPU flavour.
const CPU_REQUIREMENTS: &str = "\
torch==2.13.0 --hash=sha256:60fcdcb2f3876e21146cb4524ef06397d727ca9ad5f020818547e25075fe3cb7
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cupti==13.0.85 --hash=sha256:4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8
";

/// Libraries of the wheel that only a CUDA build uses; removing them makes
/// `torch-sys` (which links `torch_cuda` whenever it finds it) build for CPU.
const CUDA_ONLY_LIBS: &[&str] = &[
    "libtorch_cuda.so",
    "libtorch_cuda_linalg.so",
    "libc10_cuda.so",
    "libtorch_nvshmem.so",
    "libcaffe2_nvrtc.so",
    "libtorch_python.so",
];

/// The wheel tags pip may pick. The wheel's C++ libraries do not depend on
/// the Python ABI, so the CPython 3.11 wheel serves any local Python.
const PIP_TARGET_FLAGS: &[&str] = &[
    "--only-binary=:all:",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
    "--abi",
    "abi3",
    "--abi",
    "none",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_27_x86_64",
    "--platform",
    "manylinux_2_25_x86_64",
    "--platform",
    "manylinux_2_24_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "linux_x86_64",
];

/// Which libtorch build to install.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// CPU only (default): about 1.2 GB on disk after trimming.
    Cpu,
    /// The full CUDA 13 stack (about 5 GB), for machines with an NVIDIA GPU.
    Cuda,
}

impl Flavor {
    fn name(self) -> &'static str {
        match self {
            Flavor::Cpu => "cpu",
            Flavor::Cuda => "cuda",
        }
    }
}

/// Where libtorch came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The user's own `LIBTORCH`.
    UserEnv,
    /// Already in the cm-rs cache.
    Cached,
    /// Installed by this call.
    Installed,
}

/// A usable libtorch folder.
#[derive(Debug)]
pub struct Libtorch {
    /// The folder `LIBTORCH` points at (holds `lib/` and `include/`).
    pub dir: PathBuf,
    /// The flavour actually found (a user's `LIBTORCH` may be either).
    pub flavor: Flavor,
    /// Where it came from.
    pub source: Source,
}

/// The cm-rs cache root: `$CM_RS_CACHE`, else `$XDG_CACHE_HOME/cm-rs`, else
/// `$HOME/.cache/cm-rs`.
pub fn cache_root() -> Result<PathBuf, String> {
    cm_build::cache_root()
        .ok_or_else(|| "cannot find a cache folder: set CM_RS_CACHE, XDG_CACHE_HOME or HOME".into())
}

fn non_empty_var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Makes sure a libtorch 2.13.0 of the wanted flavour is available and returns
/// it. Respects a `LIBTORCH` the user set; otherwise installs into the cache on
/// first use. A second call with an intact install only reads one small file.
pub fn ensure(flavor: Flavor) -> Result<Libtorch, String> {
    if let Some(dir) = non_empty_var("LIBTORCH") {
        return user_libtorch(PathBuf::from(dir));
    }
    let root = cache_root()?;
    let torch_dir = cm_build::cache_install(&root, flavor.name());
    let install = torch_dir.parent().unwrap_or(&root).to_path_buf();
    let stamp_text = stamp(flavor);
    if fs::read_to_string(install.join(STAMP_FILE)).ok().as_deref() == Some(stamp_text.as_str())
        && install.join("torch/lib/libtorch_cpu.so").is_file()
    {
        return Ok(Libtorch {
            dir: install.join("torch"),
            flavor,
            source: Source::Cached,
        });
    }
    install_into(&root, &install, flavor)?;
    Ok(Libtorch {
        dir: install.join("torch"),
        flavor,
        source: Source::Installed,
    })
}

const STAMP_FILE: &str = "cm-rs-libtorch.txt";

fn stamp(flavor: Flavor) -> String {
    format!(
        "torch {TORCH_VERSION} {} sha256:{TORCH_WHEEL_SHA256}\n",
        flavor.name()
    )
}

fn user_libtorch(dir: PathBuf) -> Result<Libtorch, String> {
    let lib = dir.join("lib");
    if !lib.join("libtorch_cpu.so").is_file() {
        return Err(format!(
            "LIBTORCH={} does not look like libtorch: expected {} to exist \
             (unset LIBTORCH to let `cargo xtask setup` install libtorch {TORCH_VERSION})",
            dir.display(),
            lib.join("libtorch_cpu.so").display()
        ));
    }
    if let Some(found) = read_version(&dir) {
        let bypass = non_empty_var("LIBTORCH_BYPASS_VERSION_CHECK").is_some();
        if base_version(&found) != TORCH_VERSION && !bypass {
            return Err(format!(
                "LIBTORCH={} holds libtorch {found}, but tch 0.26 needs {TORCH_VERSION}: \
                 unset LIBTORCH to use the cm-rs install, or set LIBTORCH_BYPASS_VERSION_CHECK=1",
                dir.display()
            ));
        }
    }
    let flavor = if lib.join("libtorch_cuda.so").is_file() {
        Flavor::Cuda
    } else {
        Flavor::Cpu
    };
    Ok(Libtorch {
        dir,
        flavor,
        source: Source::UserEnv,
    })
}

/// The version of a libtorch folder, from `build-version` (libtorch zips) or
/// `version.py` (the wheel's `torch/` folder).
fn read_version(dir: &Path) -> Option<String> {
    if let Ok(text) = fs::read_to_string(dir.join("build-version")) {
        return Some(text.trim().to_string());
    }
    let text = fs::read_to_string(dir.join("version.py")).ok()?;
    text.lines().find_map(|line| {
        let rest = line
            .strip_prefix("__version__")?
            .trim_start()
            .strip_prefix('=')?
            .trim();
        Some(rest.trim_matches(|c| c == '\'' || c == '"').to_string())
    })
}

/// `2.13.0+cu130` -> `2.13.0`.
fn base_version(version: &str) -> &str {
    version.split('+').next().unwrap_or(version).trim()
}

fn python() -> String {
    non_empty_var("CM_RS_PYTHON").unwrap_or_else(|| "python3".to_string())
}

fn check_python_and_pip(py: &str) -> Result<(), String> {
    let missing = |what: &str| {
        format!(
            "{what}: cm-rs installs libtorch {TORCH_VERSION} from the PyPI `torch` wheel with pip. \
             Install Python 3 with pip (Debian/Ubuntu: `apt-get install python3 python3-pip`), \
             point CM_RS_PYTHON at a Python that has pip, or set LIBTORCH to an existing \
             libtorch {TORCH_VERSION} folder"
        )
    };
    match Command::new(py).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => return Err(missing(&format!("`{py}` was not found or does not run"))),
    }
    match Command::new(py).args(["-m", "pip", "--version"]).output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(missing(&format!("`{py} -m pip` is not available"))),
    }
}

fn install_into(root: &Path, install: &Path, flavor: Flavor) -> Result<(), String> {
    let py = python();
    check_python_and_pip(&py)?;
    fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    // Install next to the final folder, then rename: an interrupted install
    // never leaves a half-written folder that looks complete.
    let staging = root.join(format!(
        ".partial-libtorch-{TORCH_VERSION}-{}-{}",
        flavor.name(),
        std::process::id()
    ));
    remove_dir_if_exists(&staging)?;
    fs::create_dir_all(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    let started = Instant::now();
    eprintln!(
        "xtask: installing libtorch {TORCH_VERSION} ({}) from the PyPI torch wheel into {}",
        flavor.name(),
        install.display()
    );
    let result = match flavor {
        Flavor::Cpu => pip_install_cpu(&py, &staging),
        Flavor::Cuda => pip_install_cuda(&py, &staging),
    }
    .and_then(|()| finish_install(&staging, flavor));
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    remove_dir_if_exists(install)?;
    fs::rename(&staging, install).map_err(|e| {
        format!(
            "cannot move {} to {}: {e}",
            staging.display(),
            install.display()
        )
    })?;
    eprintln!(
        "xtask: libtorch installed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    }
    Ok(())
}

fn run_pip(py: &str, args: &[&str], what: &str) -> Result<(), String> {
    let status = Command::new(py)
        .args(["-m", "pip", "--disable-pip-version-check"])
        .args(args)
        .status()
        .map_err(|e| format!("cannot run `{py} -m pip`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "pip failed ({status}) while {what}: check the network connection to PyPI, \
             or set LIBTORCH to an existing libtorch {TORCH_VERSION} folder"
        ))
    }
}

fn pip_install_cpu(py: &str, staging: &Path) -> Result<(), String> {
    let reqs = staging.join("requirements-cpu.txt");
    fs::write(&reqs, CPU_REQUIREMENTS)
        .map_err(|e| format!("cannot write {}: {e}", reqs.display()))?;
    let target = staging.to_string_lossy().into_owned();
    let reqs_s = reqs.to_string_lossy().into_owned();
    let mut args = vec![
        "install",
        "--no-deps",
        "--no-compile",
        "--require-hashes",
        "--target",
        &target,
    ];
    args.extend_from_slice(PIP_TARGET_FLAGS);
    args.extend_from_slice(&["-r", &reqs_s]);
    run_pip(py, &args, "installing the hash-pinned CPU libtorch set")
}

fn pip_install_cuda(py: &str, staging: &Path) -> Result<(), String> {
    // Fetch the torch wheel alone in hash-checking mode, then install that
    // verified file with the dependency tree its metadata pins.
    let wheels = staging.join("wheels");
    let reqs = staging.join("requirements-torch.txt");
    fs::write(
        &reqs,
        format!("torch=={TORCH_VERSION} --hash=sha256:{TORCH_WHEEL_SHA256}\n"),
    )
    .map_err(|e| format!("cannot write {}: {e}", reqs.display()))?;
    let wheels_s = wheels.to_string_lossy().into_owned();
    let reqs_s = reqs.to_string_lossy().into_owned();
    let mut args = vec!["download", "--no-deps", "--require-hashes", "-d", &wheels_s];
    args.extend_from_slice(PIP_TARGET_FLAGS);
    args.extend_from_slice(&["-r", &reqs_s]);
    run_pip(py, &args, "downloading the hash-pinned torch wheel")?;
    let wheel = fs::read_dir(&wheels)
        .map_err(|e| format!("cannot read {}: {e}", wheels.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| format!("pip downloaded no torch wheel into {}", wheels.display()))?;
    let target = staging.to_string_lossy().into_owned();
    let wheel_s = wheel.to_string_lossy().into_owned();
    let mut args = vec!["install", "--no-compile", "--target", &target];
    args.extend_from_slice(PIP_TARGET_FLAGS);
    args.push(&wheel_s);
    run_pip(py, &args, "installing torch with its CUDA dependencies")?;
    fs::remove_dir_all(&wheels).map_err(|e| format!("cannot remove {}: {e}", wheels.display()))
}

/// Checks the installed version and files, trims the CPU flavour, and writes
/// the stamp that makes the next call instant.
fn finish_install(staging: &Path, flavor: Flavor) -> Result<(), String> {
    let torch = staging.join("torch");
    let found = read_version(&torch).ok_or_else(|| {
        format!(
            "the installed wheel has no {}",
            torch.join("version.py").display()
        )
    })?;
    if base_version(&found) != TORCH_VERSION {
        return Err(format!(
            "pip installed torch {found}, expected {TORCH_VERSION}"
        ));
    }
    for needed in [
        "lib/libtorch_cpu.so",
        "lib/libc10.so",
        "include/torch/csrc/api/include/torch/all.h",
    ] {
        if !torch.join(needed).exists() {
            return Err(format!("the installed wheel lacks torch/{needed}"));
        }
    }
    if flavor == Flavor::Cpu {
        for lib in CUDA_ONLY_LIBS {
            let path = torch.join("lib").join(lib);
            if path.exists() {
                fs::remove_file(&path)
                    .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
            }
        }
    } else if !torch.join("lib/libtorch_cuda.so").is_file() {
        return Err("the CUDA install lacks torch/lib/libtorch_cuda.so".into());
    }
    // torch-sys checks `build-version` when it exists (libtorch zip layout).
    fs::write(torch.join("build-version"), format!("{found}\n"))
        .and_then(|()| fs::write(staging.join(STAMP_FILE), stamp(flavor)))
        .map_err(|e| {
            format!(
                "cannot write the install stamp in {}: {e}",
                staging.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wheel_and_zip_versions() {
        let dir = env::temp_dir().join(format!("xtask-version-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("version.py"),
            "x = 1\n__version__ = '2.13.0+cu130'\ndebug = False\n",
        )
        .unwrap();
        assert_eq!(read_version(&dir).as_deref(), Some("2.13.0+cu130"));
        assert_eq!(base_version("2.13.0+cu130"), "2.13.0");
        fs::write(dir.join("build-version"), "2.12.1+cpu\n").unwrap();
        assert_eq!(read_version(&dir).as_deref(), Some("2.12.1+cpu"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn user_libtorch_without_libraries_is_rejected_with_the_path() {
        let dir = env::temp_dir().join(format!("xtask-notorch-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let err = user_libtorch(dir.clone()).unwrap_err();
        assert!(err.contains("libtorch_cpu.so"), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn user_libtorch_of_another_version_is_rejected() {
        let dir = env::temp_dir().join(format!("xtask-oldtorch-{}", std::process::id()));
        fs::create_dir_all(dir.join("lib")).unwrap();
        fs::write(dir.join("lib/libtorch_cpu.so"), b"").unwrap();
        fs::write(dir.join("build-version"), "2.1.0+cpu\n").unwrap();
        if non_empty_var("LIBTORCH_BYPASS_VERSION_CHECK").is_none() {
            let err = user_libtorch(dir.clone()).unwrap_err();
            assert!(
                err.contains("2.1.0+cpu") && err.contains(TORCH_VERSION),
                "{err}"
            );
        }
        fs::write(dir.join("build-version"), "2.13.0\n").unwrap();
        let ok = user_libtorch(dir.clone()).unwrap();
        assert_eq!(ok.flavor, Flavor::Cpu);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cpu_requirements_pin_every_package_by_hash() {
        for line in CPU_REQUIREMENTS.lines() {
            assert!(
                line.contains("==") && line.contains("--hash=sha256:"),
                "{line}"
            );
        }
        assert!(CPU_REQUIREMENTS.contains(TORCH_WHEEL_SHA256));
    }
}
