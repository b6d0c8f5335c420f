//! The EDM teacher (Karras et al. 2022) as a method on the run skeleton: a
//! TOML config naming the data, the network, the loop settings and the EDM
//! objective ([`TeacherConfig`], `configs/teacher/*.toml`); [`run_teacher`]
//! trains it and writes 35-NFE Heun and 1-step Euler grids, `report.md`
//! and the model card.
//!
//! Methods that learn from a teacher (CD, progressive distillation, LCM,
//! ECT) get a finished one through [`prepare_teacher`]: a teacher run folder
//! keyed by the hash of its resolved config, reused when finished, trained
//! (or resumed) otherwise.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Device;

use cm_core::{Conditioning, CoreError, Solver, Validate};
use cm_data::DataSource;
use cm_nets::{LoraConfig, Model, NetConfig, Preconditioned};
use cm_sample::{edm_sample, EdmSampler, ModelCard};

use crate::checkpoint::{evaluation_weights_file, latest_checkpoint};
use crate::config::TrainConfig;
use crate::edm::{EdmObjective, EdmObjectiveConfig};
use crate::error::Result;
use crate::observer::Observer;
use crate::run::{run, Method, ReportSampler, RunConfig, RunContext, RunOutcome};
use crate::source::LoaderOptions;
use crate::trainer::TrainOutcome;

/// Everything an EDM teacher run needs. In TOML: `[data]`, `[loader]`,
/// `[net]`, `[train]`, `[edm]` (see `configs/teacher/*.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// The data set.
    #[serde(default)]
    pub data: DataSource,
    /// Flip and padding.
    #[serde(default)]
    pub loader: LoaderOptions,
    /// The network.
    pub net: NetConfig,
    /// Loop settings.
    #[serde(default)]
    pub train: TrainConfig,
    /// The EDM objective and the grid sampler.
    #[serde(default)]
    pub edm: EdmObjectiveConfig,
    /// Train in an autoencoder's latent space (latent diffusion, the
    /// teacher of LCM): `[latent] autoencoder = "runs/ae/model.toml"`;
    /// `[net]` then takes the latent shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latent: Option<crate::latent::LatentConfig>,
    /// Fine-tune a finished model with LoRA adapters instead of training
    /// from scratch (a style adapter, LCM-LoRA's "style LoRA"): its weights
    /// stay frozen, only the adapters train, with the same EDM loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<LoraFineTune>,
}

/// `[fine_tune]` of a teacher config: the base model and the adapters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraFineTune {
    /// The base model's card (an EDM model card without adapters; `[net]`
    /// must equal its network).
    pub base: PathBuf,
    /// The adapters.
    #[serde(default)]
    pub lora: LoraConfig,
}

/// The adapter's name inside a fine-tuned model.
pub const FINE_TUNE_ADAPTER: &str = "style";
/// The adapter file a LoRA fine-tune writes in its run folder (PEFT keys).
pub const FINE_TUNE_FILE: &str = "lora.safetensors";

impl TeacherConfig {
    /// Validates with a dotted-path prefix (`"teacher."` inside a CD config).
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        self.net.validate()?;
        self.net.check_trainable()?;
        self.train.validate_at(&format!("{prefix}train."))?;
        self.edm.validate_at(&format!("{prefix}edm."))?;
        if let Some(ft) = &self.fine_tune {
            if !prefix.is_empty() {
                // A method's teacher must be a model on its own: a
                // fine-tune's checkpoints hold adapters only.
                return Err(CoreError::invalid(
                    format!("{prefix}fine_tune"),
                    ft.base.display(),
                    "no [fine_tune] in a method's teacher: run the fine-tune on its own \
                     (`cm train-teacher`), merge it (`cm lora merge`) if a method should learn \
                     from it",
                ));
            }
            ft.lora.validate_at(&format!("{prefix}fine_tune.lora."))?;
        }
        if self.loader.pad > 0 && self.net.sample_shape().len() != 3 {
            return Err(CoreError::invalid(
                format!("{prefix}loader.pad"),
                self.loader.pad,
                "0 for 2-D point data",
            ));
        }
        Ok(())
    }
}

