//! `cm train-ct` (CT / iCT) and `cm ct-ablation` (the path from CT to iCT
//! one change at a time, measured on 2-D toy data with exact distances).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tch::{Device, Tensor};

use cm_data::{eight_gaussians_modes, ToyKind};
use cm_eval::{energy_distance, mode_coverage, sliced_wasserstein};
use cm_train::{
    run_ablation, run_ct, AblationObserver, AblationOptions, CtRunConfig, PointScores, RunScores,
};

use crate::{device, install_stop_handler, observe, set_threads, Interrupted, RunArgs};

/// `cm train-ct`.
pub fn train_ct(args: &RunArgs) -> Result<()> {
    set_threads(args.threads)?;
    let config: CtRunConfig = cm_core::load_toml(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    let device = device(args.device)?;
    let stop = install_stop_handler()?;
    let device_name = crate::device_name(device);
    say!(
        "consistency training on {device_name} into {}",
        args.run_dir.display()
    );
    let out = observe(args, "ct", |observer| {
        run_ct(&config, &args.run_dir, args.resume, device, &stop, observer)
            .with_context(|| format!("consistency-training run in {}", args.run_dir.display()))
    })?;
    match (&out.report, &out.card) {
        (Some(report), Some(card)) => say!(
            "done: {} steps; report in {}, model card {}",
            out.train.step,
            report.display(),
            card.display()
        ),
        _ => {
            return Err(Interrupted {
                step: out.train.step,
            }
            .into())
        }
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
    /// Training seeds per rung, 1 to 100 (the table shows mean and spread).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Samples drawn per model and held-out points compared against, 100 to
    /// 10000 (at most the data's n_test).
    #[arg(long, default_value_t = 4000)]
    samples: usize,
    /// libtorch intra-op threads: `auto` (one per core available to this
    /// process) or a count.
    #[arg(long, default_value = "auto")]
    threads: cm_runtime::Threads,
}

/// The exact 2-D distances of the table (cm-eval): sliced W2 over 128
/// directions, the energy distance, and for 8 Gaussians the modes with 1% of
/// the samples within 0.1 (about 7 mode standard deviations).
fn toy_scores(x: &Tensor, held_out: &Tensor, kind: ToyKind) -> Result<PointScores> {
    let sliced_w2 = sliced_wasserstein(x, held_out, 128)
        .context("sliced Wasserstein needs two [N, 2] sets of the same size")?;
    let energy = energy_distance(x, held_out);
    let modes = (kind == ToyKind::EightGaussians).then(|| {
        let centers = Tensor::from_slice(eight_gaussians_modes().as_flattened()).view([8, 2]);
        (mode_coverage(x, &centers, 0.1, x.size()[0] / 100).0, 8)
    });
    Ok(PointScores {
        sliced_w2,
        energy,
        modes,
    })
}

/// The ablation's bar: one unit per training run.
struct AblationBar(Option<ProgressBar>);

impl AblationObserver for AblationBar {
    fn on_start(&mut self, runs: u64) {
        let bar = ProgressBar::new(runs);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta}) {msg}",
            )
            .expect("valid template"),
        );
        bar.set_prefix("ablation");
        self.0 = Some(bar);
    }

    fn on_run(&mut self, _rung: usize, name: &str, seed: u64) {
        if let Some(bar) = &self.0 {
            bar.set_message(format!("{name}, seed {seed}"));
        }
    }

    fn on_run_done(&mut self, _rung: usize, _seed: u64, _scores: &RunScores) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }
}

/// `cm ct-ablation`.
pub fn ct_ablation(args: &AblationArgs) -> Result<()> {
    set_threads(args.threads)?;
    let options = AblationOptions {
        seeds: args.seeds,
        samples: args.samples,
        device: Device::Cpu,
    };
    options.validate().context("--seeds / --samples")?;
    let load = |p: &Path| -> Result<CtRunConfig> {
        cm_core::load_toml(p).with_context(|| format!("loading {}", p.display()))
    };
    let (ct, ict) = (load(&args.ct)?, load(&args.ict)?);
    let mut bar = AblationBar(None);
    let out =
        run_ablation::<anyhow::Error>(&ct, &ict, &args.out, &options, &mut toy_scores, &mut bar)
            .with_context(|| {
                format!(
                    "the CT -> iCT ablation from {} to {}",
                    args.ct.display(),
                    args.ict.display()
                )
            })?;
    if let Some(bar) = bar.0.take() {
        bar.finish();
    }
    print!("{}", out.markdown);
    eprintln!("table in {}", out.table.display());
    Ok(())
}
