//! The progressive-distillation pipeline behind `cargo xtask train-pd`: get
//! the EDM teacher ([`cm_train::prepare_teacher`]), then one stage per step
//! count `N = start_steps, start_steps / 2, ..., end_steps`, each a method on
//! cm-train's run skeleton in its own folder `RUN/steps-NNN/` with its own
//! report and model card. Stage `N`'s student starts from its teacher's
//! weights; at each halving the student (the online network of the stage's
//! final checkpoint, as openai's `reset_training_for_progdist`) becomes the
//! next teacher, and the optimizer and the EMA restart (Salimans & Ho 2022,
//! Algorithm 2). `[train] steps` is the length of every stage.
//!
//! ```text
//! RUN/config.toml            the resolved config
//! RUN/steps-064/             stage N = 64: config, checkpoints, grids, report.md, model.toml
//! ...
//! RUN/steps-001/             the 1-step model
//! RUN/report.md              every stage in one table
//! RUN/model.toml             the card of the last stage's model
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use tch::Device;

use cm_core::{Conditioning, Validate};
use cm_data::DataSource;
use cm_nets::{Model, Preconditioned};
use cm_sample::{edm_sample, ModelCard, CARD_FILE};
use cm_train::{
    check_run_folder, final_weights, latest_checkpoint, prepare_teacher, run, teacher_dir,
    LoaderOptions, Method, Observer, ReportSampler, RunConfig, RunContext, RunOutcome, SamplerRow,
    TeacherConfig, TeacherStage, TrainConfig, TrainError,
};

use crate::pd::{pd_sampler, PdConfig, PdObjective};

/// A whole progressive-distillation run: `[teacher]` (a complete teacher
/// config, usually `include = "../teacher/NAME.toml"`), `[train]` (the loop
/// of every stage; `steps` per stage) and `[pd]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdRunConfig {
    /// How to train (or find) the teacher; its data, network and noise
    /// settings are the student's.
    pub teacher: TeacherConfig,
    /// The loop of each stage.
    #[serde(default)]
    pub train: TrainConfig,
    /// The stages and the objective.
    #[serde(default)]
    pub pd: PdConfig,
}

impl Validate for PdRunConfig {
    fn validate(&self) -> cm_core::Result<()> {
        self.teacher.validate_at("teacher.")?;
        self.train.validate_at("train.")?;
        self.pd.validate_at("pd.")
    }
}

impl RunConfig for PdRunConfig {
    fn data(&self) -> (&DataSource, LoaderOptions) {
        (&self.teacher.data, self.teacher.loader)
    }

    fn train(&self) -> &TrainConfig {
        &self.train
    }

    /// A stage's length also decides where the next stage starts from, so
    /// a resumed run keeps the step count it started with.
    fn take_steps_of(&mut self, _new: &Self) {}

    /// The teacher's latent space, if it has one.
    fn latent(&self) -> Option<&cm_train::LatentConfig> {
        self.teacher.latent.as_ref()
    }
}

/// The folder of the stage whose student takes `steps` steps.
pub fn stage_dir(run_dir: &Path, steps: usize) -> PathBuf {
    run_dir.join(format!("steps-{steps:03}"))
}

/// One finished stage.
#[derive(Debug, Clone)]
pub struct PdStage {
    /// Student steps `N`.
    pub steps: usize,
    /// The stage's run folder.
    pub dir: PathBuf,
    /// Its model card.
    pub card: PathBuf,
    /// Updates of the stage.
    pub train_steps: u64,
    /// Its final loss (NaN when the stage was finished before this call).
    pub final_loss: f64,
    /// Its report's sampler rows (empty when finished before this call).
    pub samplers: Vec<SamplerRow>,
}

/// What a progressive-distillation run leaves.
#[derive(Debug)]
pub struct PdOutcome {
    /// The teacher run folder.
    pub teacher_dir: PathBuf,
    /// Whether the teacher was reused rather than trained.
    pub teacher_reused: bool,
    /// The finished stages, in order.
    pub stages: Vec<PdStage>,
    /// Updates of the stage the stop flag ended, if any (a checkpoint was
    /// saved; resume to continue).
    pub stopped_at: Option<u64>,
    /// The run's report, if every stage finished.
    pub report: Option<PathBuf>,
    /// The card of the last stage's model, if every stage finished.
    pub card: Option<PathBuf>,
}

/// One stage on the run skeleton.
#[derive(Debug)]
pub struct PdStageMethod<'a> {
    config: &'a PdRunConfig,
    steps: usize,
    teacher_weights: PathBuf,
    teacher_name: String,
    title: String,
}

