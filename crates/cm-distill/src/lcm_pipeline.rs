//! The LCD stage of the LCM pipeline (`cm train-lcm`, `cargo xtask
//! train-lcm`): get the guided teacher ([`cm_train::prepare_teacher`]:
//! reused when a finished run with the same config exists, else trained; its
//! config's `[latent]` puts it, and so this stage, in an autoencoder's
//! latent space), then distill it with [`LcdObjective`] on the run skeleton.
//! The student is the teacher's network plus the w-embedding
//! (`guidance_embedding = true`), started from the teacher's weights. The
//! report shows the teacher's guided Heun grid beside LCM's 1-, 2- and
//! 4-step grids (classes cycling, the default `w`), all decoded from the
//! same noise; the card stores `w`, the skipping-step times (those of the
//! step counts an optional `[search]` stage searched by FID replaced) and
//! the autoencoder, so `cm sample --steps 4 --guidance W --class C` samples
//! it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use cm_core::{
    ClassifierFreeGuidance, Conditioning, ConsistencyConfig, CoreError, DiscretizationSchedule,
    ScheduleConfig, Validate,
};
use cm_data::DataSource;
use cm_nets::{LoraConfig, Model, NetConfig, Preconditioned};
use cm_sample::{edm_sample, EdmSampler, ModelCard};
use cm_train::{
    check_student_noise, run_from_teacher, LatentConfig, LoaderOptions, Method, Observer,
    ReadyTeacher, ReportSampler, RunConfig, RunContext, TeacherConfig, TimestepSearchConfig,
    TrainConfig,
};

use crate::lcd::{LcdConfig, LcdObjective};

/// The step counts whose skipping-step times the card stores.
pub const CARD_STEPS: [usize; 3] = [2, 4, 8];

/// A whole LCD run: `[teacher]` (usually `include =
/// "../teacher/NAME.toml"`, class-conditional with label dropout, and for
/// LCM with `[teacher.latent]`), `[train]` and `[lcd]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LcdRunConfig {
    /// How to train (or find) the guided teacher.
    pub teacher: TeacherConfig,
    /// The distillation loop.
    #[serde(default)]
    pub train: TrainConfig,
    /// The LCD objective.
    #[serde(default)]
    pub lcd: LcdConfig,
    /// LCM-LoRA: when present, the student is the frozen teacher plus
    /// these adapters (no w-embedding; one fixed `w`), and only the
    /// adapters train.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    /// The FID search of the few-step times once distillation ends (CM
    /// Section 6, on the decoded images of a latent run); the times found
    /// replace the skipping-step times of those step counts in the card and
    /// the report's grids. Absent: the card keeps LCM's skipping-step times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<TimestepSearchConfig>,
}

