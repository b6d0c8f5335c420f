//! `cargo xtask bench-scale`: images/s of the preset's EDM teacher step and
//! CD step for 1 process x 1 thread, 1 process x 2 threads and 2 MPI
//! processes x 1 thread, the gradient all-reduce's share of the step, the
//! gradient bytes per step, and a model of scaling to 8 and 64 ranks at 10
//! and 100 Gb/s (docs/scale.md). Each row is a short fresh run (default 40
//! steps, the first 10 not timed), run one after another: time it on an
//! otherwise idle machine.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, ExitCode};

use crate::args::Args;
use crate::libtorch::{self, Flavor};
use crate::presets::{self, DEFAULT_PRESET};
use crate::workspace;

/// The commands of this group.
pub const COMMANDS: &[&str] = &["bench-scale"];

/// Steps per row, and the first ones left out of the rate (warm-up).
const STEPS: u64 = 40;
const WARMUP: u64 = 10;

/// `(processes, threads per process)` of the rows.
const LAYOUTS: &[(usize, usize)] = &[(1, 1), (1, 2), (2, 1)];

/// What one row measured.
struct Row {
    kind: &'static str,
    procs: usize,
    threads: usize,
    images_per_s: f64,
    step_s: f64,
    allreduce_share: Option<f64>,
    gradient_bytes: u64,
}

/// Runs `cargo xtask bench-scale`.
pub fn run(args: &Args, flavor: Flavor) -> Result<ExitCode, String> {
    let root = workspace::root()?;
    let preset = args.preset.as_deref().unwrap_or(DEFAULT_PRESET);
    let teacher_config = presets::config_path(&root, "teacher", preset)?;
    let cd_config = presets::config_path(&root, "cd", preset)?;
    let out = root.join(
        args.out
            .clone()
            .unwrap_or_else(|| format!("runs/scale-{preset}")),
    );
    fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    // The CD rows reuse the preset's finished teacher; without one the
    // first CD row would train it inside a timed run.
    let teachers = root.join("runs/teachers");
    let has_teacher = fs::read_dir(&teachers)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("model.toml").is_file());
    if !has_teacher {
        return Err(format!(
            "no finished teacher in {}: run `cargo xtask train-teacher --preset {preset}` (or train-cd) first",
            teachers.display()
        ));
    }
    let torch = libtorch::ensure(flavor)?;
    let cm = crate::mpi::build_cm(&root, &torch)?;
    let overrides = format!(
        "[train]\nsteps = {STEPS}\ncheckpoint_every = {STEPS}\nsample_every = 0\nsample_count = 16\nlog_every = 5\n"
    );
    let mut rows = Vec::new();
    for (kind, subcommand, config) in [
        ("EDM teacher", "train-teacher", &teacher_config),
        ("CD", "distill", &cd_config),
    ] {
        let file = out.join(format!("{subcommand}.toml"));
        let text = format!(
            "include = {:?}\n{overrides}",
            root.join(config).display().to_string()
        );
        fs::write(&file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        for &(procs, threads) in LAYOUTS {
            let run_dir = out.join(format!("{subcommand}-{procs}x{threads}"));
            let _ = fs::remove_dir_all(&run_dir);
            let mut cm_args: Vec<String> = [
                subcommand,
                "--config",
                &file.display().to_string(),
                "--run-dir",
                &run_dir.display().to_string(),
                "--threads",
                &threads.to_string(),
                "--device",
                "cpu",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if subcommand == "distill" {
                // The preset's finished teacher (train it first with
                // `cargo xtask train-teacher`), not a new one per row.
                cm_args.extend([
                    "--teachers".into(),
                    root.join("runs/teachers").display().to_string(),
                ]);
            }
            let mut cmd = if procs == 1 {
                Command::new(&cm)
            } else {
                let mut c = Command::new("mpirun");
                c.args(crate::mpi::mpirun_flags(procs, None)).arg(&cm);
                c
            };
            eprintln!("xtask: bench-scale: {kind}, {procs} process(es) x {threads} thread(s)");
            let output = cmd
                .current_dir(&root)
                .args(&cm_args)
                .output()
                .map_err(|e| format!("cannot run cm: {e}"))?;
            let log = String::from_utf8_lossy(&output.stderr).into_owned();
            if !output.status.success() {
                return Err(format!("{kind} on {procs}x{threads} failed:\n{log}"));
            }
            let batch = global_batch(&log)
                .or_else(|| train_batch(&run_dir.join("config.toml")))
                .ok_or_else(|| format!("{}: no [train] batch_size", run_dir.display()))?;
            let (images_per_s, step_s) = rate(&run_dir.join("metrics.csv"), batch)?;
            let checkpoint =
                run_dir.join(format!("checkpoints/step_{STEPS:07}/online.safetensors"));
            rows.push(Row {
                kind,
                procs,
                threads,
                images_per_s,
                step_s,
                allreduce_share: allreduce_share(&log),
                gradient_bytes: safetensors_data_bytes(&checkpoint)?,
            });
        }
    }
    let report = report(&rows, preset);
    print!("{report}");
    let path = out.join("scale.md");
    fs::write(&path, &report).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("xtask: written to {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// The global batch from the run's "network ..." / "global batch N" lines.
fn global_batch(log: &str) -> Option<u64> {
    let at = log.find("global batch ")?;
    log[at + 13..].split_whitespace().next()?.parse().ok()
}

/// `batch_size` of the `[train]` table of a run's resolved config.
fn train_batch(config: &Path) -> Option<u64> {
    let text = fs::read_to_string(config).ok()?;
    let at = text.find("\n[train]\n")?;
    let section = &text[at + 9..];
    let section = &section[..section.find("\n[").unwrap_or(section.len())];
    section
        .lines()
        .find_map(|l| l.strip_prefix("batch_size = ")?.trim().parse().ok())
}

/// Images/s and seconds per step between step `WARMUP` and the last step of
/// a metrics.csv (`step,loss,lr,grad_norm,elapsed_s,steps_per_s`).
fn rate(metrics: &Path, batch: u64) -> Result<(f64, f64), String> {
    let text = fs::read_to_string(metrics).map_err(|e| format!("{}: {e}", metrics.display()))?;
    let rows: Vec<(u64, f64)> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f.first()?.parse().ok()?, f.get(4)?.parse().ok()?))
        })
        .collect();
    let start = rows.iter().find(|r| r.0 == WARMUP);
    let end = rows.last();
    match (start, end) {
        (Some(a), Some(b)) if b.0 > a.0 && b.1 > a.1 => {
            let step_s = (b.1 - a.1) / (b.0 - a.0) as f64;
            Ok((batch as f64 / step_s, step_s))
        }
        _ => Err(format!("{}: too few steps to time", metrics.display())),
    }
}