impl<'a> PdStageMethod<'a> {
    /// The stage whose student takes `steps` steps, distilling the network in
    /// `teacher_weights` (`teacher_name` says what it is, for the report).
    pub fn new(
        config: &'a PdRunConfig,
        steps: usize,
        teacher_weights: PathBuf,
        teacher_name: String,
    ) -> Self {
        PdStageMethod {
            config,
            steps,
            teacher_weights,
            teacher_name,
            title: format!("Progressive distillation to {steps} steps"),
        }
    }
}

impl Method for PdStageMethod<'_> {
    type Config = PdRunConfig;
    type Objective = PdObjective;
    type Card = ModelCard;

    fn title(&self) -> &str {
        &self.title
    }

    fn config(&self) -> &PdRunConfig {
        self.config
    }

    fn build(
        &mut self,
        device: Device,
        observer: &mut dyn Observer,
    ) -> cm_train::Result<(Model, PdObjective)> {
        let teacher = Model::from_checkpoint(&self.teacher_weights, device)?;
        // The student starts as its teacher (Salimans & Ho, Algorithm 2).
        let student = Model::from_checkpoint(&self.teacher_weights, device)?;
        let objective = PdObjective::new(
            self.config.pd,
            self.steps,
            teacher,
            self.config.teacher.edm.edm,
        )?;
        observer.on_message(&format!(
            "distilling {} teacher steps into {}",
            2 * self.steps,
            self.steps
        ));
        Ok((student, objective))
    }

    fn describe(&self) -> Vec<String> {
        let pd = &self.config.pd;
        vec![
            format!(
                "teacher: {} (`{}`), {} steps",
                self.teacher_name,
                self.teacher_weights.display(),
                2 * self.steps
            ),
            format!(
                "objective: progressive distillation (Salimans & Ho 2022, Alg. 2): one student \
                 Euler step t -> t'' matches two teacher {} steps t -> t' -> t'' on the nested \
                 grid, target x_t - t (x_t'' - x_t) / (t'' - t)",
                match pd.solver {
                    cm_core::Solver::Euler => "Euler",
                    cm_core::Solver::Heun => "Heun",
                }
            ),
            format!(
                "weighting {:?}, metric {:?}; stages {:?}",
                pd.weighting,
                pd.metric,
                pd.stages()
            ),
        ]
    }

    fn report_samplers<'a>(
        &'a self,
        objective: &'a PdObjective,
        eval: &'a Model,
    ) -> Vec<ReportSampler<'a>> {
        let edm = &self.config.teacher.edm.edm;
        let sampler = move |model: &'a Model, steps: usize| {
            move |latents: &tch::Tensor| {
                let d = Preconditioned::eval(model, edm.preconditioning());
                Ok(edm_sample(
                    &d,
                    latents,
                    &edm.grid(),
                    &pd_sampler(steps),
                    Conditioning::none(),
                )?)
            }
        };
        let n = self.steps;
        vec![
            ReportSampler {
                label: format!("student, Euler {n} steps"),
                file: format!("samples_student_{n}.png"),
                sample: Box::new(sampler(eval, n)),
            },
            ReportSampler {
                label: format!("its teacher, Euler {} steps", 2 * n),
                file: format!("samples_teacher_{}.png", 2 * n),
                sample: Box::new(sampler(objective.teacher(), 2 * n)),
            },
        ]
    }

    fn card(&self, weights: PathBuf) -> ModelCard {
        ModelCard::Edm {
            weights,
            edm: self.config.teacher.edm.edm,
            sampler: pd_sampler(self.steps),
            autoencoder: None,
            lora: Vec::new(),
        }
    }
}