impl Validate for LcdRunConfig {
    fn validate(&self) -> cm_core::Result<()> {
        self.teacher.validate_at("teacher.")?;
        self.train.validate_at("train.")?;
        self.lcd.validate_at("lcd.")?;
        // The card's times come from the schedule's last grid
        // (`LcdConfig::times`): the last trained step, train.steps - 1, must
        // be on it (a schedule may first reach it at total_steps itself).
        let schedule = &self.lcd.recipe.schedule;
        let total_steps = match schedule {
            ScheduleConfig::Fixed(_) => None,
            ScheduleConfig::CtAdaptive(s) => Some(s.total_steps),
            ScheduleConfig::IctExponential(s) => Some(s.total_steps),
        };
        let trained = DiscretizationSchedule::at(schedule, self.train.steps.saturating_sub(1)).n;
        let last = DiscretizationSchedule::at(schedule, u64::MAX).n;
        if let Some(total) = total_steps.filter(|_| trained != last) {
            return Err(CoreError::invalid(
                "lcd.recipe.schedule.total_steps",
                total,
                format!(
                    "a schedule whose last grid (N = {last}) the run reaches: its last step \
                     (train.steps - 1 = {}) trains on N = {trained}, and the card's sampling \
                     times come from the last grid; lower total_steps",
                    self.train.steps.saturating_sub(1)
                ),
            ));
        }
        if self.teacher.net.num_classes() == 0 {
            return Err(CoreError::invalid(
                "teacher.net.num_classes",
                0,
                "a class-conditional teacher (num_classes > 0): LCD distills classifier-free \
                 guidance",
            ));
        }
        if self.teacher.edm.label_dropout <= 0.0 {
            return Err(CoreError::invalid(
                "teacher.edm.label_dropout",
                self.teacher.edm.label_dropout,
                "a label dropout > 0, so the teacher has the unconditional model guidance needs",
            ));
        }
        if self.teacher.loader != LoaderOptions::default() {
            return Err(CoreError::invalid(
                "teacher.loader",
                format!("{:?}", self.teacher.loader),
                "no flips or padding: the teacher learns latents",
            ));
        }
        match &self.lora {
            None => {
                student_config(&self.teacher.net, self.lcd.class_gate)?;
            }
            Some(lora) => {
                lora.validate_at("lora.")?;
                let l = &self.lcd;
                if l.class_gate {
                    return Err(CoreError::invalid(
                        "lcd.class_gate",
                        true,
                        "false with [lora]: LCM-LoRA's student has no w-embedding to gate with",
                    ));
                }
                if l.w_min != l.w_max || l.guidance != l.w_min {
                    return Err(CoreError::invalid(
                        "lcd.w_max",
                        l.w_max,
                        format!(
                            "w_min = w_max = guidance: LCM-LoRA learns one fixed guidance scale \
                             (found w in [{}, {}], guidance {})",
                            l.w_min, l.w_max, l.guidance
                        ),
                    ));
                }
            }
        }
        if let Some(search) = &self.search {
            search.validate_at("search.")?;
            search.check_start_in("search.", self.lcd.recipe.consistency.range())?;
            // FID needs images and their data set's feature network, and
            // the search samples the w-embedding student; refused now
            // rather than after a long distillation.
            if matches!(self.teacher.data, DataSource::Toy(_)) || self.lora.is_some() {
                return Err(CoreError::invalid(
                    "search",
                    "a [search] section",
                    "an LCM on an image data set without [lora] (the search measures FID in \
                     the data set's feature space; 2-D toy points have none)",
                ));
            }
            // A searched start would drop the card's other step counts'
            // times (they lie on the grid below sigma_max), and the student
            // is trained from sigma_max.
            if let Some(lower) = search.start_lower {
                return Err(CoreError::invalid(
                    "search.start_lower",
                    lower,
                    "no start_lower for LCD: sampling starts at the schedule's sigma_max",
                ));
            }
        }
        for steps in CARD_STEPS {
            self.lcd.times(steps).map_err(|e| {
                CoreError::invalid(
                    "lcd.skip",
                    self.lcd.skip,
                    format!("a skipping-step grid with at least {steps} times ({e})"),
                )
            })?;
        }
        check_student_noise(
            &self.teacher,
            &self.lcd.recipe.consistency,
            "lcd.recipe.consistency.",
        )
    }
}

impl RunConfig for LcdRunConfig {
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

    fn latent(&self) -> Option<&LatentConfig> {
        self.teacher.latent.as_ref()
    }
}

/// What an LCD run leaves.
pub type LcdOutcome = cm_train::FromTeacherOutcome;

/// LCD on the run skeleton, from a finished guided teacher.
#[derive(Debug)]
pub struct LcdMethod<'a> {
    config: &'a LcdRunConfig,
    teacher: ReadyTeacher,
    run_dir: PathBuf,
    /// The card's few-step times: LCM's skipping-step times for
    /// [`CARD_STEPS`] until the `[search]` stage replaces some.
    timesteps: BTreeMap<String, Vec<f64>>,
    /// The card's consistency settings: the recipe's, as the search
    /// returns them (LCD refuses `[search] start_lower`, so `sigma_max`
    /// stays where the student was trained from).
    consistency: ConsistencyConfig,
}

/// The adapter's name inside an LCM-LoRA student.
pub const LCM_LORA_ADAPTER: &str = "lcm";
/// The adapter file an LCM-LoRA run writes in its folder (PEFT keys).
pub const LCM_LORA_FILE: &str = "lcm_lora.safetensors";

impl<'a> LcdMethod<'a> {
    /// The method for `config`, distilling `teacher` into `run_dir`.
    pub fn new(config: &'a LcdRunConfig, teacher: ReadyTeacher, run_dir: &Path) -> Self {
        let l = &config.lcd;
        let timesteps = CARD_STEPS
            .iter()
            .filter_map(|&k| Some((k.to_string(), l.times(k).ok()?[1..].to_vec())))
            .collect();
        LcdMethod {
            config,
            teacher,
            run_dir: run_dir.to_path_buf(),
            timesteps,
            consistency: l.recipe.consistency,
        }
    }

