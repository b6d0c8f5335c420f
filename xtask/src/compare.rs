//! `cargo xtask compare`: the papers' comparison on one data set. Trains
//! (or, with `--resume`, reuses) every run the comparison needs, each the
//! preset's own pipeline command: `distill` (the teacher and CD), `train-pd`,
//! `train-ct` with the iCT and CT recipes, `train-ect`; a preset without a
//! config for one of them skips it. Then `cm eval` with `configs/eval/compare-<preset>.toml`
//! into `runs/compare-<preset>` (sample features cached there, so a second
//! call only samples what changed), and pastes the table and the
//! FID-against-NFE plot into `docs/results.md` where that file has a
//! `<!-- compare-<preset>:begin -->` ... `<!-- compare-<preset>:end -->`
//! block.

use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use crate::args::Args;
use crate::libtorch::{self, Flavor};
use crate::mpi::run_cm;
use crate::presets::{self, DEFAULT_PRESET};
use crate::process::{cargo_run_cm, exit};
use crate::workspace;

/// The commands of this group.
pub const COMMANDS: &[&str] = &["compare"];

/// The training runs of `preset`, in order: `(cm subcommand, config, run
/// folder)` for every pipeline whose preset file exists under `root`.
pub fn pipelines(root: &Path, preset: &str) -> Vec<(&'static str, String, String)> {
    [
        (
            "distill",
            format!("configs/cd/{preset}.toml"),
            format!("runs/cd-{preset}"),
        ),
        (
            "train-pd",
            format!("configs/pd/{preset}.toml"),
            format!("runs/pd-{preset}"),
        ),
        (
            "train-ct",
            format!("configs/ct/{preset}-ict.toml"),
            format!("runs/ict-{preset}"),
        ),
        (
            "train-ct",
            format!("configs/ct/{preset}-ct.toml"),
            format!("runs/ct-{preset}"),
        ),
        (
            "train-ect",
            format!("configs/ect/{preset}.toml"),
            format!("runs/ect-{preset}"),
        ),
    ]
    .into_iter()
    .filter(|(_, config, _)| root.join(config).is_file())
    .collect()
}

/// Runs `cargo xtask compare`.
pub fn run(args: &Args, flavor: Flavor) -> Result<ExitCode, String> {
    if args.config.is_some() || args.run_dir.is_some() || args.recipe.is_some() {
        return Err(
            "`compare` takes --preset, --out, --resume and --procs (its runs are the preset's)"
                .into(),
        );
    }
    let root = workspace::root()?;
    let preset = args.preset.as_deref().unwrap_or(DEFAULT_PRESET);
    let eval_config = presets::config_path(&root, "eval", &format!("compare-{preset}"))
        .map_err(|e| format!("{e} (compare presets are configs/eval/compare-<preset>.toml)"))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| format!("runs/compare-{preset}"));
    let torch = libtorch::ensure(flavor)?;
    let started = Instant::now();
    for (subcommand, config, run_dir) in pipelines(&root, preset) {
        let mut cm_args: Vec<String> = [subcommand, "--config", &config, "--run-dir", &run_dir]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // A finished run is reused as it is, an interrupted one continues.
        if args.resume || root.join(&run_dir).join("config.toml").is_file() {
            cm_args.push("--resume".into());
        }
        if args.cuda {
            cm_args.extend(["--device".into(), "cuda".into()]);
        }
        cm_args.extend(args.passthrough.iter().cloned());
        // With --procs, the training runs are data-parallel; `cm eval` is not.
        let status = run_cm(&root, &torch, args, &cm_args)?;
        if !status.success() {
            eprintln!("xtask: `cm {subcommand}` into {run_dir} failed; the comparison stops here");
            return Ok(exit(status));
        }
    }
    let mut cm_args: Vec<String> = ["eval", "--config", &eval_config, "--out", &out]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if args.cuda {
        cm_args.extend(["--device".into(), "cuda".into()]);
    }
    cm_args.extend(args.passthrough.iter().cloned());
    let status = cargo_run_cm(&root, &torch, &cm_args)?;
    if !status.success() {
        return Ok(exit(status));
    }
    let docs = root.join("docs/results.md");
    match paste_into_docs(&root, &docs, preset, &root.join(&out))? {
        true => eprintln!("xtask: table and plot pasted into {}", docs.display()),
        false => eprintln!(
            "xtask: {} has no `<!-- compare-{preset}:begin -->` block; the table is in {out}/results.md",
            docs.display()
        ),
    }
    eprintln!(
        "xtask: compare finished in {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(ExitCode::SUCCESS)
}

