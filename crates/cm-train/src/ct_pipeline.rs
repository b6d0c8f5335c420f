//! The consistency-training pipeline behind `cargo xtask train-ct`: train a
//! consistency model from data alone with the CT recipe (CM Algorithm 3) or
//! the improved one (iCT, Song & Dhariwal 2023), then write 1-step and
//! 2-step grids from fixed noise, a `report.md` and the run's model card
//! (`model.toml`, read by `cm sample`, `cm edit` and `cm eval`).
//!
//! [`ict_ablation`] builds the path from a CT config to an iCT config one
//! change at a time, for the ablation table in docs/ct.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Device;

use cm_core::{
    ConsistencyRecipe, CoreError, CtAdaptiveSchedule, FixedSchedule, ScheduleConfig, Validate,
};
use cm_data::DataSource;
use cm_nets::{Model, NetConfig, Preconditioned};
use cm_sample::{consistency_sample, ModelCard, CARD_FILE};

use crate::ct::CtObjective;
use crate::error::{Result, TrainError};
use crate::teacher::{loader_for, write_run_config, LoaderOptions};
use crate::trainer::{
    eval_model, final_weights, fixed_latents, mix_seed, train, Observer, TrainConfig, TrainOutcome,
};
use cm_report as report;

/// The consistency-training objective and its sampling defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CtConfig {
    /// The recipe: CT or iCT, or any point between (every iCT change is a
    /// field). Defaults to iCT.
    pub recipe: ConsistencyRecipe,
    /// Intermediate time of 2-step sampling (CM Algorithm 1) for the report
    /// grids; stored in the model card as the default 2-step time.
    pub two_step_tau: f64,
}

impl Default for CtConfig {
    fn default() -> Self {
        CtConfig {
            recipe: ConsistencyRecipe::ict(),
            two_step_tau: 0.821,
        }
    }
}

impl CtConfig {
    /// Validates with a dotted-path prefix.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        self.recipe.validate_at(&format!("{prefix}recipe."))?;
        let c = self.recipe.consistency;
        if !(self.two_step_tau > c.sigma_min && self.two_step_tau < c.sigma_max) {
            return Err(CoreError::invalid(
                format!("{prefix}two_step_tau"),
                self.two_step_tau,
                format!(
                    "a time in (sigma_min, sigma_max) = ({}, {})",
                    c.sigma_min, c.sigma_max
                ),
            ));
        }
        Ok(())
    }
}

/// Everything a CT / iCT run needs. In TOML: `[data]`, `[loader]`, `[net]`,
/// `[train]`, `[ct]` (see `configs/ct/*.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtRunConfig {
    /// The data set.
    #[serde(default)]
    pub data: DataSource,
    /// Flip and padding.
    #[serde(default)]
    pub loader: LoaderOptions,
    /// The network (iCT's dropout and Fourier-embedding scale are set here).
    pub net: NetConfig,
    /// Loop settings (the evaluation EMAs are `train.ema_rates`; the target
    /// network's `mu(k)` comes from the recipe's schedule).
    #[serde(default)]
    pub train: TrainConfig,
    /// The objective.
    #[serde(default)]
    pub ct: CtConfig,
}

impl Validate for CtRunConfig {
    fn validate(&self) -> cm_core::Result<()> {
        self.net.validate()?;
        self.train.validate_at("train.")?;
        self.ct.validate_at("ct.")?;
        if self.loader.pad > 0 && self.net.sample_shape().len() != 3 {
            return Err(CoreError::invalid(
                "loader.pad",
                self.loader.pad,
                "0 for 2-D point data",
            ));
        }
        Ok(())
    }
}

/// What a CT run leaves.
#[derive(Debug)]
pub struct CtOutcome {
    /// The loop's outcome.
    pub train: TrainOutcome,
    /// `report.md`, if the run finished.
    pub report: Option<PathBuf>,
    /// The model card `model.toml`, if the run finished.
    pub card: Option<PathBuf>,
}

