//! The distillation pipeline behind `cargo xtask train-cd`: get the EDM
//! teacher ([`cm_train::prepare_teacher`]: reuse a finished teacher run
//! whose config matches, else train it), then distill it with CD as a method
//! on cm-train's run skeleton: the student starts from the teacher's weights
//! (CM, Section 4); the report shows the teacher's Heun-35 and Euler-1 grids
//! beside the CD 1-step and 2-step grids, all from the same noise.
//!
//! The config names its teacher's config instead of copying it
//! (`[teacher] include = "../teacher/toy.toml"`, see `cm_core::load_toml`),
//! and the noise settings the student shares with its teacher
//! (`sigma_data`, `sigma_min`, `sigma_max`, `rho`) are checked to agree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use tch::Device;

use cm_core::{ConsistencyConfig, Validate};
use cm_data::DataSource;
use cm_nets::Model;
use cm_sample::ModelCard;
use cm_train::{
    check_student_noise, consistency_report_samplers, run_from_teacher, search_times,
    teacher_report_samplers, LoaderOptions, Method, Observer, ReadyTeacher, ReportSampler,
    RunConfig, RunContext, TeacherConfig, TimestepSearchConfig, TrainConfig,
};

use crate::cd::{CdConfig, CdObjective, CdPairs};

pub use cm_train::teacher_dir;

/// A whole CD run: `[teacher]` (a complete teacher config, usually
/// `include = "../teacher/NAME.toml"`), `[train]` (the distillation loop)
/// and `[cd]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdRunConfig {
    /// How to train (or find) the teacher; its data and network are reused.
    pub teacher: TeacherConfig,
    /// The distillation loop.
    #[serde(default)]
    pub train: TrainConfig,
    /// The CD objective.
    #[serde(default)]
    pub cd: CdConfig,
    /// The FID search of the few-step times once distillation ends (CM
    /// Section 6); the times found replace `cd.two_step_tau` in the model
    /// card and the report's 2-step grid. Absent: the card keeps
    /// `cd.two_step_tau`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<TimestepSearchConfig>,
}

impl Validate for CdRunConfig {
    fn validate(&self) -> cm_core::Result<()> {
        self.teacher.validate_at("teacher.")?;
        self.train.validate_at("train.")?;
        self.cd.validate_at("cd.")?;
        if let Some(search) = &self.search {
            search.validate_at("search.")?;
            search.check_start_in("search.", self.cd.recipe.consistency.range())?;
            // FID needs images and the feature network of their data set;
            // refused now rather than after a long distillation.
            if matches!(self.teacher.data, DataSource::Toy(_)) || self.teacher.latent.is_some() {
                return Err(cm_core::CoreError::invalid(
                    "search",
                    "a [search] section",
                    "a teacher on an image data set in pixel space (the search measures FID in \
                     the data set's feature space; 2-D toy points and latent teachers have none)",
                ));
            }
        }
        // The student starts from the teacher's weights and follows its
        // PF-ODE: both must mean the same thing by a noise level.
        check_student_noise(
            &self.teacher,
            &self.cd.recipe.consistency,
            "cd.recipe.consistency.",
        )
    }
}

impl RunConfig for CdRunConfig {
    fn data(&self) -> (&DataSource, LoaderOptions) {
        (&self.teacher.data, self.teacher.loader)
    }

    fn train(&self) -> &TrainConfig {
        &self.train
    }

    /// The search after training may change too: it reads the finished
    /// model and writes only the card and the report.
    fn take_steps_of(&mut self, new: &Self) {
        self.train.steps = new.train.steps;
        self.search = new.search.clone();
    }

    /// The teacher's latent space, if it has one (CD of a latent teacher).
    fn latent(&self) -> Option<&cm_train::LatentConfig> {
        self.teacher.latent.as_ref()
    }
}

/// What a CD run leaves (the teacher run folder, whether it was reused,
/// the loop's outcome, report, card and sampler rows).
pub type CdOutcome = cm_train::FromTeacherOutcome;

/// Consistency distillation on the run skeleton, from a finished teacher.
#[derive(Debug)]
pub struct CdMethod<'a> {
    config: &'a CdRunConfig,
    teacher: ReadyTeacher,
    /// The card's few-step times: `cd.two_step_tau` for 2 steps until the
    /// `[search]` stage replaces them.
    timesteps: BTreeMap<String, Vec<f64>>,
    /// The card's consistency settings: the recipe's, with `sigma_max` (where
    /// sampling starts) replaced when `[search] start_lower` finds a better
    /// start.
    consistency: ConsistencyConfig,
}

impl<'a> CdMethod<'a> {
    /// The method for `config`, distilling `teacher`.
    pub fn new(config: &'a CdRunConfig, teacher: ReadyTeacher) -> Self {
        let timesteps = [("2".to_string(), vec![config.cd.two_step_tau])].into();
        CdMethod {
            config,
            teacher,
            timesteps,
            consistency: config.cd.recipe.consistency,
        }
    }