    /// The student: the teacher's network plus the w-embedding (LCM), or
    /// the frozen teacher plus fresh adapters (LCM-LoRA).
    fn student(&self, teacher: &Model, observer: &mut dyn Observer) -> cm_train::Result<Model> {
        let device = teacher.device();
        match &self.config.lora {
            None => {
                let config = student_config(teacher.config(), self.config.lcd.class_gate)?;
                let mut student = Model::new(config, device)?;
                let fresh = student.copy_matching_from(teacher)?;
                observer.on_message(&format!(
                    "student = teacher + w-embedding ({} new variables, zero-initialised projection)",
                    fresh.len()
                ));
                Ok(student)
            }
            Some(lora) => {
                let mut student = Model::from_checkpoint(&self.teacher.weights, device)?;
                let line =
                    cm_train::attach_trainable_adapter(&mut student, LCM_LORA_ADAPTER, lora)?;
                observer.on_message(&format!("student = frozen teacher + {line}"));
                Ok(student)
            }
        }
    }
}

/// The student's network: the teacher's with the w-embedding (U-Net, or the
/// residual MLP of 2-D toy data), and with `class_gate` the w-gate on the
/// class embedding (`[lcd] class_gate`).
pub fn student_config(teacher: &NetConfig, class_gate: bool) -> cm_core::Result<NetConfig> {
    match teacher {
        NetConfig::Unet(c) => Ok(NetConfig::Unet(cm_nets::UNetConfig {
            guidance_embedding: true,
            guidance_class_gate: class_gate,
            ..c.clone()
        })),
        NetConfig::Mlp(c) => Ok(NetConfig::Mlp(cm_nets::MlpConfig {
            guidance_embedding: true,
            guidance_class_gate: class_gate,
            ..c.clone()
        })),
        other => Err(CoreError::invalid(
            "teacher.net.arch",
            other.arch(),
            "\"unet\" or \"mlp\" (the student adds the network's guidance embedding)",
        )),
    }
}

