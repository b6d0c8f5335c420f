//! The ECT pipeline behind `cargo xtask train-ect`: get the EDM teacher
//! (reused when a finished run with the same config exists, else trained),
//! then tune it into a consistency model with [`EctObjective`] on the run
//! skeleton: the student starts from the teacher's weights (ECT's "easy"
//! start: at stage 0 the loss is close to diffusion training). The report
//! shows the teacher's Heun-35 and Euler-1 grids beside ECT's 1-step and
//! 2-step grids, from the same noise.
//!
//! The config names its teacher's config (`[teacher] include =
//! "../teacher/NAME.toml"`), and the noise settings the student shares with
//! its teacher are checked to agree.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use tch::Device;

use cm_core::Validate;
use cm_data::DataSource;
use cm_nets::Model;
use cm_sample::ModelCard;

use crate::config::TrainConfig;
use crate::ct_pipeline::consistency_report_samplers;
use crate::ect::{EctConfig, EctObjective};
use crate::error::Result;
use crate::observer::Observer;
use crate::run::{Method, ReportSampler, RunConfig, RunContext};
use crate::source::LoaderOptions;
use crate::teacher::{
    check_student_noise, run_from_teacher, teacher_report_samplers, FromTeacherOutcome,
    ReadyTeacher, TeacherConfig,
};

/// A whole ECT run: `[teacher]` (usually `include =
/// "../teacher/NAME.toml"`), `[train]` (the tuning loop) and `[ect]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EctRunConfig {
    /// How to train (or find) the teacher; its data and network are reused.
    pub teacher: TeacherConfig,
    /// The tuning loop (the evaluation EMAs are `train.ema_rates`).
    #[serde(default)]
    pub train: TrainConfig,
    /// The ECT objective.
    #[serde(default)]
    pub ect: EctConfig,
}

impl Validate for EctRunConfig {
    fn validate(&self) -> cm_core::Result<()> {
        self.teacher.validate_at("teacher.")?;
        self.train.validate_at("train.")?;
        self.ect.validate_at("ect.")?;
        check_student_noise(&self.teacher, &self.ect.consistency, "ect.consistency.")
    }
}

impl RunConfig for EctRunConfig {
    fn data(&self) -> (&DataSource, LoaderOptions) {
        (&self.teacher.data, self.teacher.loader)
    }

    fn train(&self) -> &TrainConfig {
        &self.train
    }

    fn take_steps_of(&mut self, new: &Self) {
        self.train.steps = new.train.steps;
    }

    /// The teacher's latent space, if it has one (CD of a latent teacher).
    fn latent(&self) -> Option<&crate::latent::LatentConfig> {
        self.teacher.latent.as_ref()
    }
}

/// ECT on the run skeleton, from a finished teacher.
#[derive(Debug)]
pub struct EctMethod<'a> {
    config: &'a EctRunConfig,
    teacher: ReadyTeacher,
    /// The teacher's network, loaded by `build`, for the report's grids.
    teacher_model: Option<Model>,
}

impl<'a> EctMethod<'a> {
    /// The method for `config`, tuning `teacher`.
    pub fn new(config: &'a EctRunConfig, teacher: ReadyTeacher) -> Self {
        EctMethod {
            config,
            teacher,
            teacher_model: None,
        }
    }
}

impl Method for EctMethod<'_> {
    type Config = EctRunConfig;
    type Objective = EctObjective;
    type Card = ModelCard;

    fn title(&self) -> &str {
        "Easy consistency tuning run"
    }

    fn config(&self) -> &EctRunConfig {
        self.config
    }

    fn build(
        &mut self,
        device: Device,
        observer: &mut dyn Observer,
    ) -> Result<(Model, EctObjective)> {
        let weights = &self.teacher.weights;
        // The student starts from the teacher's weights (ECT, Section 3).
        let student = Model::from_checkpoint(weights, device)?;
        let mut teacher = Model::from_checkpoint(weights, device)?;
        teacher.var_store_mut().freeze();
        self.teacher_model = Some(teacher);
        let metric = crate::build_metric(
            &self.config.ect.metric,
            "ect.metric.",
            &student.config().sample_shape(),
            &self.config.teacher.data,
            device,
            observer,
        )?;
        let objective = EctObjective::new(self.config.ect, metric)?;
        observer.on_message("tuning");
        Ok((student, objective))
    }

    fn describe(&self) -> Vec<String> {
        let t = &self.teacher;
        let mut lines = vec![
            format!("{}; the student starts from its weights", t.describe()),
            "objective: easy consistency tuning (Geng et al. 2024)".into(),
        ];
        lines.extend(self.config.ect.describe());
        lines.push(format!(
            "2-step sampling re-noises to tau = {}",
            self.config.ect.two_step_tau
        ));
        lines
    }

    fn report_samplers<'a>(
        &'a self,
        _objective: &'a EctObjective,
        eval: &'a Model,
    ) -> Vec<ReportSampler<'a>> {
        let mut samplers = match &self.teacher_model {
            Some(teacher) => teacher_report_samplers(
                teacher,
                &self.config.teacher.edm.edm,
                "teacher, ",
                "teacher_",
            ),
            None => Vec::new(),
        };
        samplers.extend(consistency_report_samplers(
            eval,
            &self.config.ect.consistency,
            self.config.ect.two_step_tau,
            "ECT, ",
            "ect_",
        ));
        samplers
    }

    fn card(&self, weights: PathBuf) -> ModelCard {
        ModelCard::Consistency {
            weights,
            consistency: self.config.ect.consistency,
            timesteps: [("2".to_string(), vec![self.config.ect.two_step_tau])].into(),
            scheduler: None,
            autoencoder: None,
            guidance: None,
            lora: Vec::new(),
        }
    }
}

/// What an ECT run leaves.
pub type EctOutcome = FromTeacherOutcome;

/// Runs the pipeline into `run_dir`, with teachers kept under `teachers`
/// (see [`run_from_teacher`]). When `stop` is raised, the current stage
/// saves and the function returns without a report.
pub fn run_ect(
    config: &EctRunConfig,
    run_dir: &Path,
    teachers: &Path,
    resume: bool,
    device: Device,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<EctOutcome> {
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
        |teacher| EctMethod::new(config, teacher),
    )
}