    /// The 2-step time of the report's grid and the card.
    fn two_step_tau(&self) -> f64 {
        self.timesteps
            .get("2")
            .and_then(|t| t.first().copied())
            .unwrap_or(self.config.cd.two_step_tau)
    }
}

impl Method for CdMethod<'_> {
    type Config = CdRunConfig;
    type Objective = CdObjective;
    type Card = ModelCard;

    fn title(&self) -> &str {
        "Consistency distillation run"
    }

    fn config(&self) -> &CdRunConfig {
        self.config
    }

    fn build(
        &mut self,
        device: Device,
        observer: &mut dyn Observer,
    ) -> cm_train::Result<(Model, CdObjective)> {
        let weights = &self.teacher.weights;
        let teacher = Model::from_checkpoint(weights, device)?;
        // The student starts from the teacher's weights (CM, Section 4).
        let student = Model::from_checkpoint(weights, device)?;
        let metric = cm_train::build_metric(
            &self.config.cd.recipe.metric,
            "cd.recipe.metric.",
            &student.config().sample_shape(),
            &self.config.teacher.data,
            device,
            observer,
        )?;
        let objective = CdObjective::new(
            self.config.cd,
            teacher,
            self.config.teacher.edm.edm,
            &student,
            metric,
        )?;
        observer.on_message("distilling");
        Ok((student, objective))
    }

    fn describe(&self) -> Vec<String> {
        let t = &self.teacher;
        let mut lines = vec![
            t.describe(),
            format!(
                "objective: consistency distillation (CM Alg. 2), one teacher {} step t_(n+1) -> t_n",
                match self.config.cd.solver {
                    cm_core::Solver::Euler => "Euler",
                    cm_core::Solver::Heun => "Heun",
                }
            ),
        ];
        let recipe = self.config.cd.recipe.describe();
        match &self.config.cd.pairs {
            CdPairs::Grid(_) => lines.extend(recipe),
            // The recipe's first two lines are its grid and its pair index.
            CdPairs::Ect(pairs) => {
                lines.push(pairs.describe());
                lines.extend(recipe.into_iter().skip(2));
            }
        }
        lines.push(format!(
            "2-step sampling re-noises to tau = {}{}",
            self.config.cd.two_step_tau,
            if self.config.search.is_some() {
                " during training; the grids and the card use the searched time below"
            } else {
                ""
            }
        ));
        lines
    }

    fn report_samplers<'a>(
        &'a self,
        objective: &'a CdObjective,
        eval: &'a Model,
    ) -> Vec<ReportSampler<'a>> {
        let mut samplers = teacher_report_samplers(
            objective.teacher(),
            &self.config.teacher.edm.edm,
            "teacher, ",
            "teacher_",
        );
        samplers.extend(consistency_report_samplers(
            eval,
            &self.consistency,
            self.two_step_tau(),
            "CD, ",
            "cd_",
        ));
        samplers
    }

    fn card(&self, weights: PathBuf) -> ModelCard {
        ModelCard::Consistency {
            weights,
            consistency: self.consistency,
            timesteps: self.timesteps.clone(),
            scheduler: None,
            autoencoder: None,
            guidance: None,
            lora: Vec::new(),
        }
    }

    /// The `[search]` stage: the few-step times by FID on the evaluation
    /// network, kept for the report's grids and the card.
    fn finish(
        &mut self,
        eval: &Model,
        data: &cm_data::Dataset,
        observer: &mut dyn Observer,
    ) -> cm_train::Result<Vec<String>> {
        let Some(search) = &self.config.search else {
            return Ok(Vec::new());
        };
        // The card the search samples from; its weights path is not read.
        let card = self.card(PathBuf::new());
        let (times, lines) = search_times(search, &card, eval, data, observer)?.into_parts();
        if let Some((timesteps, consistency)) = times {
            self.timesteps = timesteps;
            self.consistency = consistency;
        }
        Ok(lines)
    }
}

/// Runs the pipeline into `run_dir`, with teachers kept under `teachers`.
/// The run folder is checked first (see `cm_train::check_run_folder`). An
/// interrupted teacher always continues from its newest checkpoint; with
/// `resume`, an interrupted distillation does too. When `stop` is raised,
/// the current stage saves and the function returns with
/// `train.stopped = true`.
pub fn run_cd(
    config: &CdRunConfig,
    run_dir: &Path,
    teachers: &Path,
    resume: bool,
    device: Device,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> cm_train::Result<CdOutcome> {
    config.validate()?;
    run_from_teacher(
        &config.teacher,
        config,
        RunContext {
            run_dir,
            resume,
            device,
            stop,
            observer,
        },
        teachers,
        |teacher| CdMethod::new(config, teacher),
    )
}
