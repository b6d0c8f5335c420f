//! The pipeline commands: `train-teacher`, `train-cd`, `train-ct`,
//! `ct-ablation` and `eval`, each one `cm` command with its config picked by
//! `--preset` (see [`crate::presets`]) or `--config`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::args::Args;
use crate::libtorch::{self, Flavor};
use crate::mpi::run_cm;
use crate::presets::{self, DEFAULT_PRESET, DEFAULT_RECIPE};
use crate::process::exit;
use crate::workspace;

/// The commands of this group.
pub const COMMANDS: &[&str] = &[
    "train-cd",
    "train-pd",
    "train-ect",
    "train-lcm",
    "train-lcm-lora",
    "train-teacher",
    "train-ct",
    "ct-ablation",
    "eval",
];

/// Runs pipeline command `args.command`.
pub fn run(args: &Args, flavor: Flavor) -> Result<ExitCode, String> {
    let root = workspace::root()?;
    let cm_args = match args.command.as_str() {
        "train-teacher" => cm_run_args(args, &root, "train-teacher", "teacher", "teacher")?,
        "train-cd" => cm_run_args(args, &root, "distill", "cd", "cd")?,
        "train-pd" => cm_run_args(args, &root, "train-pd", "pd", "pd")?,
        "train-ect" => cm_run_args(args, &root, "train-ect", "ect", "ect")?,
        "train-lcm" => cm_run_args(args, &root, "train-lcm", "lcm", "lcm")?,
        "train-lcm-lora" => cm_run_args(args, &root, "train-lcm", "lcm-lora", "lcm-lora")?,
        "train-ct" => ct_args(args, &root)?,
        "ct-ablation" => {
            let mut cm_args = vec!["ct-ablation".to_string()];
            cm_args.extend(args.passthrough.iter().cloned());
            cm_args
        }
        "eval" => cm_eval_args(args, &root)?,
        other => return Err(format!("`{other}` is not a pipeline command")),
    };
    if args.procs.is_some() && matches!(args.command.as_str(), "ct-ablation" | "eval") {
        return Err(format!(
            "--procs: `{}` runs in one process (only the train-* pipelines train data-parallel)",
            args.command
        ));
    }
    let torch = libtorch::ensure(flavor)?;
    Ok(exit(run_cm(&root, &torch, args, &cm_args)?))
}

/// The preset named by `--preset` (default fmnist).
fn preset(args: &Args) -> &str {
    args.preset.as_deref().unwrap_or(DEFAULT_PRESET)
}

/// `--preset` and `--config` each choose the config: both at once would
/// silently ignore one, so they are refused together.
fn check_one_config(args: &Args) -> Result<(), String> {
    for (flag, value) in [("--preset", &args.preset), ("--recipe", &args.recipe)] {
        if let (Some(p), Some(c)) = (value, &args.config) {
            return Err(format!(
                "{flag} {p} and --config {c} both choose the config; pass one \
                 (name the run folder with --run-dir)"
            ));
        }
    }
    Ok(())
}

/// `cm <subcommand> --config <config or configs/<group>/<preset>.toml>
/// --run-dir <run dir or runs/<prefix>-<preset>> [--resume] [--device cuda]
/// <extra>`; the preset must be a file under `root` unless `--config` is
/// given.
fn cm_run_args(
    args: &Args,
    root: &Path,
    subcommand: &str,
    group: &str,
    prefix: &str,
) -> Result<Vec<String>, String> {
    check_one_config(args)?;
    let preset = preset(args);
    // With --config the default preset only names the run folder.
    let config = match args.config {
        Some(_) => String::new(),
        None => presets::config_path(root, group, preset)?,
    };
    cm_args_with(
        args,
        root,
        subcommand,
        config,
        format!("runs/{prefix}-{preset}"),
    )
}

