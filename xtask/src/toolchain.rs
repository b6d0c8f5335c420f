//! The toolchain commands: `setup` (install libtorch), `env` (shell exports
//! for plain cargo), `test` and `bench` (cargo with libtorch set up).

use std::env;
use std::process::ExitCode;
use std::time::Instant;

use crate::args::Args;
use crate::libtorch::{self, Flavor, Source};
use crate::mpi;
use crate::process::{cargo, cargo_with_env, cuda_target_dir, exit, picks_package, shell_quote};
use crate::workspace;

/// The first cargo argument (before any `--` of the test binaries) that
/// selects test targets, which `cargo test --doc` cannot combine with.
fn selects_targets(passthrough: &[String]) -> Option<&str> {
    const FLAGS: &[&str] = &[
        "--lib",
        "--bin",
        "--bins",
        "--test",
        "--tests",
        "--bench",
        "--benches",
        "--example",
        "--examples",
        "--all-targets",
    ];
    passthrough
        .iter()
        .take_while(|a| *a != "--")
        .map(String::as_str)
        .find(|a| {
            FLAGS
                .iter()
                .any(|f| a == f || a.strip_prefix(f).is_some_and(|r| r.starts_with('=')))
        })
}

/// The commands of this group.
pub const COMMANDS: &[&str] = &["setup", "env", "test", "bench"];

/// Runs toolchain command `args.command`.
pub fn run(args: &Args, flavor: Flavor) -> Result<ExitCode, String> {
    match args.command.as_str() {
        "setup" => {
            let started = Instant::now();
            if args.mpi {
                mpi::ensure()?;
                eprintln!("xtask: Open MPI and libclang are installed (data-parallel training: --procs N)");
            }
            let torch = libtorch::ensure(flavor)?;
            let how = match torch.source {
                Source::UserEnv => "from LIBTORCH",
                Source::Cached => "already installed",
                Source::Installed => "installed",
            };
            eprintln!(
                "xtask: libtorch {} ({:?}) {how}: {} [{:.3}s]",
                libtorch::TORCH_VERSION,
                torch.flavor,
                torch.dir.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        "env" => {
            let torch = libtorch::ensure(flavor)?;
            if args.cargo_config {
                // For crates outside the workspace (docs/embedding.md).
                print!("{}", cm_build::cargo_config(&torch.dir));
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "export LIBTORCH={}",
                shell_quote(&torch.dir.to_string_lossy())
            );
            // Only CUDA needs the workspace (its own target folder).
            if torch.flavor == Flavor::Cuda {
                if let Some(dir) = cuda_target_dir(&workspace::root()?, &torch) {
                    println!(
                        "export CARGO_TARGET_DIR={}",
                        shell_quote(&dir.to_string_lossy())
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        "test" => {
            let root = workspace::root()?;
            let torch = libtorch::ensure(flavor)?;
            let started = Instant::now();
            // A whole-suite run gains nothing from incremental caches,
            // which would double the target folder's size on a fresh clone.
            let defaults = [("CARGO_INCREMENTAL", "0")];
            // The MPI tests (crates/cm-cli/tests/mpi.rs) need Open MPI:
            // installed here when it can be; CI sets CM_REQUIRE_MPI=1 so a
            // machine without it fails instead of skipping them.
            let picks_other = picks_package(&args.passthrough)
                && !args
                    .passthrough
                    .iter()
                    .any(|a| a == "cm-cli" || a == "--package=cm-cli");
            // `--all-targets` would override a target selection after `--`.
            let selection = selects_targets(&args.passthrough);
            let mut test_args = vec!["test"];
            if selection.is_none() {
                test_args.push("--all-targets");
            }
            if !picks_other {
                match mpi::ensure() {
                    Ok(()) => test_args.extend(["--features", "cm-cli/mpi"]),
                    Err(e) if env::var("CM_REQUIRE_MPI").is_ok_and(|v| v == "1") => {
                        return Err(format!("CM_REQUIRE_MPI=1: {e}"))
                    }
                    Err(e) => eprintln!("xtask: the MPI tests are skipped: {e}"),
                }
            }
            let mut code = cargo_with_env(&root, &torch, &test_args, &args.passthrough, &defaults)?;
            if code.success() {
                if let Some(flag) = selection {
                    // `cargo test --doc` refuses target selections.
                    eprintln!(
                        "xtask: doc tests skipped: `{flag}` selects test targets (run `cargo xtask test` without it for the doc tests)"
                    );
                    return Ok(exit(code));
                }
                code = cargo_with_env(
                    &root,
                    &torch,
                    &["test", "--doc"],
                    &args.passthrough,
                    &defaults,
                )?;
            }
            eprintln!(
                "xtask: test suite finished in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            Ok(exit(code))
        }
        "bench" if args.vs_pytorch => crate::vs_pytorch::run(args, flavor),
        "bench" => {
            let root = workspace::root()?;
            let torch = libtorch::ensure(flavor)?;
            // Criterion's quick mode: CI's bench job, regressions reported
            // against the previous run by `cargo xtask bench-report`.
            // Only the criterion targets (`--bench '*'`): the libtest
            // harness of a library target would refuse `--quick`.
            let mut passthrough = args.passthrough.clone();
            let mut cargo_args = vec!["bench"];
            if args.quick {
                cargo_args.extend(["--bench", "*"]);
                if !passthrough.iter().any(|a| a == "--") {
                    passthrough.push("--".into());
                }
                passthrough.push("--quick".into());
            }
            let code = cargo(&root, &torch, &cargo_args, &passthrough)?;
            Ok(exit(code))
        }
        other => Err(format!("`{other}` is not a toolchain command")),
    }
}

#[cfg(test)]
mod tests {
    use super::selects_targets;

    #[test]
    fn target_selections_are_found_before_the_test_binary_arguments() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            selects_targets(&v(&["--test", "downstream"])),
            Some("--test")
        );
        assert_eq!(
            selects_targets(&v(&["-p", "cm-core", "--lib"])),
            Some("--lib")
        );
        assert_eq!(selects_targets(&v(&["--test=fuzz"])), Some("--test=fuzz"));
        assert_eq!(selects_targets(&v(&["-p", "cm-core"])), None);
        assert_eq!(selects_targets(&v(&["--", "--test-threads", "1"])), None);
        assert_eq!(selects_targets(&v(&["--testing"])), None);
    }
}
