//! cm-build: link set-up for crates that use cm-rs, from their build
//! script.
//!
//! A crate that depends on cm-rs (through `tch`) needs libtorch twice:
//!
//! 1. **At build time**, `torch-sys` reads the `LIBTORCH` variable. Put it in
//!    the crate's `.cargo/config.toml` once, so no shell variable is needed:
//!    `cargo xtask env --cargo-config` (in a cm-rs checkout) prints the
//!    `[env]` table for the libtorch cm-rs installed ([`cargo_config`]).
//! 2. **At run time**, the dynamic loader must find `libtorch_cpu.so`. With
//!    this crate as a build-dependency, a one-line build script gives the
//!    crate's binaries, tests and examples an rpath to libtorch's `lib`
//!    folder ([`link_libtorch`]), so they start with no `LD_LIBRARY_PATH`.
//!
//! A build script (`build.rs`) needs one line in its `main`:
//!
//! ```no_run
//! cm_build::link_libtorch();
//! ```
//!
//! libtorch is looked for in this order ([`find_libtorch`]): the
//! `DEP_TCH_LIBTORCH_LIB` folder `torch-sys` reports to its direct
//! dependents, the `LIBTORCH` variable (set by `.cargo/config.toml` or the
//! shell), then the cm-rs cache (`$CM_RS_CACHE`, else
//! `$XDG_CACHE_HOME/cm-rs`, else `$HOME/.cache/cm-rs`), where
//! `cargo xtask setup` installs libtorch [`TORCH_VERSION`]. cm-rs's own
//! crates use the same build script. docs/embedding.md has a complete
//! example crate.

#![forbid(unsafe_code)]

use std::env;
use std::fmt;
use std::path::{Path, PathBuf};

/// The libtorch version `tch 0.26` builds against and `cargo xtask setup`
/// installs.
pub const TORCH_VERSION: &str = "2.13.0";

/// The library whose presence marks a usable libtorch `lib` folder.
const MARKER: &str = "libtorch_cpu.so";

/// Where a libtorch was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `DEP_TCH_LIBTORCH_LIB`, from `torch-sys` (direct dependents only).
    TorchSys,
    /// The `LIBTORCH` variable.
    Env,
    /// The cm-rs cache, flavour `cpu` or `cuda`.
    Cache(&'static str),
}

/// A libtorch `lib` folder (holds `libtorch_cpu.so`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Libtorch {
    /// The `lib` folder.
    pub lib: PathBuf,
    /// Where it was found.
    pub origin: Origin,
}

impl Libtorch {
    /// Whether this is a CUDA build (`libtorch_cuda.so` beside the CPU one).
    pub fn is_cuda(&self) -> bool {
        self.lib.join("libtorch_cuda.so").is_file()
    }
}

/// No libtorch was found: every place looked at, and why it was passed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotFound {
    /// `(place, reason)` for each candidate, in search order.
    pub tried: Vec<(String, String)>,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cm-build: no libtorch {TORCH_VERSION} found. Looked at:")?;
        for (place, why) in &self.tried {
            writeln!(f, "  - {place}: {why}")?;
        }
        write!(
            f,
            "Install it with `cargo xtask setup` in a cm-rs checkout, then write the \
             output of `cargo xtask env --cargo-config` into this crate's \
             .cargo/config.toml (or set LIBTORCH to a libtorch {TORCH_VERSION} folder)."
        )
    }
}

impl std::error::Error for NotFound {}

