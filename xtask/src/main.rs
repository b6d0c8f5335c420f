//! `cargo xtask`: the cm-rs task runner. It installs libtorch, then runs cargo
//! with the environment `tch` needs. It orchestrates; the crates do the work
//! (rust-analyzer's xtask pattern: no dependencies of its own).

mod libtorch;

use std::env;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use libtorch::{Flavor, Libtorch, Source};

const HELP: &str = "\
cargo xtask: the cm-rs task runner

USAGE:
    cargo xtask <COMMAND> [--cuda] [-- <extra cargo arguments>]

COMMANDS:
    setup    Install libtorch 2.13.0 (what tch 0.26 builds against) from the PyPI
             `torch` wheel into the per-user cache (CPU subset by default, the
             full CUDA stack with --cuda). Idempotent: a second run is instant.
    env      Print the shell exports that let plain `cargo` build the workspace.
    test     Set-up, then the whole test suite (README's test command).
    bench    Set-up, then the criterion benchmarks (reports in target/criterion).
    train-cd [--preset fmnist|smoke|toy|cifar10] [--config FILE] [--run-dir DIR] [--resume]
             The main job: consistency distillation on Fashion-MNIST (default).
             Trains the EDM teacher (or reuses a finished one with the same
             config from runs/teachers/), distills it, writes 1-step and
             2-step grids and runs/cd-<preset>/report.md. ~40 min on 2 cores;
             `--preset smoke` under 2 minutes.
    train-teacher [--preset fmnist|toy|cifar10] [--config FILE] [--run-dir DIR] [--resume]
             Train the EDM teacher alone (runs/teacher-<preset>).
    train-ct [--preset fmnist|cfmnist|toy|cifar10] [--recipe ict|ct] [--config FILE] [--run-dir DIR] [--resume]
             Consistency training from data alone, no teacher: iCT (default)
             or CT from configs/ct/<preset>-<recipe>.toml into
             runs/<recipe>-<preset>: grids, report.md, model card model.toml.
             Fashion-MNIST iCT takes ~50 min on 2 cores; `--preset toy` ~25 s.
    ct-ablation
             The CT -> iCT ablation on 2-D toy data (configs/ct/toy-{ct,ict}.toml):
             every rung, 3 seeds, exact distances; runs/ct-ablation/ablation.md.
             Ctrl-C saves a checkpoint; --resume continues. Extra `cm` flags after `--`.
    eval [--preset fmnist|smoke] [--config FILE] [--out DIR]
             Sample quality of the configured model cards (FID, KID,
             precision/recall, IS-like in the project's feature space)
             against NFE and time: runs/eval-<preset>/results.md, results.csv,
             fid_vs_nfe.png. Trains the feature network on first use.
    edit-grids [--run-dir DIR] [--out DIR]
             Every zero-shot editing grid of docs/sampling.md (inpainting with
             four masks, colorization, super-resolution x2 and x4, denoising,
             interpolation, SDEdit) from the coloured Fashion-MNIST iCT model
             (default runs/ict-cfmnist, made by `train-ct --preset cfmnist`)
             into docs/images (or --out).
    help     Print this help.

OPTIONS:
    --cuda   Use the CUDA libtorch (also: CM_RS_CUDA=1). Builds go to
             target/cuda so CPU and CUDA builds do not evict each other.

ENVIRONMENT:
    LIBTORCH        Use this libtorch 2.13.0 folder instead of installing one.
    CM_RS_CACHE     Cache folder (default $XDG_CACHE_HOME/cm-rs or ~/.cache/cm-rs).
    CM_RS_PYTHON    Python used to run pip (default python3).

Runs build the `cm` binary in release mode (`cargo run --release -p cm-cli`).
";

fn main() -> ExitCode {
    match run(env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("xtask error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Parsed command line: the command, `--cuda`, and what follows `--`.
#[derive(Debug, Default)]
struct Args {
    command: String,
    cuda: bool,
    resume: bool,
    preset: Option<String>,
    recipe: Option<String>,
    config: Option<String>,
    run_dir: Option<String>,
    out: Option<String>,
    passthrough: Vec<String>,
}

fn parse(args: Vec<String>) -> Result<Args, String> {
    let mut parsed = Args {
        cuda: env::var("CM_RS_CUDA").is_ok_and(|v| v == "1" || v == "true"),
        ..Args::default()
    };
    let mut command = None;
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| {
            iter.next()
                .filter(|v| !v.starts_with("--"))
                .ok_or_else(|| format!("`{name}` needs a value"))
        };
        match arg.as_str() {
            "--" => {
                parsed.passthrough.extend(iter.by_ref());
            }
            "--cuda" => parsed.cuda = true,
            "--resume" => parsed.resume = true,
            "--preset" => parsed.preset = Some(value("--preset")?),
            "--recipe" => parsed.recipe = Some(value("--recipe")?),
            "--config" => parsed.config = Some(value("--config")?),
            "--run-dir" => parsed.run_dir = Some(value("--run-dir")?),
            "--out" => parsed.out = Some(value("--out")?),
            "-h" | "--help" => command = Some("help".to_string()),
            flag if flag.starts_with('-') => {
                return Err(format!("unknown option `{flag}` (try `cargo xtask help`)"))
            }
            name if command.is_none() => command = Some(name.to_string()),
            extra => {
                return Err(format!(
                    "unexpected argument `{extra}`; pass cargo arguments after `--`"
                ))
            }
        }
    }
    parsed.command = command.unwrap_or_else(|| "help".into());
    Ok(parsed)
}

/// The teacher presets: `configs/teacher/<name>.toml`.
const TEACHER_PRESETS: &[&str] = &["fmnist", "toy", "cifar10"];

/// The distillation presets: `configs/cd/<name>.toml`.
const CD_PRESETS: &[&str] = &["fmnist", "smoke", "toy", "cifar10"];

/// The consistency-training presets: `configs/ct/<name>-<recipe>.toml`.
const CT_PRESETS: &[&str] = &["fmnist", "cfmnist", "toy", "cifar10"];

/// The consistency-training recipes.
const CT_RECIPES: &[&str] = &["ict", "ct"];

/// The preset named by `--preset` (default fmnist), checked against `presets`
/// unless `--config` is given.
fn preset<'a>(args: &'a Args, presets: &[&str]) -> Result<&'a str, String> {
    let preset = args.preset.as_deref().unwrap_or("fmnist");
    if args.config.is_none() && !presets.contains(&preset) {
        return Err(format!("unknown preset `{preset}`; presets: {presets:?}"));
    }
    Ok(preset)
}

/// The eval presets: `configs/eval/<name>.toml`.
const EVAL_PRESETS: &[&str] = &["fmnist", "smoke"];

/// `cm eval --config <config or configs/eval/<preset>.toml> --out <out or
/// runs/eval-<preset>> [--device cuda] <extra>`.
fn cm_eval_args(args: &Args) -> Result<Vec<String>, String> {
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
    let mut cm_args = cm_run_args(&with_out, "eval", "eval", "eval", EVAL_PRESETS)?;
    // cm_run_args names the output folder --run-dir; `cm eval` calls it --out.
    if let Some(flag) = cm_args.iter_mut().find(|a| *a == "--run-dir") {
        *flag = "--out".into();
    }
    Ok(cm_args)
}

/// The `cm` commands behind `cargo xtask edit-grids`: the model card in the
/// run folder, test images of coloured Fashion-MNIST, grids into `out`.
fn edit_grid_commands(args: &Args) -> Result<Vec<Vec<String>>, String> {
    if args.config.is_some() || args.resume || args.preset.is_some() {
        return Err("`edit-grids` takes --run-dir and --out only".into());
    }
    let run = args.run_dir.as_deref().unwrap_or("runs/ict-cfmnist");
    let out = args.out.as_deref().unwrap_or("docs/images");
    let card = format!("{run}/model.toml");
    let strokes = format!("{run}/strokes");
    let data = [
        "--data",
        "colored-fashion-mnist",
        "--count",
        "6",
        "--zoom",
        "3",
    ];
    let edit = |task: &str, name: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["edit", task, "--card", &card, "--out"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(format!("{out}/edit-{name}.png"));
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(args.passthrough.iter().cloned());
        v
    };
    let mut commands = vec![
        edit(
            "inpaint",
            "inpaint-box",
            &[&data[..], &["--mask", "box"]].concat(),
        ),
        edit(
            "inpaint",
            "inpaint-half",
            &[&data[..], &["--mask", "right"]].concat(),
        ),
        edit(
            "inpaint",
            "inpaint-strokes",
            &[&data[..], &["--mask", "strokes"]].concat(),
        ),
        edit(
            "inpaint",
            "inpaint-mask",
            &[
                &data[..],
                &["--mask-png", "docs/images/edit-mask-example.png"],
            ]
            .concat(),
        ),
        edit("colorize", "colorize", &data),
        edit(
            "super-res",
            "superres-x2",
            &[&data[..], &["--factor", "2"]].concat(),
        ),
        edit(
            "super-res",
            "superres-x4",
            &[&data[..], &["--factor", "4"]].concat(),
        ),
        edit(
            "denoise",
            "denoise",
            &[&data[..], &["--sigma", "0.5"]].concat(),
        ),
        edit("interpolate", "interpolate", &["--zoom", "3"]),
    ];
    commands.push(
        [
            "export-images",
            "--data",
            "colored-fashion-mnist",
            "--strokes",
            "--first",
            "100",
            "--count",
            "6",
            "--out",
            &strokes,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    let inputs: Vec<String> = (100..106)
        .flat_map(|i| {
            [
                "--input".to_string(),
                format!("{strokes}/strokes-colored-fashion-mnist-test-{i:05}.png"),
            ]
        })
        .collect();
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    commands.push(edit(
        "sdedit",
        "sdedit",
        &[&inputs[..], &["--tau", "2", "--zoom", "3"]].concat(),
    ));
    Ok(commands)
}

/// `cm <subcommand> --config <config or configs/<kind>/<preset>.toml> --run-dir
/// <run dir or runs/<prefix>-<preset>> [--resume] [--device cuda] <extra>`.
fn cm_run_args(
    args: &Args,
    subcommand: &str,
    kind: &str,
    prefix: &str,
    presets: &[&str],
) -> Result<Vec<String>, String> {
    let preset = preset(args, presets)?;
    cm_args_with(
        args,
        subcommand,
        format!("configs/{kind}/{preset}.toml"),
        format!("runs/{prefix}-{preset}"),
    )
}

/// `cm <subcommand> --config <--config or default_config> --run-dir <--run-dir
/// or default_run_dir> [--resume] [--device cuda] <extra>`.
fn cm_args_with(
    args: &Args,
    subcommand: &str,
    default_config: String,
    default_run_dir: String,
) -> Result<Vec<String>, String> {
    // `cargo run` starts in the workspace root: make the user's relative
    // paths absolute first.
    let from_cwd = |p: &str| {
        let path = PathBuf::from(p);
        if path.is_absolute() {
            p.to_string()
        } else {
            env::current_dir()
                .map(|d| d.join(&path))
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned()
        }
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

fn run(raw: Vec<String>) -> Result<ExitCode, String> {
    let args = parse(raw)?;
    let flavor = if args.cuda { Flavor::Cuda } else { Flavor::Cpu };
    match args.command.as_str() {
        "help" => {
            print!("{HELP}");
            Ok(ExitCode::SUCCESS)
        }
        "setup" => {
            let started = Instant::now();
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
            println!(
                "export LIBTORCH={}",
                shell_quote(&torch.dir.to_string_lossy())
            );
            if let Some(dir) = cuda_target_dir(&torch) {
                println!(
                    "export CARGO_TARGET_DIR={}",
                    shell_quote(&dir.to_string_lossy())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        "test" => {
            let torch = libtorch::ensure(flavor)?;
            let started = Instant::now();
            let mut code = cargo(&torch, &["test", "--all-targets"], &args.passthrough)?;
            if code.success() {
                code = cargo(&torch, &["test", "--doc"], &args.passthrough)?;
            }
            eprintln!(
                "xtask: test suite finished in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            Ok(exit(code))
        }
        "train-teacher" => {
            let torch = libtorch::ensure(flavor)?;
            let cm_args = cm_run_args(
                &args,
                "train-teacher",
                "teacher",
                "teacher",
                TEACHER_PRESETS,
            )?;
            Ok(exit(cargo_run_cm(&torch, &cm_args)?))
        }
        "train-cd" => {
            let torch = libtorch::ensure(flavor)?;
            let cm_args = cm_run_args(&args, "distill", "cd", "cd", CD_PRESETS)?;
            Ok(exit(cargo_run_cm(&torch, &cm_args)?))
        }
        "train-ct" => {
            let torch = libtorch::ensure(flavor)?;
            let cm_args = ct_args(&args)?;
            Ok(exit(cargo_run_cm(&torch, &cm_args)?))
        }
        "ct-ablation" => {
            let torch = libtorch::ensure(flavor)?;
            let mut cm_args = vec!["ct-ablation".to_string()];
            cm_args.extend(args.passthrough.iter().cloned());
            Ok(exit(cargo_run_cm(&torch, &cm_args)?))
        }
        "eval" => {
            let torch = libtorch::ensure(flavor)?;
            let cm_args = cm_eval_args(&args)?;
            Ok(exit(cargo_run_cm(&torch, &cm_args)?))
        }
        "edit-grids" => {
            let torch = libtorch::ensure(flavor)?;
            for cm_args in edit_grid_commands(&args)? {
                let code = cargo_run_cm(&torch, &cm_args)?;
                if !code.success() {
                    return Ok(exit(code));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        "bench" => {
            let torch = libtorch::ensure(flavor)?;
            let code = cargo(&torch, &["bench"], &args.passthrough)?;
            Ok(exit(code))
        }
        other => Err(format!("unknown command `{other}`\n\n{HELP}")),
    }
}

/// `cm train-ct` for `--preset P --recipe R`: `configs/ct/P-R.toml` into
/// `runs/R-P`.
fn ct_args(args: &Args) -> Result<Vec<String>, String> {
    let preset = preset(args, CT_PRESETS)?;
    let recipe = args.recipe.as_deref().unwrap_or("ict");
    if !CT_RECIPES.contains(&recipe) {
        return Err(format!(
            "unknown recipe `{recipe}`; recipes: {CT_RECIPES:?}"
        ));
    }
    cm_args_with(
        args,
        "train-ct",
        format!("configs/ct/{preset}-{recipe}.toml"),
        format!("runs/{recipe}-{preset}"),
    )
}

/// `cargo run --release -p cm-cli --bin cm -- <args>` with libtorch set up.
fn cargo_run_cm(torch: &Libtorch, cm_args: &[String]) -> Result<std::process::ExitStatus, String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "cm-cli",
            "--bin",
            "cm",
            "--",
        ])
        .args(cm_args)
        .env("LIBTORCH", &torch.dir)
        .env_remove("LIBTORCH_USE_PYTORCH");
    if let Some(dir) = cuda_target_dir(torch) {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    eprintln!("xtask: cm {}", cm_args.join(" "));
    cmd.status()
        .map_err(|e| format!("cannot run {}: {e}", PathBuf::from(cargo).display()))
}

/// True when the user picked packages with `-p` / `--package`; otherwise
/// xtask's cargo commands cover the whole workspace.
fn picks_package(passthrough: &[String]) -> bool {
    passthrough
        .iter()
        .any(|a| a == "-p" || a == "--package" || a.starts_with("--package="))
}

fn exit(status: std::process::ExitStatus) -> ExitCode {
    if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8)
    }
}

/// CUDA builds link a different libtorch: give them their own target folder
/// unless the user chose one.
fn cuda_target_dir(torch: &Libtorch) -> Option<PathBuf> {
    if torch.flavor != Flavor::Cuda || env::var_os("CARGO_TARGET_DIR").is_some() {
        return None;
    }
    Some(workspace_root().join("target").join("cuda"))
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs `cargo <args> [--workspace] <passthrough>` with `LIBTORCH` pointing
/// at `torch`. Binaries get an rpath to `torch/lib` from the crates' build
/// scripts, so no loader variable is set.
fn cargo(
    torch: &Libtorch,
    args: &[&str],
    passthrough: &[String],
) -> Result<std::process::ExitStatus, String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if !picks_package(passthrough) {
        args.push("--workspace".into());
    }
    args.extend(passthrough.iter().cloned());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .args(&args)
        .env("LIBTORCH", &torch.dir)
        // torch-sys prefers a Python torch when this is set; we want ours.
        .env_remove("LIBTORCH_USE_PYTORCH");
    if let Some(dir) = cuda_target_dir(torch) {
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

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_command_flags_and_passthrough() {
        let a = parse(strings(&["test", "--cuda", "--", "-p", "cm-core"])).unwrap();
        assert_eq!(a.command, "test");
        assert!(a.cuda);
        assert_eq!(a.passthrough, strings(&["-p", "cm-core"]));
        assert_eq!(parse(vec![]).unwrap().command, "help");
    }

    #[test]
    fn parses_run_options() {
        let a = parse(strings(&[
            "train-teacher",
            "--preset",
            "toy",
            "--resume",
            "--run-dir",
            "r",
        ]))
        .unwrap();
        assert_eq!(
            (a.preset.as_deref(), a.run_dir.as_deref(), a.resume),
            (Some("toy"), Some("r"), true)
        );
        assert!(parse(strings(&["train-teacher", "--preset"]))
            .unwrap_err()
            .contains("--preset"));
    }

    #[test]
    fn ct_presets_and_recipes_pick_config_and_run_folder() {
        let a = parse(strings(&["train-ct", "--preset", "toy", "--recipe", "ct"])).unwrap();
        let cm = ct_args(&a).unwrap();
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
        assert_eq!(ct_args(&a).unwrap()[2], "configs/ct/fmnist-ict.toml");
        for file in CT_PRESETS
            .iter()
            .flat_map(|p| CT_RECIPES.iter().map(move |r| format!("{p}-{r}.toml")))
        {
            assert!(
                workspace_root().join("configs/ct").join(&file).is_file(),
                "preset file {file} is missing"
            );
        }
        let a = parse(strings(&["train-ct", "--recipe", "lcm"])).unwrap();
        assert!(ct_args(&a).unwrap_err().contains("lcm"));
        let a = parse(strings(&["train-ct", "--preset", "imagenet"])).unwrap();
        assert!(ct_args(&a).unwrap_err().contains("imagenet"));
    }

    #[test]
    fn eval_maps_preset_and_out_to_cm_eval() {
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
            cm_eval_args(&a).unwrap(),
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
        let args = cm_eval_args(&b).unwrap();
        assert_eq!(
            &args[1..5],
            &strings(&["--config", "configs/eval/fmnist.toml", "--out", "/tmp/e"])[..]
        );
        assert!(cm_eval_args(&parse(strings(&["eval", "--resume"])).unwrap()).is_err());
        assert!(cm_eval_args(&parse(strings(&["eval", "--preset", "x"])).unwrap()).is_err());
    }

    #[test]
    fn edit_grids_run_every_task_on_the_run_folder() {
        let a = parse(strings(&[
            "edit-grids",
            "--run-dir",
            "runs/x",
            "--",
            "--threads",
            "1",
        ]))
        .unwrap();
        let cmds = edit_grid_commands(&a).unwrap();
        let tasks: Vec<&str> = cmds
            .iter()
            .map(|c| {
                if c[0] == "edit" {
                    c[1].as_str()
                } else {
                    c[0].as_str()
                }
            })
            .collect();
        assert_eq!(
            tasks,
            [
                "inpaint",
                "inpaint",
                "inpaint",
                "inpaint",
                "colorize",
                "super-res",
                "super-res",
                "denoise",
                "interpolate",
                "export-images",
                "sdedit"
            ]
        );
        for c in cmds.iter().filter(|c| c[0] == "edit") {
            let card = c.iter().position(|a| a == "--card").unwrap();
            assert_eq!(c[card + 1], "runs/x/model.toml");
            assert!(
                c.iter().any(|a| a.starts_with("docs/images/edit-")),
                "{c:?}"
            );
            assert_eq!(&c[c.len() - 2..], ["--threads", "1"]);
        }
        assert!(parse(strings(&["edit-grids", "--preset", "toy"]))
            .and_then(|a| edit_grid_commands(&a))
            .is_err());
    }

    #[test]
    fn rejects_unknown_flags_and_stray_arguments() {
        assert!(parse(strings(&["test", "--fast"]))
            .unwrap_err()
            .contains("--fast"));
        assert!(parse(strings(&["test", "cm-core"]))
            .unwrap_err()
            .contains("cm-core"));
    }

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
