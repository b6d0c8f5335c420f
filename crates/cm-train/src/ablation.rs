//! The CT -> iCT ablation behind `cm ct-ablation` (iCT, Song & Dhariwal
//! 2023, Section 3): every rung of [`ict_ablation`] trained with [`run_ct`]
//! for several seeds on 2-D toy data, sampled with 1 and 2 steps (CM
//! Algorithm 1) and measured against held-out points; the table
//! `ablation.md` (mean ± standard deviation over seeds) and the per-seed
//! values `ablation.csv`.
//!
//! The distances come from the caller (a closure): cm-train does not depend
//! on cm-eval, whose exact 2-D metrics the `cm` binary passes in.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use tch::{Device, Kind, Tensor};

use cm_core::{Conditioning, CoreError};
use cm_data::{Dataset, ToyKind};
use cm_sample::ModelCard;

use crate::ct_pipeline::{ict_ablation, run_ct, CtRunConfig};
use crate::error::{Result, TrainError};
use crate::observer::Quiet;
use crate::trainer::mix_seed;
use cm_report as report;

/// Most training seeds per rung.
pub const MAX_SEEDS: u64 = 100;
/// Fewest samples per model (and held-out points compared against).
pub const MIN_SAMPLES: usize = 100;
/// Most samples per model: the energy distance compares all pairs, so
/// memory grows as `N^2` (10,000 points: 0.8 GB per distance matrix).
pub const MAX_SAMPLES: usize = 10_000;

/// Settings of [`run_ablation`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AblationOptions {
    /// Training seeds per rung (1..=[`MAX_SEEDS`]): seed `s` trains with
    /// `train.seed + s`.
    pub seeds: u64,
    /// Samples drawn per model and held-out points compared against
    /// ([`MIN_SAMPLES`]..=[`MAX_SAMPLES`], at most `data.n_test`).
    pub samples: usize,
    /// Where to train and sample.
    pub device: Device,
}

impl Default for AblationOptions {
    /// 3 seeds, 4,000 samples, CPU.
    fn default() -> Self {
        AblationOptions {
            seeds: 3,
            samples: 4000,
            device: Device::Cpu,
        }
    }
}

impl AblationOptions {
    /// Checks the sizes against the documented limits.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_SEEDS).contains(&self.seeds) {
            return Err(
                CoreError::invalid("seeds", self.seeds, format!("1 to {MAX_SEEDS}")).into(),
            );
        }
        if !(MIN_SAMPLES..=MAX_SAMPLES).contains(&self.samples) {
            return Err(CoreError::invalid(
                "samples",
                self.samples,
                format!("{MIN_SAMPLES} to {MAX_SAMPLES}"),
            )
            .into());
        }
        Ok(())
    }
}

/// Distances of one sample set to the held-out points (lower is better).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PointScores {
    /// Sliced 2-Wasserstein distance.
    pub sliced_w2: f64,
    /// Energy distance.
    pub energy: f64,
    /// Modes covered and modes in all, for mixtures with known centres.
    pub modes: Option<(usize, usize)>,
}

/// 1-step and 2-step scores of one trained model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunScores {
    /// 1-step sampling.
    pub one_step: PointScores,
    /// 2-step sampling at the config's `two_step_tau`.
    pub two_step: PointScores,
}

/// The caller's metric: `(samples [N, 2], held-out points [N, 2], the toy
/// distribution) -> scores`.
pub type PointMetric<'a, E> = dyn FnMut(&Tensor, &Tensor, ToyKind) -> Result<PointScores, E> + 'a;

/// Receives the ablation's progress; every method has a no-op default.
pub trait AblationObserver {
    /// `runs` training runs (rungs x seeds) are about to start.
    fn on_start(&mut self, _runs: u64) {}
    /// Seed `seed` (0-based) of rung `rung` (`name`) starts training.
    fn on_run(&mut self, _rung: usize, _name: &str, _seed: u64) {}
    /// That run is trained, sampled and measured.
    fn on_run_done(&mut self, _rung: usize, _seed: u64, _scores: &RunScores) {}
}

impl AblationObserver for Quiet {}

/// What [`run_ablation`] leaves (beside the run folders and scatter plots).
#[derive(Clone, Debug, PartialEq)]
pub struct AblationOutcome {
    /// Rung names, in order.
    pub rungs: Vec<String>,
    /// `[rung][seed]` scores.
    pub scores: Vec<Vec<RunScores>>,
    /// Training points against the held-out ones: the floor at this N.
    pub data: PointScores,
    /// The table (also in `ablation.md`).
    pub markdown: String,
    /// `ablation.md`.
    pub table: PathBuf,
    /// `ablation.csv`.
    pub csv: PathBuf,
}