/// `cm train-ct` for `--preset P --recipe R`: `configs/ct/P-R.toml` into
/// `runs/R-P`.
pub fn ct_args(args: &Args, root: &Path) -> Result<Vec<String>, String> {
    check_one_config(args)?;
    let preset = preset(args);
    let recipe = args.recipe.as_deref().unwrap_or(DEFAULT_RECIPE);
    // With --config the default preset and recipe only name the run folder.
    let config = match args.config {
        Some(_) => String::new(),
        None => presets::ct_config_path(root, preset, recipe)?,
    };
    cm_args_with(
        args,
        root,
        "train-ct",
        config,
        format!("runs/{recipe}-{preset}"),
    )
}

/// `cm eval --config <config or configs/eval/<preset>.toml> --out <out or
/// runs/eval-<preset>> [--device cuda] <extra>`.
pub fn cm_eval_args(args: &Args, root: &Path) -> Result<Vec<String>, String> {
    let with_out = Args {
        command: args.command.clone(),
        cuda: args.cuda,
        preset: args.preset.clone(),
        config: args.config.clone(),
        run_dir: args.out.clone(),
        passthrough: args.passthrough.clone(),
        ..Args::default()
    };
    if args.resume || args.run_dir.is_some() {
        return Err("`eval` takes --out, not --run-dir or --resume".into());
    }
    let mut cm_args = cm_run_args(&with_out, root, "eval", "eval", "eval")?;
    // cm_run_args names the output folder --run-dir; `cm eval` calls it --out.
    if let Some(flag) = cm_args.iter_mut().find(|a| *a == "--run-dir") {
        *flag = "--out".into();
    }
    Ok(cm_args)
}

