//! `cargo xtask`: the cm-rs task runner. It installs libtorch, then runs cargo
//! with the environment `tch` needs. It orchestrates; the crates do the work
//! (rust-analyzer's xtask pattern: no dependencies of its own).
//!
//! Modules: [`args`] (the command line), [`help`] (usage text),
//! [`workspace`] (the checkout, found at run time), [`presets`] (the
//! `configs/` files), [`process`] (running cargo and `cm`), and one module
//! per command group: [`toolchain`] (setup, env, test, bench), [`runs`]
//! (training and evaluation pipelines), [`edit`] (editing grids);
//! [`libtorch`] installs libtorch.

mod args;
mod bench_report;
mod compare;
mod edit;
mod help;
mod libtorch;
mod mpi;
mod presets;
mod process;
mod runs;
mod scale;
mod toolchain;
mod vs_pytorch;
mod workspace;

use std::env;
use std::process::ExitCode;

use libtorch::Flavor;

/// Every command, in the order of the help text's sections.
const COMMANDS: &[&str] = &[
    "setup",
    "env",
    "test",
    "bench",
    "bench-scale",
    "bench-report",
    "train-cd",
    "train-pd",
    "train-ect",
    "train-lcm",
    "train-lcm-lora",
    "train-teacher",
    "train-ct",
    "ct-ablation",
    "eval",
    "compare",
    "edit-grids",
    "help",
];