impl Method for LcdMethod<'_> {
    type Config = LcdRunConfig;
    type Objective = LcdObjective;
    type Card = ModelCard;

    fn title(&self) -> &str {
        if self.config.lora.is_some() {
            "LCM-LoRA run"
        } else {
            "Latent consistency distillation run"
        }
    }

    fn config(&self) -> &LcdRunConfig {
        self.config
    }

    fn build(
        &mut self,
        device: Device,
        observer: &mut dyn Observer,
    ) -> cm_train::Result<(Model, LcdObjective)> {
        let teacher = Model::from_checkpoint(&self.teacher.weights, device)?;
        let student = self.student(&teacher, observer)?;
        let metric = cm_train::build_metric(
            &self.config.lcd.recipe.metric,
            "lcd.recipe.metric.",
            &student.config().sample_shape(),
            &self.config.teacher.data,
            device,
            observer,
        )?;
        let objective = LcdObjective::new(
            self.config.lcd,
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
        let l = &self.config.lcd;
        let (first, last) = (
            DiscretizationSchedule::at(&l.recipe.schedule, 0).n,
            DiscretizationSchedule::at(&l.recipe.schedule, u64::MAX).n,
        );
        let n = if first == last {
            format!("N = {first}")
        } else {
            format!("N = {first} -> {last}")
        };
        let mut lines = vec![
            format!(
                "{}, guided by classifier-free guidance D_c + w (D_c - D_u)",
                t.describe()
            ),
            match &self.config.lora {
                None => format!(
                    "objective: latent consistency distillation (LCM Alg. 1), skipping step k = {} on \
                     the {n} grid, one guided teacher {:?} step t_(n+k) -> t_n, {} per example, \
                     embedded by the student{}",
                    l.skip,
                    l.solver,
                    l.w_sampler.describe(l.w_min, l.w_max),
                    if l.class_gate {
                        " (and gating its class embedding, e_c + s(w) (e_c - e_null))"
                    } else {
                        ""
                    }
                ),
                Some(lora) => format!(
                    "objective: LCM-LoRA (LCD of LCM Alg. 1 with the student = frozen teacher + LoRA \
                     rank {} alpha {} on {:?}), skipping step k = {} on the {n} grid, one guided \
                     teacher {:?} step t_(n+k) -> t_n, fixed w = {}, target {:?}",
                    lora.rank, lora.alpha, lora.targets, l.skip, l.solver, l.w_min, l.target
                ),
            },
        ];
        // The recipe's words name CD's adjacent pair (t_n, t_(n+1)); LCD's
        // pair is k points apart, and so are the weight's two times.
        lines.extend(l.recipe.describe().into_iter().map(|line| {
            if l.skip == 1 {
                line
            } else if line.starts_with("pairs: discrete lognormal") {
                format!("{line}, each (t_n, t_(n+k)) pair taking the mass between its two times")
            } else {
                line.replace("t_{n+1}", "t_{n+k}")
            }
        }));
        lines.push(format!(
            "grids: classes cycling, w = {}; LCM times on the skipping-step grid: 2 steps {:?}, 4 steps {:?}",
            l.guidance,
            l.times(2).unwrap_or_default(),
            l.times(4).unwrap_or_default()
        ));
        lines
    }

    fn report_samplers<'a>(
        &'a self,
        objective: &'a LcdObjective,
        eval: &'a Model,
    ) -> Vec<ReportSampler<'a>> {
        let w = self.config.lcd.guidance;
        let edm = &self.config.teacher.edm.edm;
        let mut samplers = vec![ReportSampler {
            label: format!("teacher, Heun 18 steps, guided w = {w} (2 x 35 evaluations)"),
            file: "samples_teacher_heun35.png".into(),
            sample: Box::new(move |latents: &Tensor| {
                let teacher = objective.teacher();
                let d = Preconditioned::eval(teacher, edm.preconditioning());
                let null = teacher.null_class().unwrap_or(0);
                let guided = ClassifierFreeGuidance::new(&d, w, null)?;
                let b = latents.size()[0];
                let classes = Tensor::arange(b, (Kind::Int64, latents.device())).remainder(null);
                let mut out = edm_sample(
                    &guided,
                    latents,
                    &edm.grid(),
                    &EdmSampler::default(),
                    Conditioning::class(&classes),
                )?;
                out.nfe *= 2;
                Ok(out)
            }),
        }];
        let range = self.consistency.range();
        for steps in [1usize, 2, 4] {
            // The card's times (searched ones when `[search]` ran; the
            // search keeps the step counts it did not search, and 1 step
            // has none).
            let taus = self
                .timesteps
                .get(&steps.to_string())
                .cloned()
                .unwrap_or_default();
            samplers.push(ReportSampler {
                label: if steps == 1 {
                    "LCM, 1 step".to_string()
                } else {
                    let shown: Vec<String> = taus.iter().map(|t| format!("{t:.4}")).collect();
                    format!("LCM, {steps} steps (times {})", shown.join(", "))
                },
                file: format!("samples_lcm_{steps}step.png"),
                sample: Box::new(move |latents: &Tensor| {
                    Ok(cm_sample::Sampled {
                        x: objective.sample_times(eval, latents, range, &taus)?,
                        nfe: steps,
                    })
                }),
            });
        }
        samplers
    }

    fn card(&self, weights: PathBuf) -> ModelCard {
        let l = &self.config.lcd;
        let timesteps = self.timesteps.clone();
        match &self.config.lora {
            None => ModelCard::Consistency {
                weights,
                consistency: self.consistency,
                timesteps,
                scheduler: None,
                autoencoder: None,
                guidance: Some(l.guidance),
                lora: Vec::new(),
            },
            // The teacher's weights with the adapter file `finish` wrote:
            // the guidance scale is baked into the adapter.
            Some(_) => ModelCard::Consistency {
                weights: std::fs::canonicalize(&self.teacher.weights)
                    .unwrap_or_else(|_| self.teacher.weights.clone()),
                consistency: l.recipe.consistency,
                timesteps,
                scheduler: None,
                autoencoder: None,
                guidance: None,
                lora: vec![cm_sample::LoraRef {
                    file: LCM_LORA_FILE.into(),
                    weight: 1.0,
                }],
            },
        }
    }

    /// LCM-LoRA: writes the evaluation EMA's adapter as a PEFT-keyed
    /// adapter file in the run folder. `[search]`: the few-step times by
    /// FID of the decoded samples against the image data's test split,
    /// kept for the report's grids and the card.
    fn finish(
        &mut self,
        eval: &Model,
        _data: &cm_data::Dataset,
        observer: &mut dyn Observer,
    ) -> cm_train::Result<Vec<String>> {
        if let Some(search) = &self.config.search {
            // The card the search samples from (its weights path is not
            // read), with the autoencoder that decodes its latents; FID is
            // measured on images, so the image data set is loaded (the
            // run's own data are latents).
            let mut card = self.card(PathBuf::new());
            if let (ModelCard::Consistency { autoencoder, .. }, Some(latent)) =
                (&mut card, &self.config.teacher.latent)
            {
                *autoencoder = Some(latent.autoencoder.clone());
            }
            let images = self
                .config
                .teacher
                .data
                .load(None)
                .map_err(|e| cm_train::TrainError::Batch(e.to_string()))?;
            let (times, lines) =
                cm_train::search_times(search, &card, eval, &images, observer)?.into_parts();
            if let Some((timesteps, consistency)) = times {
                self.timesteps = timesteps;
                self.consistency = consistency;
            }
            return Ok(lines);
        }
        if self.config.lora.is_none() {
            return Ok(Vec::new());
        }
        cm_train::write_adapter_file(
            eval,
            LCM_LORA_ADAPTER,
            &self.run_dir,
            LCM_LORA_FILE,
            observer,
        )
    }
}