impl Validate for TeacherConfig {
    fn validate(&self) -> cm_core::Result<()> {
        self.validate_at("")
    }
}

impl RunConfig for TeacherConfig {
    fn data(&self) -> (&DataSource, LoaderOptions) {
        (&self.data, self.loader)
    }

    fn train(&self) -> &TrainConfig {
        &self.train
    }

    fn take_steps_of(&mut self, new: &Self) {
        self.train.steps = new.train.steps;
    }

    fn latent(&self) -> Option<&crate::latent::LatentConfig> {
        self.latent.as_ref()
    }
}

/// What a teacher run leaves.
pub type TeacherOutcome = RunOutcome<EdmObjective>;

/// The EDM teacher on the run skeleton.
#[derive(Debug)]
pub struct TeacherMethod<'a> {
    config: &'a TeacherConfig,
    run_dir: PathBuf,
    /// The base's weights, for a LoRA fine-tune (set by `build`).
    base_weights: Option<PathBuf>,
}

impl<'a> TeacherMethod<'a> {
    /// The method for `config`, writing into `run_dir`.
    pub fn new(config: &'a TeacherConfig, run_dir: &Path) -> Self {
        TeacherMethod {
            config,
            run_dir: run_dir.to_path_buf(),
            base_weights: None,
        }
    }

    /// A LoRA fine-tune's network: the base, frozen, plus fresh adapters.
    fn fine_tune_model(
        &mut self,
        ft: &LoraFineTune,
        device: Device,
        observer: &mut dyn Observer,
    ) -> Result<Model> {
        let card = ModelCard::load(&ft.base)?;
        if !matches!(card, ModelCard::Edm { .. }) || !card.lora().is_empty() {
            return Err(CoreError::invalid(
                "fine_tune.base",
                ft.base.display(),
                "the card of an EDM model without adapters (a finished teacher run's model.toml)",
            )
            .into());
        }
        let ModelCard::Edm {
            edm, autoencoder, ..
        } = &card
        else {
            unreachable!("checked above")
        };
        if *edm != self.config.edm.edm {
            return Err(CoreError::invalid(
                "edm.edm",
                format!("{:?}", self.config.edm.edm),
                format!(
                    "the base model's preconditioning {edm:?} ({}): a fine-tune keeps it",
                    ft.base.display()
                ),
            )
            .into());
        }
        let latent = self.config.latent.as_ref().map(|l| l.autoencoder.as_path());
        let same_space = match (autoencoder.as_deref(), latent) {
            (None, None) => true,
            (Some(a), Some(b)) => cm_core::same_file(a, b),
            _ => false,
        };
        if !same_space {
            return Err(CoreError::invalid(
                "latent.autoencoder",
                latent
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "none".into()),
                format!(
                    "the base model's autoencoder ({}): a fine-tune learns in its space",
                    autoencoder
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "none, data space".into())
                ),
            )
            .into());
        }
        let mut model = card.load_model(device)?;
        if model.config() != &self.config.net {
            return Err(CoreError::invalid(
                "net",
                format!("{:?}", self.config.net),
                format!(
                    "the base model's network ({}): a fine-tune keeps the architecture",
                    ft.base.display()
                ),
            )
            .into());
        }
        let line =
            crate::adapters::attach_trainable_adapter(&mut model, FINE_TUNE_ADAPTER, &ft.lora)?;
        observer.on_message(&format!("LoRA fine-tune of {}: {line}", ft.base.display()));
        self.base_weights =
            Some(std::fs::canonicalize(card.weights()).unwrap_or_else(|_| card.weights().into()));
        Ok(model)
    }
}