/// Runs the ablation from `ct` to `ict` into `out`: per rung `r` and seed
/// `s` a run folder `rung{r}-seed{s}` (an old one is removed first), the
/// 1-step scatter plot of seed 0 `rung{r}_1step.png`, then `ablation.csv`
/// and `ablation.md`. `metric` measures `options.samples` samples (latents
/// seeded per seed) against as many held-out points.
pub fn run_ablation<E: From<TrainError>>(
    ct: &CtRunConfig,
    ict: &CtRunConfig,
    out: &Path,
    options: &AblationOptions,
    metric: &mut PointMetric<'_, E>,
    observer: &mut dyn AblationObserver,
) -> Result<AblationOutcome, E> {
    options.validate()?;
    let rungs = ict_ablation(ct, ict)?;
    let data = ct
        .data
        .load(None)
        .map_err(|e| TrainError::Batch(e.to_string()))?;
    let Dataset::Points(points) = &data else {
        return Err(TrainError::from(CoreError::invalid(
            "data.kind",
            "an image data set",
            "2-D toy data (kind = \"toy\"): the ablation measures exact distances",
        ))
        .into());
    };
    let n = options.samples as i64;
    let held_out = points.test.to_tensor();
    let reference = points.train.to_tensor();
    let have = held_out.size()[0].min(reference.size()[0]);
    if have < n {
        return Err(TrainError::from(CoreError::invalid(
            "samples",
            n,
            format!("at most the {have} held-out points (data.n_test)"),
        ))
        .into());
    }
    let held_out = held_out.narrow(0, 0, n);
    let reference = reference.narrow(0, 0, n);
    let kind = points.kind;
    let data_scores = metric(&reference, &held_out, kind)?;

    std::fs::create_dir_all(out).map_err(TrainError::io("cannot create", out))?;
    observer.on_start(rungs.len() as u64 * options.seeds);
    let mut scores: Vec<Vec<RunScores>> = Vec::new();
    let mut csv = String::from("rung,name,seed,steps,sliced_w2,energy,modes\n");
    for (r, (name, config)) in rungs.iter().enumerate() {
        let mut per_seed = Vec::new();
        for s in 0..options.seeds {
            observer.on_run(r, name, s);
            let mut config = config.clone();
            config.train.seed = ct.train.seed.wrapping_add(s);
            let dir = out.join(format!("rung{r}-seed{s}"));
            let (one, two) =
                train_and_sample(&config, &dir, s, n, options.device).map_err(|source| {
                    TrainError::AblationRun {
                        rung: r,
                        name: name.clone(),
                        seed: s,
                        source: Box::new(source),
                    }
                })?;
            if s == 0 {
                report::write_samples(&one, &out.join(format!("rung{r}_1step.png")))
                    .map_err(TrainError::from)?;
            }
            let run = RunScores {
                one_step: metric(&one, &held_out, kind)?,
                two_step: metric(&two, &held_out, kind)?,
            };
            for (steps, sc) in [(1, &run.one_step), (2, &run.two_step)] {
                let _ = writeln!(
                    csv,
                    "{r},\"{name}\",{s},{steps},{:.6},{:.6},{}",
                    sc.sliced_w2,
                    sc.energy,
                    sc.modes.map(|m| m.0.to_string()).unwrap_or_default()
                );
            }
            observer.on_run_done(r, s, &run);
            per_seed.push(run);
        }
        scores.push(per_seed);
    }
    let csv_path = out.join("ablation.csv");
    std::fs::write(&csv_path, &csv).map_err(TrainError::io("cannot write", &csv_path))?;
    let names: Vec<String> = rungs.into_iter().map(|(name, _)| name).collect();
    let markdown = markdown_table(&names, &scores, &data_scores, options, ict.ct.two_step_tau);
    let table = out.join("ablation.md");
    std::fs::write(&table, &markdown).map_err(TrainError::io("cannot write", &table))?;
    Ok(AblationOutcome {
        rungs: names,
        scores,
        data: data_scores,
        markdown,
        table,
        csv: csv_path,
    })
}