/// The cm-rs cache root: `$CM_RS_CACHE`, else `$XDG_CACHE_HOME/cm-rs`, else
/// `$HOME/.cache/cm-rs` (`None` when none of them is set).
pub fn cache_root() -> Option<PathBuf> {
    if let Some(dir) = var("CM_RS_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("cm-rs"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".cache").join("cm-rs"))
}

/// The folder `cargo xtask setup` installs libtorch of `flavor` (`"cpu"`
/// or `"cuda"`) into under the cache `root`; `LIBTORCH` points here.
pub fn cache_install(root: &Path, flavor: &str) -> PathBuf {
    root.join(format!("libtorch-{TORCH_VERSION}-{flavor}"))
        .join("torch")
}

/// Finds libtorch's `lib` folder (see the crate docs for the order).
pub fn find_libtorch() -> Result<Libtorch, NotFound> {
    let mut tried = Vec::new();
    if let Some(lib) = var("DEP_TCH_LIBTORCH_LIB") {
        let lib = PathBuf::from(lib);
        if let Some(found) = candidate(&mut tried, "DEP_TCH_LIBTORCH_LIB", lib, Origin::TorchSys) {
            return Ok(found);
        }
    }
    match var("LIBTORCH") {
        Some(dir) => {
            let lib = Path::new(&dir).join("lib");
            if let Some(found) = candidate(&mut tried, &format!("LIBTORCH={dir}"), lib, Origin::Env)
            {
                return Ok(found);
            }
        }
        None => tried.push(("LIBTORCH".into(), "not set".into())),
    }
    match cache_root() {
        Some(root) => {
            for flavor in ["cpu", "cuda"] {
                let lib = cache_install(&root, flavor).join("lib");
                let place = format!("the cm-rs cache ({flavor})");
                if let Some(found) = candidate(&mut tried, &place, lib, Origin::Cache(flavor)) {
                    return Ok(found);
                }
            }
        }
        None => tried.push((
            "the cm-rs cache".into(),
            "none of CM_RS_CACHE, XDG_CACHE_HOME, HOME is set".into(),
        )),
    }
    Err(NotFound { tried })
}

/// `lib` if it holds libtorch, else why not, recorded in `tried`.
fn candidate(
    tried: &mut Vec<(String, String)>,
    place: &str,
    lib: PathBuf,
    origin: Origin,
) -> Option<Libtorch> {
    if lib.join(MARKER).is_file() {
        Some(Libtorch { lib, origin })
    } else {
        tried.push((
            place.to_string(),
            format!("no {MARKER} in {}", lib.display()),
        ));
        None
    }
}

/// The build-script lines ([`link_libtorch`] prints them) for `libtorch`:
/// re-run when `LIBTORCH` changes, an rpath to its `lib` folder, and for a
/// CUDA build `libtorch_cuda.so` kept among the needed libraries (under the
/// default `--as-needed` linking it is dropped, since no symbol of it is
/// referenced directly, and `tch::Cuda::is_available()` then reports false).
pub fn link_lines(libtorch: &Libtorch) -> Vec<String> {
    let mut lines = vec![
        "cargo:rerun-if-env-changed=LIBTORCH".to_string(),
        "cargo:rerun-if-env-changed=CM_RS_CACHE".to_string(),
        "cargo:rerun-if-env-changed=XDG_CACHE_HOME".to_string(),
        "cargo:rerun-if-env-changed=HOME".to_string(),
        format!("cargo:rustc-link-arg=-Wl,-rpath,{}", libtorch.lib.display()),
    ];
    if libtorch.is_cuda() {
        lines.push("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed".into());
    }
    lines
}

/// For a build script: finds libtorch and prints [`link_lines`]. Panics
/// (which fails the build with the message) when no libtorch is found,
/// naming every place looked at; use [`try_link_libtorch`] to decide
/// yourself.
pub fn link_libtorch() {
    if let Err(e) = try_link_libtorch() {
        panic!("{e}");
    }
}

/// [`link_libtorch`] returning the error instead of failing the build.
pub fn try_link_libtorch() -> Result<Libtorch, NotFound> {
    let libtorch = find_libtorch()?;
    for line in link_lines(&libtorch) {
        println!("{line}");
    }
    Ok(libtorch)
}

/// The `.cargo/config.toml` table that lets `torch-sys` find the libtorch
/// folder `libtorch_dir` (the one holding `lib/` and `include/`) with no
/// shell variable: `[env] LIBTORCH = "..."`.
pub fn cargo_config(libtorch_dir: &Path) -> String {
    format!(
        "# libtorch {TORCH_VERSION} for torch-sys (written by `cargo xtask env --cargo-config`).\n\
         [env]\n\
         LIBTORCH = {}\n",
        toml_string(&libtorch_dir.to_string_lossy())
    )
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_config_is_valid_toml_with_the_path() {
        let text = cargo_config(Path::new("/opt/we \"ird\"\\torch"));
        assert!(text.contains("[env]\n"));
        // The escaped value, as a TOML parser would read it back.
        assert!(
            text.contains(r#"LIBTORCH = "/opt/we \"ird\"\\torch""#),
            "{text}"
        );
        assert_eq!(toml_string("a\tb"), "\"a\\u0009b\"");
    }

    #[test]
    fn cache_install_is_where_xtask_puts_it() {
        assert_eq!(
            cache_install(Path::new("/c"), "cpu"),
            Path::new("/c/libtorch-2.13.0-cpu/torch")
        );
    }

    #[test]
    fn link_lines_give_the_rpath_and_cuda_only_for_cuda() {
        let dir = std::env::temp_dir().join(format!("cm-build-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(MARKER), b"").unwrap();
        let lt = Libtorch {
            lib: dir.clone(),
            origin: Origin::Env,
        };
        let lines = link_lines(&lt);
        assert!(lines.contains(&format!(
            "cargo:rustc-link-arg=-Wl,-rpath,{}",
            dir.display()
        )));
        assert!(!lines.iter().any(|l| l.contains("torch_cuda")));
        std::fs::write(dir.join("libtorch_cuda.so"), b"").unwrap();
        assert!(link_lines(&lt).iter().any(|l| l.contains("-ltorch_cuda")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn not_found_names_every_place() {
        let e = NotFound {
            tried: vec![("LIBTORCH".into(), "not set".into())],
        };
        let text = e.to_string();
        assert!(text.contains("LIBTORCH: not set"));
        assert!(text.contains("cargo xtask env --cargo-config"));
    }
}