/// The teacher's report grids: EDM's 18-step Heun sampler (35 NFE) and, for
/// contrast with one-step consistency models, a single Euler step, labelled
/// `{label_prefix}Heun 18 steps` and written to
/// `samples_{file_prefix}heun35.png` (likewise `euler1`).
pub fn teacher_report_samplers<'a>(
    teacher: &'a Model,
    edm: &'a cm_core::EdmConfig,
    label_prefix: &str,
    file_prefix: &str,
) -> Vec<ReportSampler<'a>> {
    let label = |s: &str| format!("{label_prefix}{s}");
    let file = |s: &str| format!("samples_{file_prefix}{s}.png");
    let sampler = move |steps: usize, solver: Solver| {
        move |latents: &tch::Tensor| {
            let d = Preconditioned::eval(teacher, edm.preconditioning());
            let sampler = EdmSampler {
                steps,
                solver,
                ..Default::default()
            };
            Ok(edm_sample(
                &d,
                latents,
                &edm.grid(),
                &sampler,
                Conditioning::none(),
            )?)
        }
    };
    vec![
        ReportSampler {
            label: label("Heun 18 steps"),
            file: file("heun35"),
            sample: Box::new(sampler(18, Solver::Heun)),
        },
        ReportSampler {
            label: label("Euler 1 step"),
            file: file("euler1"),
            sample: Box::new(sampler(1, Solver::Euler)),
        },
    ]
}

impl Method for TeacherMethod<'_> {
    type Config = TeacherConfig;
    type Objective = EdmObjective;
    type Card = ModelCard;

    fn title(&self) -> &str {
        if self.config.fine_tune.is_some() {
            "EDM LoRA fine-tune run"
        } else {
            "EDM teacher run"
        }
    }

    fn config(&self) -> &TeacherConfig {
        self.config
    }

    fn build(
        &mut self,
        device: Device,
        observer: &mut dyn Observer,
    ) -> Result<(Model, EdmObjective)> {
        let model = match &self.config.fine_tune {
            None => Model::new(self.config.net.clone(), device)?,
            Some(ft) => self.fine_tune_model(&ft.clone(), device, observer)?,
        };
        Ok((
            model,
            EdmObjective {
                config: self.config.edm,
            },
        ))
    }

    fn describe(&self) -> Vec<String> {
        let e = &self.config.edm;
        let mut lines = vec![format!("objective: {}", e.edm.describe())];
        if let Some(ft) = &self.config.fine_tune {
            lines.push(format!(
                "LoRA fine-tune of `{}` (frozen): rank {}, alpha {}, targets {:?}, adapter `{FINE_TUNE_FILE}`",
                ft.base.display(),
                ft.lora.rank,
                ft.lora.alpha,
                ft.lora.targets
            ));
        }
        if self.config.net.num_classes() > 0 {
            lines.push(format!(
                "class-conditional ({} classes), label dropout {} for classifier-free guidance",
                self.config.net.num_classes(),
                e.label_dropout
            ));
        }
        lines.push(format!(
            "periodic grids: {:?} sampler, {} steps",
            e.sampler.solver, e.sampler.steps
        ));
        lines
    }

    fn report_samplers<'a>(
        &'a self,
        _: &'a EdmObjective,
        eval: &'a Model,
    ) -> Vec<ReportSampler<'a>> {
        teacher_report_samplers(eval, &self.config.edm.edm, "", "")
    }

    fn card(&self, weights: PathBuf) -> ModelCard {
        match &self.base_weights {
            None => ModelCard::Edm {
                weights,
                edm: self.config.edm.edm,
                sampler: self.config.edm.sampler,
                autoencoder: None,
                lora: Vec::new(),
            },
            // The base's weights with the adapter file `finish` wrote.
            Some(base) => ModelCard::Edm {
                weights: base.clone(),
                edm: self.config.edm.edm,
                sampler: self.config.edm.sampler,
                autoencoder: None,
                lora: vec![cm_sample::LoraRef {
                    file: FINE_TUNE_FILE.into(),
                    weight: 1.0,
                }],
            },
        }
    }

    /// A LoRA fine-tune writes the evaluation EMA's adapter file.
    fn finish(
        &mut self,
        eval: &Model,
        _data: &cm_data::Dataset,
        observer: &mut dyn Observer,
    ) -> Result<Vec<String>> {
        if self.config.fine_tune.is_none() {
            return Ok(Vec::new());
        }
        crate::adapters::write_adapter_file(
            eval,
            FINE_TUNE_ADAPTER,
            &self.run_dir,
            FINE_TUNE_FILE,
            observer,
        )
    }
}