/// Trains one rung's config into `dir` (cleared first) and returns its
/// 1-step and 2-step samples from `n` latents seeded by the seed index.
fn train_and_sample(
    config: &CtRunConfig,
    dir: &Path,
    seed_index: u64,
    n: i64,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(TrainError::io("cannot clear the old run", dir))?;
    }
    let never = AtomicBool::new(false);
    let out = run_ct(config, dir, false, device, &never, &mut Quiet)?;
    let card_path = out.card.ok_or_else(|| TrainError::RunFolder {
        path: dir.to_path_buf(),
        reason: "the run did not finish".into(),
    })?;
    let card = ModelCard::load(&card_path)?;
    let model = card.load_model(device)?;
    tch::manual_seed(mix_seed(0xAB1A, seed_index));
    let z = Tensor::randn([n, 2], (Kind::Float, device));
    let one = card
        .sample(&model, &z, 1, Conditioning::none())?
        .x
        .to_device(Device::Cpu);
    let two = card
        .sample(&model, &z, 2, Conditioning::none())?
        .x
        .to_device(Device::Cpu);
    Ok((one, two))
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// The markdown table of `ablation.md`: a row for the training data, then
/// per rung the mean ± standard deviation over seeds of the 1- and 2-step
/// sliced W2 and energy distances, and the per-seed modes covered when the
/// metric counts modes.
pub fn markdown_table(
    rungs: &[String],
    scores: &[Vec<RunScores>],
    data: &PointScores,
    options: &AblationOptions,
    two_step_tau: f64,
) -> String {
    let modes_col = data.modes.is_some();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| rung | change | 1-step sliced W2 | 2-step sliced W2 | 1-step energy | 2-step energy |{}",
        if modes_col { " 1-step modes |" } else { "" }
    );
    let _ = writeln!(
        md,
        "| ---: | --- | ---: | ---: | ---: | ---: |{}",
        if modes_col { " ---: |" } else { "" }
    );
    let _ = writeln!(
        md,
        "| | training data (a second sample) | {:.3} | | {:.4} | |{}",
        data.sliced_w2,
        data.energy,
        data.modes
            .map(|(m, of)| format!(" {m}/{of} |"))
            .unwrap_or_default()
    );
    for (r, (name, per_seed)) in rungs.iter().zip(scores).enumerate() {
        let col = |f: &dyn Fn(&RunScores) -> f64| {
            let (m, sd) = mean_sd(&per_seed.iter().map(f).collect::<Vec<_>>());
            format!("{m:.3} ± {sd:.3}")
        };
        let modes = if modes_col {
            let m: Vec<String> = per_seed
                .iter()
                .map(|p| p.one_step.modes.map_or(0, |m| m.0).to_string())
                .collect();
            format!(" {} |", m.join(", "))
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "| {r} | {name} | {} | {} | {} | {} |{modes}",
            col(&|p| p.one_step.sliced_w2),
            col(&|p| p.two_step.sliced_w2),
            col(&|p| p.one_step.energy),
            col(&|p| p.two_step.energy),
        );
    }
    let _ = writeln!(
        md,
        "\nMean ± standard deviation over {} training seeds; {} samples per model against {} held-out points. \
         2-step sampling uses tau = {}. Per-seed values: `ablation.csv`; 1-step scatter plots: `rungR_1step.png`.",
        options.seeds, options.samples, options.samples, two_step_tau
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(w: f64, modes: Option<(usize, usize)>) -> PointScores {
        PointScores {
            sliced_w2: w,
            energy: w / 10.0,
            modes,
        }
    }

    #[test]
    fn options_are_bounded() {
        let ok = AblationOptions::default();
        assert!(ok.validate().is_ok());
        for bad in [
            AblationOptions { seeds: 0, ..ok },
            AblationOptions {
                seeds: MAX_SEEDS + 1,
                ..ok
            },
            AblationOptions {
                seeds: u64::MAX,
                ..ok
            },
            AblationOptions {
                samples: MIN_SAMPLES - 1,
                ..ok
            },
            AblationOptions {
                samples: MAX_SAMPLES + 1,
                ..ok
            },
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains("seeds") || e.contains("samples"), "{e}");
        }
    }

    #[test]
    fn table_has_mean_and_spread_and_modes() {
        let run = |w: f64, m: usize| RunScores {
            one_step: scores(w, Some((m, 8))),
            two_step: scores(w / 2.0, Some((m, 8))),
        };
        let md = markdown_table(
            &["CT".into()],
            &[vec![run(1.0, 8), run(3.0, 7)]],
            &scores(0.01, Some((8, 8))),
            &AblationOptions {
                seeds: 2,
                samples: 100,
                device: Device::Cpu,
            },
            0.821,
        );
        let lines: Vec<&str> = md.lines().collect();
        assert!(lines[0].ends_with(" 1-step modes |"), "{md}");
        assert_eq!(
            lines[2],
            "| | training data (a second sample) | 0.010 | | 0.0010 | | 8/8 |"
        );
        // mean 2, sample standard deviation sqrt(2).
        assert_eq!(
            lines[3],
            "| 0 | CT | 2.000 ± 1.414 | 1.000 ± 0.707 | 0.200 ± 0.141 | 0.100 ± 0.071 | 8, 7 |"
        );
        assert!(md.contains("over 2 training seeds; 100 samples"), "{md}");
        let plain = markdown_table(
            &["CT".into()],
            &[vec![RunScores {
                one_step: scores(1.0, None),
                two_step: scores(1.0, None),
            }]],
            &scores(0.01, None),
            &AblationOptions::default(),
            0.821,
        );
        assert!(!plain.contains("modes"), "{plain}");
    }
}