fn main() -> ExitCode {
    match run(env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("xtask error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(raw: Vec<String>) -> Result<ExitCode, String> {
    let args = args::parse(raw)?;
    let flavor = if args.cuda { Flavor::Cuda } else { Flavor::Cpu };
    let command = args.command.as_str();
    // --procs launches the training pipelines through mpirun; elsewhere it
    // would be silently ignored.
    if args.procs.is_some()
        && ![
            "train-cd",
            "train-pd",
            "train-teacher",
            "train-ct",
            "train-ect",
            "train-lcm",
            "train-lcm-lora",
            "compare",
        ]
        .contains(&command)
    {
        return Err(format!(
            "--procs: `{command}` does not train data-parallel (train-cd, train-pd, train-teacher, train-ct, train-ect, train-lcm, train-lcm-lora and compare do)"
        ));
    }
    if args.procs.is_some() && args.cuda {
        return Err(
            "--procs with --cuda: every rank would use the first GPU; one rank per GPU is the NCCL plan of docs/scale.md, not built yet"
                .into(),
        );
    }
    // Every option must be one the command uses: a flag it ignored would
    // look like it had done something (`ct-ablation --run-dir` ran into
    // `cm`'s own default folder).
    let known = COMMANDS.contains(&command) && command != "help";
    if let Some(flag) = given_flags(&args)
        .into_iter()
        .find(|f| known && !accepted_flags(command, args.vs_pytorch).contains(f))
    {
        return Err(format!(
            "`{flag}` is not an option of `{command}` (see `cargo xtask help`; options of `cm` go after `--`)"
        ));
    }
    // Arguments after `--` go to cargo or `cm`; these commands run neither
    // with them, so they would be silently dropped.
    let takes_no_passthrough = matches!(command, "setup" | "env" | "bench-scale" | "bench-report")
        || (command == "bench" && args.vs_pytorch);
    if takes_no_passthrough && !args.passthrough.is_empty() {
        let name = if command == "bench" {
            "bench --vs-pytorch"
        } else {
            command
        };
        return Err(format!(
            "`{name}` takes no arguments after `--` (got `{}`): see `cargo xtask help`",
            args.passthrough.join(" ")
        ));
    }
    if command == "help" {
        print!("{}", help::text(workspace::root().ok().as_deref()));
        Ok(ExitCode::SUCCESS)
    } else if toolchain::COMMANDS.contains(&command) {
        toolchain::run(&args, flavor)
    } else if runs::COMMANDS.contains(&command) {
        runs::run(&args, flavor)
    } else if edit::COMMANDS.contains(&command) {
        edit::run(&args, flavor)
    } else if compare::COMMANDS.contains(&command) {
        compare::run(&args, flavor)
    } else if scale::COMMANDS.contains(&command) {
        scale::run(&args, flavor)
    } else if bench_report::COMMANDS.contains(&command) {
        bench_report::run(&args)
    } else {
        let help = help::text(workspace::root().ok().as_deref());
        Err(format!("unknown command `{command}`\n\n{help}"))
    }
}

/// The xtask options a command may or may not use (`--cuda` aside: every
/// command takes it, and it also comes from `CM_RS_CUDA`).
const FLAGS: [&str; 15] = [
    "--resume",
    "--preset",
    "--recipe",
    "--config",
    "--run-dir",
    "--out",
    "--cargo-config",
    "--mpi",
    "--procs",
    "--hostfile",
    "--vs-pytorch",
    "--quick",
    "--python",
    "--threads",
    "--rounds",
];

/// The options of [`FLAGS`] given on the command line.
fn given_flags(args: &args::Args) -> Vec<&'static str> {
    let given = [
        args.resume,
        args.preset.is_some(),
        args.recipe.is_some(),
        args.config.is_some(),
        args.run_dir.is_some(),
        args.out.is_some(),
        args.cargo_config,
        args.mpi,
        args.procs.is_some(),
        args.hostfile.is_some(),
        args.vs_pytorch,
        args.quick,
        args.python.is_some(),
        args.threads.is_some(),
        args.rounds.is_some(),
    ];
    FLAGS
        .into_iter()
        .zip(given)
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
}

/// The xtask options `command` uses (`--cuda` aside).
fn accepted_flags(command: &str, vs_pytorch: bool) -> &'static [&'static str] {
    const TRAIN: &[&str] = &[
        "--preset",
        "--config",
        "--run-dir",
        "--resume",
        "--procs",
        "--hostfile",
    ];
    match command {
        "setup" => &["--mpi"],
        "env" => &["--cargo-config"],
        "bench" if vs_pytorch => &[
            "--vs-pytorch",
            "--quick",
            "--python",
            "--threads",
            "--rounds",
        ],
        "bench" => &["--quick"],
        "bench-scale" => &["--preset", "--out"],
        "bench-report" => &["--out"],
        "train-ct" => &[
            "--preset",
            "--recipe",
            "--config",
            "--run-dir",
            "--resume",
            "--procs",
            "--hostfile",
        ],
        "train-cd" | "train-pd" | "train-ect" | "train-lcm" | "train-lcm-lora"
        | "train-teacher" => TRAIN,
        "eval" => &["--preset", "--config", "--out"],
        "compare" => &["--preset", "--out", "--resume", "--procs", "--hostfile"],
        "edit-grids" => &["--run-dir", "--out"],
        // test, ct-ablation (its options go to `cm` after `--`), help.
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_a_command_would_ignore_are_refused() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (cmd, flag) in [
            (&["ct-ablation", "--run-dir", "x"][..], "--run-dir"),
            (&["ct-ablation", "--preset", "fmnist"], "--preset"),
            (&["train-cd", "--recipe", "ict"], "--recipe"),
            (&["test", "--resume"], "--resume"),
            (&["setup", "--quick"], "--quick"),
            (&["bench", "--rounds", "3"], "--rounds"),
            (&["eval", "--resume"], "--resume"),
            (&["bench-report", "--preset", "x"], "--preset"),
        ] {
            let err = run(strings(cmd)).unwrap_err();
            assert!(
                err.contains(&format!("`{flag}` is not an option of `{}`", cmd[0])),
                "{cmd:?}: {err}"
            );
        }
        // Every listed option is one xtask parses, and each command's own
        // options (those its module reads) are listed.
        for &command in COMMANDS {
            for vs in [false, true] {
                for flag in accepted_flags(command, vs) {
                    assert!(FLAGS.contains(flag), "{command}: unknown flag {flag}");
                }
            }
        }
        for (command, flags) in [
            ("compare", &["--preset", "--out", "--resume", "--procs"][..]),
            ("eval", &["--preset", "--config", "--out"]),
            ("edit-grids", &["--run-dir", "--out"]),
            ("bench-scale", &["--preset", "--out"]),
            (
                "train-ct",
                &["--preset", "--recipe", "--config", "--run-dir", "--resume"],
            ),
            (
                "train-cd",
                &["--preset", "--config", "--run-dir", "--resume", "--procs"],
            ),
        ] {
            for flag in flags {
                assert!(
                    accepted_flags(command, false).contains(flag),
                    "{command} {flag}"
                );
            }
        }
        assert!(accepted_flags("bench", true).contains(&"--rounds"));
        // Unknown commands and help are not judged by their options.
        let err = run(strings(&["trian-cd", "--preset", "x"])).unwrap_err();
        assert!(err.contains("unknown command"), "{err}");
    }

    #[test]
    fn commands_that_run_neither_cargo_nor_cm_refuse_extra_arguments() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for cmd in [
            &["setup", "--", "-p", "cm-core"][..],
            &["env", "--", "--release"],
            &["bench-scale", "--", "x"],
            &["bench-report", "--", "x"],
            &["bench", "--vs-pytorch", "--", "--quick"],
        ] {
            let err = run(strings(cmd)).unwrap_err();
            assert!(
                err.contains("takes no arguments after `--`"),
                "{cmd:?}: {err}"
            );
        }
    }

    #[test]
    fn every_command_has_exactly_one_group() {
        for &command in COMMANDS.iter().filter(|c| **c != "help") {
            let groups = [
                toolchain::COMMANDS,
                runs::COMMANDS,
                edit::COMMANDS,
                compare::COMMANDS,
                scale::COMMANDS,
                bench_report::COMMANDS,
            ]
            .iter()
            .filter(|g| g.contains(&command))
            .count();
            assert_eq!(groups, 1, "{command}");
        }
        let grouped = toolchain::COMMANDS.len()
            + runs::COMMANDS.len()
            + edit::COMMANDS.len()
            + compare::COMMANDS.len()
            + scale::COMMANDS.len()
            + bench_report::COMMANDS.len();
        assert_eq!(grouped + 1, COMMANDS.len());
        assert!(run(vec!["frobnicate".into()])
            .unwrap_err()
            .contains("frobnicate"));
    }
}