/// Runs (or with `resume`, continues) a CT / iCT run into `run_dir`: writes
/// the resolved config, trains, and unless stopped writes the 1-step and
/// 2-step grids of the first EMA, `report.md` and `model.toml`.
pub fn run_ct(
    config: &CtRunConfig,
    run_dir: &Path,
    resume: bool,
    device: Device,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<CtOutcome> {
    config.validate()?;
    write_run_config(run_dir, config, resume, |old, new| {
        old.train.steps = new.train.steps
    })?;
    observer.on_message("loading data");
    let data = config
        .data
        .load(None)
        .map_err(|e| TrainError::Batch(e.to_string()))?;
    let source = loader_for(&data, config.loader, &config.train, &config.net)?;
    tch::manual_seed(mix_seed(config.train.seed, u64::MAX));
    let model = Model::new(config.net.clone(), device)?;
    observer.on_message(&format!(
        "network: {:.2} M parameters, {:.1} MFLOPs per sample",
        model.num_params() as f64 / 1e6,
        model.flops_per_sample() as f64 / 1e6
    ));
    let mut objective = CtObjective::new(config.ct.recipe, &model)?;
    let started = Instant::now();
    let out = train(
        &mut objective,
        model,
        &source,
        &config.train,
        run_dir,
        resume,
        stop,
        observer,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    if out.stopped {
        return Ok(CtOutcome {
            train: out,
            report: None,
            card: None,
        });
    }
    let report = write_report(config, &out, run_dir, seconds)?;
    let card = run_dir.join(CARD_FILE);
    ModelCard::Consistency {
        weights: final_weights(&config.train),
        consistency: config.ct.recipe.consistency,
        timesteps: [("2".to_string(), vec![config.ct.two_step_tau])].into(),
    }
    .save(&card)?;
    Ok(CtOutcome {
        train: out,
        report: Some(report),
        card: Some(card),
    })
}

/// 1-step and 2-step samples of the evaluation network from the run's fixed
/// latents, and the markdown report.
fn write_report(
    config: &CtRunConfig,
    out: &TrainOutcome,
    run_dir: &Path,
    seconds: f64,
) -> Result<PathBuf> {
    let model = eval_model(&out.online, &out.emas);
    let c = config.ct.recipe.consistency;
    let f = Preconditioned::eval(model, c.parameterization());
    let latents = fixed_latents(model, config.train.sample_count, config.train.seed);
    let mut rows = Vec::new();
    for (label, file, taus) in [
        ("1 step", "samples_1step.png", vec![]),
        ("2 steps", "samples_2step.png", vec![config.ct.two_step_tau]),
    ] {
        tch::manual_seed(mix_seed(config.train.seed, 77));
        let t = Instant::now();
        let sampled = consistency_sample(&f, &latents, c.sigma_max, c.sigma_min, &taus, None)?;
        let secs = t.elapsed().as_secs_f64();
        report::write_samples(&sampled.x, &run_dir.join(file))?;
        rows.push((label, file, sampled.nfe, secs));
    }
    let recipe = &config.ct.recipe;
    let last = out.losses.last().map(|l| l.1).unwrap_or(f64::NAN);
    let mut md = String::new();
    let _ = writeln!(md, "# Consistency training run\n");
    let _ = writeln!(
        md,
        "- {} steps, batch {}, {:.1} min in this session, final loss {last:.5}",
        out.step,
        config.train.batch_size,
        seconds / 60.0
    );
    let _ = writeln!(
        md,
        "- recipe: schedule {:?}; pairs {:?}; weighting {:?}; metric {:?}; {:?}",
        recipe.schedule, recipe.noise, recipe.weighting, recipe.metric, recipe.consistency
    );
    let _ = writeln!(
        md,
        "- network: {} parameters; evaluation weights `{}`\n",
        model.num_params(),
        final_weights(&config.train).display()
    );
    let _ = writeln!(
        md,
        "| sampler | NFE | seconds for {} samples | samples |",
        config.train.sample_count
    );
    let _ = writeln!(md, "| --- | ---: | ---: | --- |");
    for (label, file, nfe, secs) in &rows {
        let _ = writeln!(md, "| {label} | {nfe} | {secs:.2} | ![{label}]({file}) |");
    }
    let _ = writeln!(
        md,
        "\nLoss curve: ![loss](loss.png). Metrics: `metrics.csv`. Config: `config.toml`. \
         Model card: `model.toml`."
    );
    let path = run_dir.join("report.md");
    std::fs::write(&path, md).map_err(TrainError::io("cannot write", &path))?;
    Ok(path)
}

/// The path from CT to iCT one change at a time (iCT, Section 3 and
/// Table 1's ablations): CT; then `mu = 0` (no EMA target); pseudo-Huber;
/// `1/(t_{n+1} - t_n)` weighting; lognormal pairs; the exponential
/// curriculum; and the network changes (Fourier embedding of small scale,
/// dropout; any other difference in `[net]` or `[ct]` too), which gives
/// exactly `ict`. Each entry is `(name,
/// config)`. `ct` and `ict` must agree on data, loader and training loop.
pub fn ict_ablation(ct: &CtRunConfig, ict: &CtRunConfig) -> Result<Vec<(String, CtRunConfig)>> {
    if ct.data != ict.data || ct.loader != ict.loader || ct.train != ict.train {
        return Err(TrainError::Core(CoreError::invalid(
            "data / loader / train",
            "different",
            "the same data, loader and [train] in the CT and iCT configs (the ablation changes only the recipe and network)",
        )));
    }
    if ct.net.sample_shape() != ict.net.sample_shape() {
        return Err(TrainError::Core(CoreError::invalid(
            "net",
            format!(
                "{:?} vs {:?}",
                ct.net.sample_shape(),
                ict.net.sample_shape()
            ),
            "networks for the same sample shape",
        )));
    }
    let mut rungs = vec![("CT (CM Alg. 3)".to_string(), ct.clone())];
    let mut next = |name: &str, change: &dyn Fn(&mut CtRunConfig)| {
        let mut c = rungs.last().expect("non-empty").1.clone();
        change(&mut c);
        rungs.push((name.to_string(), c));
    };
    next("+ mu = 0 (no EMA target)", &|c| {
        c.ct.recipe.schedule = match c.ct.recipe.schedule {
            ScheduleConfig::CtAdaptive(s) => {
                ScheduleConfig::CtAdaptive(CtAdaptiveSchedule { mu0: 0.0, ..s })
            }
            ScheduleConfig::Fixed(s) => ScheduleConfig::Fixed(FixedSchedule { mu: 0.0, ..s }),
            ict_schedule @ ScheduleConfig::IctExponential(_) => ict_schedule,
        }
    });
    next("+ pseudo-Huber metric", &|c| {
        c.ct.recipe.metric = ict.ct.recipe.metric
    });
    next("+ 1/(t_{n+1} - t_n) weighting", &|c| {
        c.ct.recipe.weighting = ict.ct.recipe.weighting
    });
    next("+ lognormal pairs", &|c| {
        c.ct.recipe.noise = ict.ct.recipe.noise
    });
    next("+ exponential curriculum", &|c| {
        c.ct.recipe.schedule = ict.ct.recipe.schedule
    });
    next(
        "+ network: Fourier embedding of scale 0.02, dropout (= iCT)",
        &|c| {
            c.net = ict.net.clone();
            c.ct = ict.ct;
        },
    );
    Ok(rungs)
}