/// `cm <subcommand> --config <--config or default_config> --run-dir <--run-dir
/// or default_run_dir> [--resume] [--device cuda] <extra>`.
fn cm_args_with(
    args: &Args,
    root: &Path,
    subcommand: &str,
    default_config: String,
    default_run_dir: String,
) -> Result<Vec<String>, String> {
    // `cm` runs in the workspace root, xtask in the user's directory: make
    // the user's relative paths absolute first, then relative to the root
    // where they lie inside it. A run folder spelled either way then names
    // its stages alike: a latent teacher's reuse key holds the autoencoder
    // card's path as the run folder spells it (runs/teachers/...).
    let from_cwd = |p: &str| {
        let path = PathBuf::from(p);
        let absolute = if path.is_absolute() {
            path
        } else {
            env::current_dir().map(|d| d.join(&path)).unwrap_or(path)
        };
        absolute
            .strip_prefix(root)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| absolute.clone())
            .to_string_lossy()
            .into_owned()
    };
    let config = args
        .config
        .as_deref()
        .map(from_cwd)
        .unwrap_or(default_config);
    let run_dir = args
        .run_dir
        .as_deref()
        .map(from_cwd)
        .unwrap_or(default_run_dir);
    let mut cm_args = vec![
        subcommand.to_string(),
        "--config".into(),
        config,
        "--run-dir".into(),
        run_dir,
    ];
    if args.resume {
        cm_args.push("--resume".into());
    }
    if args.cuda {
        cm_args.extend(["--device".into(), "cuda".into()]);
    }
    cm_args.extend(args.passthrough.iter().cloned());
    Ok(cm_args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{parse, strings};

    #[test]
    fn ct_presets_and_recipes_pick_config_and_run_folder() {
        let root = workspace::root().unwrap();
        let a = parse(strings(&["train-ct", "--preset", "toy", "--recipe", "ct"])).unwrap();
        let cm = ct_args(&a, &root).unwrap();
        assert_eq!(
            cm[..5],
            strings(&[
                "train-ct",
                "--config",
                "configs/ct/toy-ct.toml",
                "--run-dir",
                "runs/ct-toy"
            ])
        );
        let a = parse(strings(&["train-ct"])).unwrap();
        assert_eq!(ct_args(&a, &root).unwrap()[2], "configs/ct/fmnist-ict.toml");
        // Every preset the help names has both recipes' files.
        assert_eq!(presets::ct_recipes(&root), ["ct", "ict"]);
        for recipe in ["ct", "ict"] {
            assert_eq!(
                presets::ct_presets(&root, recipe),
                ["cfmnist", "cifar10", "fmnist", "toy"]
            );
        }
        let a = parse(strings(&["train-ct", "--recipe", "lcm"])).unwrap();
        assert!(ct_args(&a, &root).unwrap_err().contains("lcm"));
        let a = parse(strings(&["train-ct", "--preset", "imagenet"])).unwrap();
        let err = ct_args(&a, &root).unwrap_err();
        assert!(
            err.contains("imagenet") && err.contains("cfmnist, cifar10, fmnist, toy"),
            "{err}"
        );
    }

    #[test]
    fn paths_inside_the_workspace_reach_cm_relative_to_it() {
        let root = workspace::root().unwrap();
        let inside = root.join("runs/lcm-lora-x").display().to_string();
        let outside = std::env::temp_dir().join("cm-run").display().to_string();
        for (given, expected) in [
            (inside.as_str(), "runs/lcm-lora-x"),
            (outside.as_str(), outside.as_str()),
        ] {
            let a = parse(strings(&["train-lcm-lora", "--run-dir", given])).unwrap();
            let cm = cm_run_args(&a, &root, "train-lcm", "lcm-lora", "lcm-lora").unwrap();
            assert_eq!(cm[4], expected, "{cm:?}");
        }
    }

    #[test]
    fn run_presets_are_config_files_and_unknown_ones_list_them() {
        let root = workspace::root().unwrap();
        let a = parse(strings(&["train-cd", "--preset", "smoke"])).unwrap();
        assert_eq!(
            cm_run_args(&a, &root, "distill", "cd", "cd").unwrap(),
            strings(&[
                "distill",
                "--config",
                "configs/cd/smoke.toml",
                "--run-dir",
                "runs/cd-smoke"
            ])
        );
        let a = parse(strings(&["train-teacher", "--preset", "tiny"])).unwrap();
        let err = cm_run_args(&a, &root, "train-teacher", "teacher", "teacher").unwrap_err();
        assert!(
            err.contains("`tiny`") && err.contains("cifar10, fmnist, smoke, toy"),
            "{err}"
        );
        // --config alone takes that file; with --preset (even a bogus one)
        // the two are refused together instead of one being ignored.
        let a = parse(strings(&["train-teacher", "--config", "/c.toml"])).unwrap();
        let cm = cm_run_args(&a, &root, "train-teacher", "teacher", "teacher").unwrap();
        assert_eq!(
            &cm[1..5],
            &strings(&["--config", "/c.toml", "--run-dir", "runs/teacher-fmnist"])[..]
        );
        let a = parse(strings(&[
            "train-teacher",
            "--preset",
            "bogus",
            "--config",
            "/c.toml",
        ]))
        .unwrap();
        let err = cm_run_args(&a, &root, "train-teacher", "teacher", "teacher").unwrap_err();
        assert!(
            err.contains("--preset bogus") && err.contains("--config"),
            "{err}"
        );
    }

    #[test]
    fn eval_maps_preset_and_out_to_cm_eval() {
        let root = workspace::root().unwrap();
        let a = parse(strings(&[
            "eval",
            "--preset",
            "smoke",
            "--",
            "--samples",
            "50",
        ]))
        .unwrap();
        assert_eq!(
            cm_eval_args(&a, &root).unwrap(),
            strings(&[
                "eval",
                "--config",
                "configs/eval/smoke.toml",
                "--out",
                "runs/eval-smoke",
                "--samples",
                "50"
            ])
        );
        let b = parse(strings(&["eval", "--out", "/tmp/e"])).unwrap();
        let args = cm_eval_args(&b, &root).unwrap();
        assert_eq!(
            &args[1..5],
            &strings(&["--config", "configs/eval/fmnist.toml", "--out", "/tmp/e"])[..]
        );
        assert!(cm_eval_args(&parse(strings(&["eval", "--resume"])).unwrap(), &root).is_err());
        assert!(cm_eval_args(&parse(strings(&["eval", "--preset", "x"])).unwrap(), &root).is_err());
    }
}