/// The all-reduce's share of the session from cm's closing line
/// "gradient all-reduce took X s of Y s (Z%)".
fn allreduce_share(log: &str) -> Option<f64> {
    let at = log.find("gradient all-reduce took ")?;
    let line = log[at..].lines().next()?;
    let pct = line.rsplit('(').next()?.trim_end_matches([')', '%']);
    pct.parse::<f64>().ok().map(|p| p / 100.0)
}

/// The tensor bytes of a safetensors file (its size minus the 8-byte
/// length and the JSON header): the gradient bytes an all-reduce moves.
fn safetensors_data_bytes(path: &Path) -> Result<u64, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let header: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{}: not a safetensors file", path.display()))?;
    let n = u64::from_le_bytes(header);
    (bytes.len() as u64)
        .checked_sub(n.saturating_add(8))
        .ok_or_else(|| format!("{}: header longer than the file", path.display()))
}

/// Seconds of a ring all-reduce of `bytes` over `ranks` ranks at `gbit`
/// Gb/s with `latency` seconds per message: `2 (R-1)/R` of the bytes cross
/// each link, in `2 (R-1)` messages.
pub fn ring_allreduce_s(bytes: f64, ranks: f64, gbit: f64, latency: f64) -> f64 {
    2.0 * (ranks - 1.0) / ranks * bytes / (gbit * 1e9 / 8.0) + 2.0 * (ranks - 1.0) * latency
}

fn report(rows: &[Row], preset: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## `cargo xtask bench-scale --preset {preset}`\n");
    let _ = writeln!(
        md,
        "{STEPS} steps per row, steps {WARMUP}-{STEPS} timed; global batch as in the preset.\n"
    );
    let _ = writeln!(
        md,
        "| step | layout | images/s | s/step | all-reduce share | gradient MB |"
    );
    let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: | ---: |");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} process{} x {} thread{} | {:.1} | {:.3} | {} | {:.2} |",
            r.kind,
            r.procs,
            if r.procs > 1 { "es" } else { "" },
            r.threads,
            if r.threads > 1 { "s" } else { "" },
            r.images_per_s,
            r.step_s,
            r.allreduce_share
                .map_or("-".into(), |s| format!("{:.1}%", 100.0 * s)),
            r.gradient_bytes as f64 / 1e6
        );
    }
    // Weak scaling: every rank keeps the measured one-process step (64
    // images per rank) and adds a ring all-reduce of the gradient.
    let _ = writeln!(
        md,
        "\nModel (weak scaling, one rank per machine, each with the measured 1 x 2 step; \
         ring all-reduce, 50 us per message at 10 Gb/s, 5 us at 100 Gb/s, no overlap with backward):\n"
    );
    let _ = writeln!(
        md,
        "| step | ranks | network | all-reduce ms | efficiency | images/s |"
    );
    let _ = writeln!(md, "| --- | ---: | --- | ---: | ---: | ---: |");
    for r in rows.iter().filter(|r| r.procs == 1 && r.threads == 2) {
        for ranks in [8.0, 64.0] {
            for (gbit, latency) in [(10.0, 50e-6), (100.0, 5e-6)] {
                let ar = ring_allreduce_s(r.gradient_bytes as f64, ranks, gbit, latency);
                let eff = r.step_s / (r.step_s + ar);
                let _ = writeln!(
                    md,
                    "| {} | {ranks} | {gbit} Gb/s | {:.2} | {:.1}% | {:.0} |",
                    r.kind,
                    ar * 1e3,
                    100.0 * eff,
                    ranks * r.images_per_s * eff
                );
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_model_sends_twice_the_bytes_as_ranks_grow() {
        // 1 GB at 8 Gb/s = 1 s per full copy; 2 ranks: 2 * 1/2 = 1 copy.
        assert!((ring_allreduce_s(1e9, 2.0, 8.0, 0.0) - 1.0).abs() < 1e-12);
        // Many ranks: approaches 2 copies.
        assert!((ring_allreduce_s(1e9, 1e6, 8.0, 0.0) - 2.0).abs() < 1e-5);
        assert!((ring_allreduce_s(0.0, 3.0, 8.0, 1e-3) - 4e-3).abs() < 1e-12);
    }

    #[test]
    fn log_lines_are_read_back() {
        let log = "teacher: data parallel: MPI, 2 ranks; global batch 64 = 2 ranks x 32 (2 shards of 32)\n\
                   teacher: data parallel: gradient all-reduce took 0.14 s of 0.44 s (32.8%)\n";
        assert_eq!(global_batch(log), Some(64));
        assert!((allreduce_share(log).unwrap() - 0.328).abs() < 1e-12);
        assert_eq!(allreduce_share("nothing"), None);
    }
}
