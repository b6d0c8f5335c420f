//! `cm train-ct` (CT / iCT) and `cm ct-ablation` (the path from CT to iCT
//! one change at a time, measured on 2-D toy data with exact distances).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tch::{Device, Kind, Tensor};

use cm_data::{eight_gaussians_modes, Dataset, ToyKind};
use cm_eval::{energy_distance, mode_coverage, sliced_wasserstein};
use cm_report as report;
use cm_sample::ModelCard;
use cm_train::{ict_ablation, mix_seed, run_ct, CtRunConfig, Quiet};

use crate::progress::BarObserver;
use crate::{device, install_stop_handler, set_threads, RunArgs};

/// `cm train-ct`.
pub fn train_ct(args: &RunArgs) -> Result<()> {
    set_threads(args.threads)?;
    let config: CtRunConfig = cm_core::load_toml(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    let device = device(args.device)?;
    let stop = install_stop_handler()?;
    let mut observer = BarObserver::new("ct");
    eprintln!(
        "consistency training on {device:?} into {}",
        args.run_dir.display()
    );
    let out = run_ct(
        &config,
        &args.run_dir,
        args.resume,
        device,
        &stop,
        &mut observer,
    )
    .with_context(|| format!("consistency-training run in {}", args.run_dir.display()))?;
    observer.finish();
    match (&out.report, &out.card) {
        (Some(report), Some(card)) => eprintln!(
            "done: {} steps; report in {}, model card {}",
            out.train.step,
            report.display(),
            card.display()
        ),
        _ => eprintln!("stopped at step {}; resume with --resume", out.train.step),
    }
    Ok(())
}

/// Arguments of `cm ct-ablation`.
#[derive(Debug, clap::Args)]
pub struct AblationArgs {
    /// The CT config the ladder starts from (2-D toy data).
    #[arg(long, default_value = "configs/ct/toy-ct.toml")]
    ct: PathBuf,
    /// The iCT config it ends at (same data and [train]).
    #[arg(long, default_value = "configs/ct/toy-ict.toml")]
    ict: PathBuf,
    /// Output folder: one run folder per rung and seed, ablation.md, ablation.csv.
    #[arg(long, default_value = "runs/ct-ablation")]
    out: PathBuf,
    /// Training seeds per rung (the table shows mean and spread).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Samples drawn per model and held-out points compared against.
    #[arg(long, default_value_t = 4000)]
    samples: i64,
    /// libtorch intra-op threads (default: all cores).
    #[arg(long)]
    threads: Option<i32>,
}

/// Distances of one sample set to the held-out points.
struct Scores {
    sliced_w2: f64,
    energy: f64,
    modes: Option<usize>,
}

fn score(x: &Tensor, held_out: &Tensor, eight_gaussians: bool) -> Result<Scores> {
    let sliced_w2 = sliced_wasserstein(x, held_out, 128)
        .context("sliced Wasserstein needs two [N, 2] sets of the same size")?;
    let energy = energy_distance(x, held_out);
    let modes = eight_gaussians.then(|| {
        let centers = Tensor::from_slice(eight_gaussians_modes().as_flattened()).view([8, 2]);
        // A mode counts when 1% of the samples fall within 0.1 of it (about
        // 7 mode standard deviations).
        mode_coverage(x, &centers, 0.1, x.size()[0] / 100).0
    });
    Ok(Scores {
        sliced_w2,
        energy,
        modes,
    })
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// `cm ct-ablation`.
pub fn ct_ablation(args: &AblationArgs) -> Result<()> {
    set_threads(args.threads)?;
    if args.seeds == 0 || args.samples < 100 {
        bail!("--seeds must be at least 1 and --samples at least 100");
    }
    let load = |p: &Path| -> Result<CtRunConfig> {
        cm_core::load_toml(p).with_context(|| format!("loading {}", p.display()))
    };
    let (ct, ict) = (load(&args.ct)?, load(&args.ict)?);
    let rungs = ict_ablation(&ct, &ict).context("building the CT -> iCT ladder")?;
    let data = ct.data.load(None).context("loading the data")?;
    let Dataset::Points(points) = &data else {
        bail!(
            "{}: the ablation measures exact distances on 2-D toy data (kind = \"toy\"), not images",
            args.ct.display()
        );
    };
    let eight = points.kind == ToyKind::EightGaussians;
    let held_out = points.test.to_tensor();
    if held_out.size()[0] < args.samples {
        bail!(
            "--samples {} exceeds the {} held-out points (data.n_test)",
            args.samples,
            held_out.size()[0]
        );
    }
    let held_out = held_out.narrow(0, 0, args.samples);
    let reference = points.train.to_tensor().narrow(0, 0, args.samples);
    let data_scores = score(&reference, &held_out, eight)?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let bar = ProgressBar::new(rungs.len() as u64 * args.seeds);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta}) {msg}",
        )
        .expect("valid template"),
    );
    bar.set_prefix("ablation");
    let never = AtomicBool::new(false);
    // [rung][seed] -> (1-step, 2-step)
    let mut results: Vec<Vec<(Scores, Scores)>> = Vec::new();
    let mut csv = String::from("rung,name,seed,steps,sliced_w2,energy,modes\n");
    for (r, (name, config)) in rungs.iter().enumerate() {
        let mut per_seed = Vec::new();
        for s in 0..args.seeds {
            bar.set_message(format!("{name}, seed {s}"));
            let mut config = config.clone();
            config.train.seed = ct.train.seed + s;
            let dir = args.out.join(format!("rung{r}-seed{s}"));
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("clearing the old run {}", dir.display()))?;
            }
            let out = run_ct(&config, &dir, false, Device::Cpu, &never, &mut Quiet)
                .with_context(|| format!("rung {r} ({name}), seed {s}"))?;
            let card_path = out.card.context("the run did not finish")?;
            let card = ModelCard::load(&card_path)?;
            let model = card.load_model(Device::Cpu)?;
            tch::manual_seed(mix_seed(0xAB1A, s));
            let z = Tensor::randn([args.samples, 2], (Kind::Float, Device::Cpu));
            let one = card.sample(&model, &z, 1, None)?.x;
            let two = card.sample(&model, &z, 2, None)?.x;
            if s == 0 {
                report::write_samples(&one, &args.out.join(format!("rung{r}_1step.png")))?;
            }
            let pair = (
                score(&one, &held_out, eight)?,
                score(&two, &held_out, eight)?,
            );
            for (steps, sc) in [(1, &pair.0), (2, &pair.1)] {
                let _ = writeln!(
                    csv,
                    "{r},\"{name}\",{s},{steps},{:.6},{:.6},{}",
                    sc.sliced_w2,
                    sc.energy,
                    sc.modes.map(|m| m.to_string()).unwrap_or_default()
                );
            }
            per_seed.push(pair);
            bar.inc(1);
        }
        results.push(per_seed);
    }
    bar.finish();
    std::fs::write(args.out.join("ablation.csv"), &csv)
        .with_context(|| format!("writing {}", args.out.join("ablation.csv").display()))?;

    let mut md = String::new();
    let _ = writeln!(
        md,
        "| rung | change | 1-step sliced W2 | 2-step sliced W2 | 1-step energy | 2-step energy |{}",
        if eight { " 1-step modes |" } else { "" }
    );
    let _ = writeln!(
        md,
        "| ---: | --- | ---: | ---: | ---: | ---: |{}",
        if eight { " ---: |" } else { "" }
    );
    let _ = writeln!(
        md,
        "| | training data (a second sample) | {:.3} | | {:.4} | |{}",
        data_scores.sliced_w2,
        data_scores.energy,
        data_scores
            .modes
            .map(|m| format!(" {m}/8 |"))
            .unwrap_or_default()
    );
    for (r, ((name, _), per_seed)) in rungs.iter().zip(&results).enumerate() {
        let col = |f: &dyn Fn(&(Scores, Scores)) -> f64| {
            let (m, sd) = mean_sd(&per_seed.iter().map(f).collect::<Vec<_>>());
            format!("{m:.3} ± {sd:.3}")
        };
        let modes = if eight {
            let m: Vec<String> = per_seed
                .iter()
                .map(|p| p.0.modes.unwrap_or(0).to_string())
                .collect();
            format!(" {} |", m.join(", "))
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "| {r} | {name} | {} | {} | {} | {} |{modes}",
            col(&|p| p.0.sliced_w2),
            col(&|p| p.1.sliced_w2),
            col(&|p| p.0.energy),
            col(&|p| p.1.energy),
        );
    }
    let _ = writeln!(
        md,
        "\nMean ± standard deviation over {} training seeds; {} samples per model against {} held-out points. \
         2-step sampling uses tau = {}. Per-seed values: `ablation.csv`; 1-step scatter plots: `rungR_1step.png`.",
        args.seeds, args.samples, args.samples, ict.ct.two_step_tau
    );
    let path = args.out.join("ablation.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    print!("{md}");
    eprintln!("table in {}", path.display());
    Ok(())
}
