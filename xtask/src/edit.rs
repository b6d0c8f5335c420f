//! `cargo xtask edit-grids`: every zero-shot editing grid of
//! docs/sampling.md, as a list of `cm` commands run in order.

use std::process::ExitCode;

use crate::args::Args;
use crate::libtorch::{self, Flavor};
use crate::process::{cargo_run_cm, exit};
use crate::workspace;

/// The commands of this group.
pub const COMMANDS: &[&str] = &["edit-grids"];

/// Runs every `cm` command of [`edit_grid_commands`], stopping at the first
/// failure.
pub fn run(args: &Args, flavor: Flavor) -> Result<ExitCode, String> {
    let root = workspace::root()?;
    let commands = edit_grid_commands(args)?;
    let torch = libtorch::ensure(flavor)?;
    for cm_args in commands {
        let code = cargo_run_cm(&root, &torch, &cm_args)?;
        if !code.success() {
            return Ok(exit(code));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `cm` commands behind `cargo xtask edit-grids`: the model card in the
/// run folder, test images of coloured Fashion-MNIST, grids into `out`.
pub fn edit_grid_commands(args: &Args) -> Result<Vec<Vec<String>>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{parse, strings};

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
}