/// Runs (or with `resume`, continues) an EDM teacher run into `run_dir`:
/// writes the resolved config to `run_dir/config.toml`, trains, and unless
/// stopped writes `samples_heun35.png`, `samples_euler1.png`, `report.md`
/// and `model.toml` from the first EMA.
pub fn run_teacher(
    config: &TeacherConfig,
    run_dir: &Path,
    resume: bool,
    device: Device,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<TeacherOutcome> {
    run(
        &mut TeacherMethod::new(config, run_dir),
        RunContext {
            run_dir,
            resume,
            device,
            stop,
            observer,
        },
    )
}

/// Where the teacher of `config` lives: `TEACHERS/teacher-<hash>` where the
/// hash is of the resolved teacher config, so a changed config trains anew.
pub fn teacher_dir(teachers: &Path, config: &TeacherConfig) -> PathBuf {
    let text = toml::to_string(config).expect("configs serialize to TOML");
    teachers.join(format!(
        "teacher-{:016x}",
        cm_core::fnv1a64(text.as_bytes())
    ))
}

/// The evaluation weights of a finished teacher run in `dir` for `config`.
fn finished_teacher(dir: &Path, config: &TeacherConfig) -> Option<PathBuf> {
    let written = cm_core::read_bounded_text(
        &dir.join("config.toml"),
        cm_core::MAX_CONFIG_BYTES,
        "a config.toml",
    )
    .ok()?;
    if written != toml::to_string(config).ok()? {
        return None;
    }
    let (step, path) = latest_checkpoint(dir)?;
    (step == config.train.steps)
        .then(|| path.join(evaluation_weights_file(&config.train.ema_rates)))
}

/// A finished teacher, ready for a method that learns from it.
#[derive(Debug, Clone)]
pub struct ReadyTeacher {
    /// Its run folder.
    pub dir: PathBuf,
    /// Its evaluation weights (first EMA of the final checkpoint).
    pub weights: PathBuf,
    /// Whether it was reused rather than trained (or resumed) now.
    pub reused: bool,
    /// Seconds spent getting it.
    pub seconds: f64,
}

impl ReadyTeacher {
    /// The report line of a method that learns from it: "teacher: `DIR`
    /// (reused; 0.0 min)" or "(trained in this run; 18.5 min)".
    pub fn describe(&self) -> String {
        format!(
            "teacher: `{}` ({}; {:.1} min)",
            self.dir.display(),
            if self.reused {
                "reused"
            } else {
                "trained in this run"
            },
            self.seconds / 60.0
        )
    }
}

/// What [`prepare_teacher`] ends with.
#[derive(Debug)]
pub enum TeacherStage {
    /// The teacher is finished.
    Ready(ReadyTeacher),
    /// The stop flag ended its training (a checkpoint was saved); resume to
    /// continue.
    Stopped(Box<TrainOutcome>),
}

/// Finds the finished teacher of `config` under `teachers`, or trains it
/// there (continuing an interrupted run).
pub fn prepare_teacher(
    config: &TeacherConfig,
    teachers: &Path,
    device: Device,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<TeacherStage> {
    let started = Instant::now();
    let dir = teacher_dir(teachers, config);
    // Rank 0 decides for every data-parallel rank (the others may not see
    // its files); the weights' path is the same on all.
    let found = finished_teacher(&dir, config);
    let comm = cm_dist::world();
    if cm_dist::tensors::broadcast_u64(&*comm, found.is_some() as u64) == 1 {
        let weights = found.unwrap_or_else(|| {
            dir.join("checkpoints")
                .join(crate::checkpoint::checkpoint_name(config.train.steps))
                .join(evaluation_weights_file(&config.train.ema_rates))
        });
        observer.on_message(&format!(
            "reusing the finished teacher in {}",
            dir.display()
        ));
        return Ok(TeacherStage::Ready(ReadyTeacher {
            dir,
            weights,
            reused: true,
            seconds: started.elapsed().as_secs_f64(),
        }));
    }
    observer.on_message(&format!("training the teacher in {}", dir.display()));
    let out = run_teacher(config, &dir, true, device, stop, observer)?;
    if out.train.stopped {
        return Ok(TeacherStage::Stopped(Box::new(out.train)));
    }
    let weights = out
        .train
        .checkpoint
        .as_ref()
        .map(|c| c.join(evaluation_weights_file(&config.train.ema_rates)))
        .expect("a finished run has a final checkpoint");
    Ok(TeacherStage::Ready(ReadyTeacher {
        dir,
        weights,
        reused: false,
        seconds: started.elapsed().as_secs_f64(),
    }))
}

/// What a method that starts from a finished teacher leaves (CD, ECT).
#[derive(Debug)]
pub struct FromTeacherOutcome {
    /// The teacher run folder.
    pub teacher_dir: PathBuf,
    /// Whether the teacher was reused rather than trained.
    pub teacher_reused: bool,
    /// The method's loop outcome (the teacher's, if the stop flag ended the
    /// teacher stage).
    pub train: TrainOutcome,
    /// The report, if the run finished.
    pub report: Option<PathBuf>,
    /// The model card, if the run finished.
    pub card: Option<PathBuf>,
    /// The report's sampler rows, if the run finished.
    pub samplers: Vec<crate::run::SamplerRow>,
}

/// The pipeline of every method that starts from a finished EDM teacher
/// (CD, ECT): checks the run folder against `config` first (the teacher
/// stage can be long), gets the teacher of `teacher` under `teachers`
/// ([`prepare_teacher`]: reused, or trained and continued), then runs the
/// method `make` builds from it on the run skeleton into `ctx.run_dir`.
/// When the stop flag ends the teacher stage, returns its outcome with no
/// report.
pub fn run_from_teacher<M: Method>(
    teacher: &TeacherConfig,
    config: &M::Config,
    ctx: RunContext<'_>,
    teachers: &Path,
    make: impl FnOnce(ReadyTeacher) -> M,
) -> Result<FromTeacherOutcome> {
    let RunContext {
        run_dir,
        resume,
        device,
        stop,
        observer,
    } = ctx;
    crate::run::check_run_folder(run_dir, config, resume)?;
    // Both stages must split their batches over the ranks: say so before
    // the teacher stage, which can be long.
    let ranks = cm_dist::world().size();
    teacher.train.shards_for(ranks, "teacher.train.")?;
    config.train().shards_for(ranks, "train.")?;
    let ready = match prepare_teacher(teacher, teachers, device, stop, &mut *observer)? {
        TeacherStage::Ready(ready) => ready,
        TeacherStage::Stopped(train) => {
            return Ok(FromTeacherOutcome {
                teacher_dir: teacher_dir(teachers, teacher),
                teacher_reused: false,
                train: *train,
                report: None,
                card: None,
                samplers: Vec::new(),
            })
        }
    };
    let (teacher_dir, teacher_reused) = (ready.dir.clone(), ready.reused);
    let out = run(
        &mut make(ready),
        RunContext {
            run_dir,
            resume,
            device,
            stop,
            observer,
        },
    )?;
    Ok(FromTeacherOutcome {
        teacher_dir,
        teacher_reused,
        train: out.train,
        report: out.report,
        card: out.card,
        samplers: out.samplers,
    })
}

/// Checks that a student which starts from the teacher's weights means the
/// same thing by a noise level: `sigma_data`, `sigma_min`, `sigma_max` and
/// `rho` of its consistency settings (at dotted path `prefix`) equal the
/// teacher's `[teacher.edm.edm]` (CD, ECT).
pub fn check_student_noise(
    teacher: &TeacherConfig,
    student: &cm_core::ConsistencyConfig,
    prefix: &str,
) -> cm_core::Result<()> {
    let t = &teacher.edm.edm;
    for (name, teacher, student) in [
        ("sigma_data", t.sigma_data, student.sigma_data),
        ("sigma_min", t.sigma_min, student.sigma_min),
        ("sigma_max", t.sigma_max, student.sigma_max),
        ("rho", t.rho, student.rho),
    ] {
        if teacher != student {
            return Err(CoreError::invalid(
                format!("{prefix}{name}"),
                student,
                format!(
                    "the teacher's value, teacher.edm.edm.{name} = {teacher} (the student \
                     starts from the teacher's weights and follows its noise levels)"
                ),
            ));
        }
    }
    Ok(())
}
