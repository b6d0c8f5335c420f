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
#[cfg_attr(not(test), allow(dead_code))]
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

#[cfg(test)]
mod tests {
    use super::*;

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