/// Replaces the `compare-<preset>` block of `docs` with `out`'s
/// `results_table.md` and a link to its plot, copied to
/// `docs/images/compare-<preset>-fid-vs-nfe.png`. `Ok(false)` when `docs`
/// has no such block.
pub fn paste_into_docs(root: &Path, docs: &Path, preset: &str, out: &Path) -> Result<bool, String> {
    let begin = format!("<!-- compare-{preset}:begin -->");
    let end = format!("<!-- compare-{preset}:end -->");
    let Ok(text) = fs::read_to_string(docs) else {
        return Ok(false);
    };
    let (Some(i), Some(j)) = (text.find(&begin), text.find(&end)) else {
        return Ok(false);
    };
    if j < i {
        return Err(format!(
            "{}: `{end}` comes before `{begin}`",
            docs.display()
        ));
    }
    let table_path = out.join("results_table.md");
    let table = fs::read_to_string(&table_path)
        .map_err(|e| format!("cannot read {}: {e}", table_path.display()))?;
    let image = format!("images/compare-{preset}-fid-vs-nfe.png");
    let plot = out.join("fid_vs_nfe.png");
    let mut block = format!("{begin}\n{table}");
    if plot.is_file() {
        let target = root.join("docs").join(&image);
        fs::copy(&plot, &target).map_err(|e| {
            format!(
                "cannot copy {} to {}: {e}",
                plot.display(),
                target.display()
            )
        })?;
        block.push_str(&format!("\n![FID against NFE, every method]({image})\n"));
    }
    let new = format!("{}{block}{}", &text[..i], &text[j..]);
    let tmp = docs.with_extension("md.tmp");
    fs::write(&tmp, new).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, docs).map_err(|e| format!("cannot replace {}: {e}", docs.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::temp_dir;

    #[test]
    fn pipelines_are_the_presets_that_exist() {
        let root = workspace::root().unwrap();
        let fmnist: Vec<_> = pipelines(&root, "fmnist")
            .into_iter()
            .map(|(cmd, _, dir)| format!("{cmd} {dir}"))
            .collect();
        assert_eq!(
            fmnist,
            [
                "distill runs/cd-fmnist",
                "train-pd runs/pd-fmnist",
                "train-ct runs/ict-fmnist",
                "train-ct runs/ct-fmnist",
                "train-ect runs/ect-fmnist"
            ]
        );
        let smoke: Vec<_> = pipelines(&root, "smoke").into_iter().map(|p| p.2).collect();
        assert_eq!(smoke, ["runs/cd-smoke", "runs/pd-smoke", "runs/ect-smoke"]);
        assert!(pipelines(&root, "nothing").is_empty());
    }

    #[test]
    fn the_table_replaces_only_its_block() {
        let dir = temp_dir("compare-docs");
        fs::create_dir_all(dir.join("docs/images")).unwrap();
        fs::create_dir_all(dir.join("out")).unwrap();
        let docs = dir.join("docs/results.md");
        fs::write(
            &docs,
            "# R\n\nbefore\n<!-- compare-p:begin -->\nold table\n<!-- compare-p:end -->\nafter\n",
        )
        .unwrap();
        fs::write(dir.join("out/results_table.md"), "| new |\n").unwrap();
        fs::write(dir.join("out/fid_vs_nfe.png"), b"png").unwrap();
        assert!(paste_into_docs(&dir, &docs, "p", &dir.join("out")).unwrap());
        let text = fs::read_to_string(&docs).unwrap();
        assert!(text.starts_with("# R\n\nbefore\n<!-- compare-p:begin -->\n| new |\n"));
        assert!(text.ends_with("<!-- compare-p:end -->\nafter\n"), "{text}");
        assert!(!text.contains("old table"));
        assert!(text.contains("images/compare-p-fid-vs-nfe.png"));
        assert!(dir.join("docs/images/compare-p-fid-vs-nfe.png").is_file());
        // Twice gives the same file; another preset's block is not touched.
        assert!(paste_into_docs(&dir, &docs, "p", &dir.join("out")).unwrap());
        assert_eq!(fs::read_to_string(&docs).unwrap(), text);
        assert!(!paste_into_docs(&dir, &docs, "q", &dir.join("out")).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }
}