/// Runs the LCD stage into `run_dir`, with teachers kept under `teachers`
/// (see [`cm_distill::run_cd`](crate::run_cd) for resume and stop).
pub fn run_lcd(
    config: &LcdRunConfig,
    run_dir: &Path,
    teachers: &Path,
    resume: bool,
    device: Device,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> cm_train::Result<LcdOutcome> {
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
        |teacher| LcdMethod::new(config, teacher, run_dir),
    )
}

/// The whole latent consistency model pipeline (`cm train-lcm`,
/// `cargo xtask train-lcm`): `[autoencoder]` (an autoencoder run config,
/// usually `include = "../autoencoder/NAME.toml"`), `[teacher]` (the guided
/// teacher in its latent space: `[net]` takes the latent shape; the
/// pipeline fills in `[teacher.latent]`), `[train]` and `[lcd]` (the LCD
/// stage).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LcmRunConfig {
    /// The autoencoder stage.
    pub autoencoder: cm_train::AutoencoderRunConfig,
    /// The guided latent teacher (without `[latent]`).
    pub teacher: TeacherConfig,
    /// The LCD loop.
    #[serde(default)]
    pub train: TrainConfig,
    /// The LCD objective.
    #[serde(default)]
    pub lcd: LcdConfig,
    /// LCM-LoRA: adapters on the frozen teacher instead of a w-embedding
    /// student (see [`LcdRunConfig::lora`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    /// The few-step times searched by FID after LCD (see
    /// [`LcdRunConfig::search`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<TimestepSearchConfig>,
}

impl Validate for LcmRunConfig {
    fn validate(&self) -> cm_core::Result<()> {
        self.autoencoder
            .validate()
            .map_err(|e| prefixed("autoencoder.", e))?;
        if let Some(latent) = &self.teacher.latent {
            return Err(CoreError::invalid(
                "teacher.latent.autoencoder",
                latent.autoencoder.display(),
                "no [teacher.latent] section: the pipeline trains the autoencoder of \
                 [autoencoder] and names it itself",
            ));
        }
        if self.teacher.data != self.autoencoder.data {
            return Err(CoreError::invalid(
                "teacher.data",
                self.teacher.data.to_string(),
                format!(
                    "the autoencoder's data ({}): the teacher learns its latents",
                    self.autoencoder.data
                ),
            ));
        }
        let NetConfig::Autoencoder(ae) = &self.autoencoder.net else {
            unreachable!("checked by AutoencoderRunConfig::validate")
        };
        let latent = ae.latent_shape();
        if self.teacher.net.sample_shape() != latent {
            return Err(CoreError::invalid(
                "teacher.net",
                format!("{:?}", self.teacher.net.sample_shape()),
                format!(
                    "a network for the autoencoder's latents {latent:?} (in_channels = {}, \
                     resolution = {})",
                    latent[0], latent[1]
                ),
            ));
        }
        self.lcd_config(PathBuf::from("autoencoder.toml"))
            .validate()
    }
}