/// Runs the pipeline into `run_dir`, with teachers kept under `teachers`.
/// Every stage folder is checked before the teacher stage (a fresh run
/// refuses folders that hold checkpoints; a resumed one, a changed config).
/// With `resume`, finished stages are kept and an interrupted one
/// continues. When `stop` is raised, the current stage saves and the
/// function returns with `stopped_at` set.
pub fn run_pd(
    config: &PdRunConfig,
    run_dir: &Path,
    teachers: &Path,
    resume: bool,
    device: Device,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> cm_train::Result<PdOutcome> {
    config.validate()?;
    // Every stage splits its batches over the data-parallel ranks: say so
    // before the teacher stage, which can be long.
    let ranks = cm_dist::world().size();
    config.teacher.train.shards_for(ranks, "teacher.train.")?;
    config.train.shards_for(ranks, "train.")?;
    check_run_folder(run_dir, config, resume)?;
    let stages = config.pd.stages();
    for &n in &stages {
        check_run_folder(&stage_dir(run_dir, n), config, resume)?;
    }
    let teacher = match prepare_teacher(&config.teacher, teachers, device, stop, observer)? {
        TeacherStage::Ready(teacher) => teacher,
        TeacherStage::Stopped(train) => {
            return Ok(PdOutcome {
                teacher_dir: teacher_dir(teachers, &config.teacher),
                teacher_reused: false,
                stages: Vec::new(),
                stopped_at: Some(train.step),
                report: None,
                card: None,
            })
        }
    };
    // Rank 0 writes the run folder; data-parallel ranks only check it.
    let comm = cm_dist::world();
    if comm.rank() == 0 {
        cm_train::write_run_config(run_dir, config, resume)?;
    } else {
        cm_train::check_run_folder(run_dir, config, resume)?;
    }
    let mut outcome = PdOutcome {
        teacher_dir: teacher.dir.clone(),
        teacher_reused: teacher.reused,
        stages: Vec::new(),
        stopped_at: None,
        report: None,
        card: None,
    };
    let mut teacher_weights = teacher.weights.clone();
    let mut teacher_name = format!("the EDM teacher `{}`", teacher.dir.display());
    for &n in &stages {
        let dir = stage_dir(run_dir, n);
        let out: RunOutcome<PdObjective> = run(
            &mut PdStageMethod::new(config, n, teacher_weights.clone(), teacher_name.clone()),
            RunContext {
                run_dir: &dir,
                resume,
                device,
                stop,
                observer: &mut *observer,
            },
        )?;
        if out.train.stopped {
            outcome.stopped_at = Some(out.train.step);
            return Ok(outcome);
        }
        let card = out.card.ok_or_else(|| TrainError::RunFolder {
            path: dir.clone(),
            reason: "the stage finished without a model card".into(),
        })?;
        // The next teacher is this stage's student: its online network at
        // the final checkpoint (the EMA is for evaluation).
        let (_, checkpoint) = latest_checkpoint(&dir).ok_or_else(|| TrainError::RunFolder {
            path: dir.clone(),
            reason: "the stage finished without a checkpoint".into(),
        })?;
        teacher_weights = checkpoint.join("online.safetensors");
        teacher_name = format!("the {n}-step student of `{}`", dir.display());
        outcome.stages.push(PdStage {
            steps: n,
            dir,
            card,
            train_steps: out.train.step,
            final_loss: out.train.losses.last().map_or(f64::NAN, |l| l.1),
            samplers: out.samplers,
        });
    }
    // The run's card is the last stage's, its weights relative to the run
    // folder (so the folder stays movable).
    let last = outcome.stages.last().expect("at least one stage");
    let stage_name = last.dir.file_name().expect("stage folder name");
    let card_path = run_dir.join(CARD_FILE);
    if comm.rank() == 0 {
        PdStageMethod::new(config, last.steps, PathBuf::new(), String::new())
            .card(PathBuf::from(stage_name).join(final_weights(&config.train)))
            .save(&card_path)?;
        write_pd_report(config, run_dir, &outcome)?;
    }
    comm.barrier();
    outcome.report = Some(run_dir.join("report.md"));
    outcome.card = Some(card_path);
    Ok(outcome)
}

/// `RUN/report.md`: one row per stage, linking its report, grid and card.
fn write_pd_report(
    config: &PdRunConfig,
    run_dir: &Path,
    out: &PdOutcome,
) -> cm_train::Result<PathBuf> {
    let mut md = String::from("# Progressive distillation run\n\n");
    let _ = writeln!(
        md,
        "- teacher: `{}` ({}); stages {:?}, {} updates each, batch {}",
        out.teacher_dir.display(),
        if out.teacher_reused {
            "reused"
        } else {
            "trained in this run"
        },
        config.pd.stages(),
        config.train.steps,
        config.train.batch_size
    );
    let _ = writeln!(
        md,
        "- each stage: the student starts as its teacher (the previous stage's online network), \
         optimizer and EMA restart; samples are Euler on the stage's nested grid\n"
    );
    let _ = writeln!(
        md,
        "| steps (NFE) | final loss | report | samples | model card |"
    );
    let _ = writeln!(md, "| ---: | ---: | --- | --- | --- |");
    for s in &out.stages {
        let name = s
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let grid = s
            .samplers
            .first()
            .map(|r| format!("![{} steps]({name}/{})", s.steps, r.file))
            .unwrap_or_else(|| "(finished earlier)".into());
        let loss = if s.final_loss.is_finite() {
            format!("{:.5}", s.final_loss)
        } else {
            "-".into()
        };
        let _ = writeln!(
            md,
            "| {} | {loss} | [{name}/report.md]({name}/report.md) | {grid} | `{name}/{CARD_FILE}` |",
            s.steps
        );
    }
    let path = run_dir.join("report.md");
    std::fs::write(&path, md).map_err(TrainError::io("cannot write", &path))?;
    Ok(path)
}
