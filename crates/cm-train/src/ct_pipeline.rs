//! The consistency-training pipeline behind `cargo xtask train-ct`: train a
//! consistency model from data alone with the CT recipe (CM Algorithm 3) or
//! the improved one (iCT, Song & Dhariwal 2023), then write 1-step and
//! 2-step grids from fixed noise, a `report.md` and the run's model card
//! (`model.toml`, read by `cm sample`, `cm edit` and `cm eval`), all
//! through the run skeleton ([`crate::run`]).
//!
//! [`ict_ablation`] builds the path from a CT config to an iCT config one
//! change at a time, for the ablation table in docs/ct.md.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use cm_core::{
    Conditioning, ConsistencyConfig, ConsistencyRecipe, CoreError, CtAdaptiveSchedule,
    FixedSchedule, ScheduleConfig, Validate,
};
use cm_data::DataSource;
use cm_nets::{Model, NetConfig, Preconditioned};
use cm_sample::{consistency_sample, ModelCard};

use crate::config::TrainConfig;
use crate::ct::CtObjective;
use crate::error::{Result, TrainError};
use crate::observer::Observer;
use crate::run::{run, Method, ReportSampler, RunConfig, RunContext, RunOutcome};
use crate::source::LoaderOptions;

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
        self.net.check_trainable()?;
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

impl RunConfig for CtRunConfig {
    fn data(&self) -> (&DataSource, LoaderOptions) {
        (&self.data, self.loader)
    }

    fn train(&self) -> &TrainConfig {
        &self.train
    }

    fn take_steps_of(&mut self, new: &Self) {
        self.train.steps = new.train.steps;
    }
}

/// The report grids of a consistency model: 1 step, and 2 steps through
/// `two_step_tau` (CM Algorithm 1), labelled `{label_prefix}1 step` and
/// written to `samples_{file_prefix}1step.png` (likewise 2).
pub fn consistency_report_samplers<'a>(
    model: &'a Model,
    consistency: &'a ConsistencyConfig,
    two_step_tau: f64,
    label_prefix: &str,
    file_prefix: &str,
) -> Vec<ReportSampler<'a>> {
    [(1usize, vec![]), (2, vec![two_step_tau])]
        .into_iter()
        .map(|(steps, taus)| ReportSampler {
            label: format!(
                "{label_prefix}{steps} step{}",
                if steps == 1 { "" } else { "s" }
            ),
            file: format!("samples_{file_prefix}{steps}step.png"),
            sample: Box::new(move |latents: &Tensor| {
                let f = Preconditioned::eval(model, consistency.parameterization());
                Ok(consistency_sample(
                    &f,
                    latents,
                    consistency.range(),
                    &taus,
                    Conditioning::none(),
                )?)
            }),
        })
        .collect()
}

/// What a CT / iCT run leaves.
pub type CtOutcome = RunOutcome<CtObjective>;

/// CT / iCT on the run skeleton.
#[derive(Debug)]
pub struct CtMethod<'a> {
    config: &'a CtRunConfig,
}

impl<'a> CtMethod<'a> {
    /// The method for `config`.
    pub fn new(config: &'a CtRunConfig) -> Self {
        CtMethod { config }
    }
}

impl Method for CtMethod<'_> {
    type Config = CtRunConfig;
    type Objective = CtObjective;
    type Card = ModelCard;

    fn title(&self) -> &str {
        "Consistency training run"
    }

    fn config(&self) -> &CtRunConfig {
        self.config
    }

    fn build(
        &mut self,
        device: Device,
        observer: &mut dyn Observer,
    ) -> Result<(Model, CtObjective)> {
        let model = Model::new(self.config.net.clone(), device)?;
        let metric = crate::build_metric(
            &self.config.ct.recipe.metric,
            "ct.recipe.metric.",
            &model.config().sample_shape(),
            &self.config.data,
            device,
            observer,
        )?;
        let objective = CtObjective::new(self.config.ct.recipe, &model, metric)?;
        Ok((model, objective))
    }

    fn describe(&self) -> Vec<String> {
        let mut lines =
            vec!["objective: consistency training (CM Alg. 3; iCT switches per field)".to_string()];
        lines.extend(self.config.ct.recipe.describe());
        lines.push(format!(
            "2-step sampling re-noises to tau = {}",
            self.config.ct.two_step_tau
        ));
        lines
    }

    fn report_samplers<'a>(
        &'a self,
        _: &'a CtObjective,
        eval: &'a Model,
    ) -> Vec<ReportSampler<'a>> {
        consistency_report_samplers(
            eval,
            &self.config.ct.recipe.consistency,
            self.config.ct.two_step_tau,
            "",
            "",
        )
    }

    fn card(&self, weights: PathBuf) -> ModelCard {
        ModelCard::Consistency {
            weights,
            consistency: self.config.ct.recipe.consistency,
            timesteps: [("2".to_string(), vec![self.config.ct.two_step_tau])].into(),
            scheduler: None,
            autoencoder: None,
            guidance: None,
            lora: Vec::new(),
        }
    }
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
    run(
        &mut CtMethod::new(config),
        RunContext {
            run_dir,
            resume,
            device,
            stop,
            observer,
        },
    )
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