/// Field paths of the autoencoder stage's errors start with `autoencoder.`.
fn prefixed(prefix: &str, e: CoreError) -> CoreError {
    match e {
        CoreError::InvalidConfig {
            field,
            value,
            expected,
        } => CoreError::InvalidConfig {
            field: format!("{prefix}{field}"),
            value,
            expected,
        },
        other => other,
    }
}

impl LcmRunConfig {
    /// The LCD stage's config, its teacher in the latent space of the
    /// autoencoder card `autoencoder`.
    pub fn lcd_config(&self, autoencoder: PathBuf) -> LcdRunConfig {
        let mut teacher = self.teacher.clone();
        teacher.latent = Some(LatentConfig { autoencoder });
        LcdRunConfig {
            teacher,
            train: self.train.clone(),
            lcd: self.lcd,
            lora: self.lora.clone(),
            search: self.search.clone(),
        }
    }
}

/// Where the autoencoder of `config` lives: `TEACHERS/autoencoder-<hash>`,
/// the hash of its resolved config (a changed config trains anew).
pub fn autoencoder_dir(teachers: &Path, config: &cm_train::AutoencoderRunConfig) -> PathBuf {
    let text = toml::to_string(config).expect("configs serialize to TOML");
    teachers.join(format!(
        "autoencoder-{:016x}",
        cm_core::fnv1a64(text.as_bytes())
    ))
}

/// What the LCM pipeline leaves: the autoencoder's folder and card, and
/// the LCD stage's outcome (teacher, loop, report, card).
#[derive(Debug)]
pub struct LcmOutcome {
    /// The autoencoder run folder.
    pub autoencoder_dir: PathBuf,
    /// Whether the autoencoder was reused rather than trained now.
    pub autoencoder_reused: bool,
    /// The LCD stage (`train.stopped` when Ctrl-C ended any stage).
    pub lcd: LcdOutcome,
}

/// Runs the LCM pipeline into `run_dir`: the autoencoder (reused when its
/// folder under `teachers` holds a finished run of the same config), the
/// guided latent teacher (likewise), then LCD ([`run_lcd`]). Interrupted
/// stages continue from their newest checkpoints; with `resume` the LCD
/// stage does too.
pub fn run_lcm(
    config: &LcmRunConfig,
    run_dir: &Path,
    teachers: &Path,
    resume: bool,
    device: Device,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> cm_train::Result<LcmOutcome> {
    config.validate()?;
    let ae_dir = autoencoder_dir(teachers, &config.autoencoder);
    let card = ae_dir.join(cm_sample::CARD_FILE);
    // A card with a scaling factor is written only when the run finished.
    let found = cm_sample::AutoencoderCard::load(&card).is_ok()
        && std::fs::read_to_string(ae_dir.join("config.toml")).ok()
            == toml::to_string(&config.autoencoder).ok();
    // Rank 0 decides for every data-parallel rank (the others may not see
    // its files), as for the teacher.
    let comm = cm_dist::world();
    let reused = cm_dist::tensors::broadcast_u64(&*comm, found as u64) == 1;
    // The teacher's [latent] names the card as `teachers` does (relative
    // paths from the working directory, as every path of a config), so the
    // teacher's reuse key is the same on every machine for the same
    // `--teachers` (the eval configs name `runs/teachers/teacher-<hash>`).
    if reused {
        observer.on_message(&format!(
            "reusing the finished autoencoder in {}",
            ae_dir.display()
        ));
    } else {
        observer.on_message(&format!("training the autoencoder in {}", ae_dir.display()));
        let out = cm_train::run_autoencoder(
            &config.autoencoder,
            &ae_dir,
            true,
            device,
            stop,
            &mut *observer,
        )?;
        if out.train.stopped {
            return Ok(LcmOutcome {
                autoencoder_dir: ae_dir,
                autoencoder_reused: false,
                lcd: LcdOutcome {
                    teacher_dir: PathBuf::new(),
                    teacher_reused: false,
                    train: out.train,
                    report: None,
                    card: None,
                    samplers: Vec::new(),
                },
            });
        }
    }
    let lcd = config.lcd_config(card);
    let out = run_lcd(&lcd, run_dir, teachers, resume, device, stop, observer)?;
    Ok(LcmOutcome {
        autoencoder_dir: ae_dir,
        autoencoder_reused: reused,
        lcd: out,
    })
}
