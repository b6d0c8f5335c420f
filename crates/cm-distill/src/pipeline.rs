//! The distillation pipeline behind `cargo xtask train-cd`: train the EDM
//! teacher (or reuse a finished teacher run whose config matches), distill it
//! on the shared training loop, then write side-by-side sample grids (teacher
//! Heun-35, teacher Euler-1, CD 1-step, CD 2-step, all from the same noise)
//! and a short markdown report into the run folder.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use cm_core::{Solver, Validate};
use cm_nets::{Model, Preconditioned};
use cm_report as report;
use cm_sample::{consistency_sample, edm_sample, EdmSampler, ModelCard, CARD_FILE};
use cm_train::teacher::loader_for;
use cm_train::trainer::{checkpoint_name, final_weights, latest_checkpoint};
use cm_train::{mix_seed, run_teacher, train, Observer, TeacherConfig, TrainConfig, TrainError};

use crate::cd::{CdConfig, CdObjective};

/// A whole CD run: `[teacher]` (a complete teacher config), `[train]` (the
/// distillation loop) and `[cd]`.
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
}

impl Validate for CdRunConfig {
    fn validate(&self) -> cm_core::Result<()> {
        self.teacher.validate_at("teacher.")?;
        self.train.validate_at("train.")?;
        self.cd.validate_at("cd.")
    }
}

/// FNV-1a, 64 bits: a stable name for a teacher config.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where the teacher of `config` lives: `TEACHERS/teacher-<hash>` where the
/// hash is of the resolved teacher config, so a changed config trains anew.
pub fn teacher_dir(teachers: &Path, config: &TeacherConfig) -> PathBuf {
    let text = toml::to_string(config).expect("configs serialize to TOML");
    teachers.join(format!("teacher-{:016x}", fnv1a(&text)))
}

/// A finished teacher run in `dir` for `config`: its final checkpoint folder.
fn finished_teacher(dir: &Path, config: &TeacherConfig) -> Option<PathBuf> {
    let written = std::fs::read_to_string(dir.join("config.toml")).ok()?;
    if written != toml::to_string(config).ok()? {
        return None;
    }
    let (step, path) = latest_checkpoint(dir)?;
    (step == config.train.steps).then_some(path)
}

/// What a CD run leaves.
#[derive(Debug)]
pub struct CdOutcome {
    /// The teacher run folder.
    pub teacher_dir: PathBuf,
    /// Whether the teacher was reused rather than trained.
    pub teacher_reused: bool,
    /// The distillation loop's outcome.
    pub train: cm_train::TrainOutcome,
    /// The report, if the run finished.
    pub report: Option<PathBuf>,
}

/// Runs the pipeline into `run_dir`, with teachers kept under `teachers`.
/// With `resume`, an interrupted teacher or distillation continues from its
/// newest checkpoint. When `stop` is raised, the current stage saves and the
/// function returns with `train.stopped = true`.
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
    let started = Instant::now();
    let tdir = teacher_dir(teachers, &config.teacher);
    let (teacher_ckpt, reused) = match finished_teacher(&tdir, &config.teacher) {
        Some(path) => {
            observer.on_message(&format!(
                "reusing the finished teacher in {}",
                tdir.display()
            ));
            (path, true)
        }
        None => {
            observer.on_message(&format!("training the teacher in {}", tdir.display()));
            let out = run_teacher(&config.teacher, &tdir, true, device, stop, observer)?;
            if out.train.stopped {
                return Ok(CdOutcome {
                    teacher_dir: tdir,
                    teacher_reused: false,
                    train: out.train,
                    report: None,
                });
            }
            let path = tdir
                .join("checkpoints")
                .join(checkpoint_name(config.teacher.train.steps));
            (path, false)
        }
    };
    let teacher_s = started.elapsed().as_secs_f64();
    let ema_file = match config.teacher.train.ema_rates.first() {
        Some(rate) => format!("ema_{rate}.safetensors"),
        None => "online.safetensors".to_string(),
    };
    let teacher = Model::from_checkpoint(teacher_ckpt.join(&ema_file), device)?;
    // The student starts from the teacher's weights (CM, Section 4).
    let student = Model::from_checkpoint(teacher_ckpt.join(&ema_file), device)?;

    std::fs::create_dir_all(run_dir)
        .map_err(TrainError::io("cannot create run folder", run_dir))?;
    let resolved = toml::to_string(config).expect("configs serialize to TOML");
    std::fs::write(run_dir.join("config.toml"), resolved)
        .map_err(TrainError::io("cannot write", run_dir.join("config.toml")))?;
    let data = config
        .teacher
        .data
        .load(None)
        .map_err(|e| TrainError::Batch(e.to_string()))?;
    let source = loader_for(
        &data,
        config.teacher.loader,
        &config.train,
        student.config(),
    )?;
    let mut objective = CdObjective::new(config.cd, teacher, config.teacher.edm.edm, &student)?;
    observer.on_message("distilling");
    let distill_started = Instant::now();
    let out = train(
        &mut objective,
        student,
        &source,
        &config.train,
        run_dir,
        resume,
        stop,
        observer,
    )?;
    let distill_s = distill_started.elapsed().as_secs_f64();
    if out.stopped {
        return Ok(CdOutcome {
            teacher_dir: tdir,
            teacher_reused: reused,
            train: out,
            report: None,
        });
    }
    let report = write_report(
        config, &objective, &out, run_dir, &tdir, reused, teacher_s, distill_s,
    )?;
    ModelCard::Consistency {
        weights: final_weights(&config.train),
        consistency: config.cd.recipe.consistency,
        timesteps: [("2".to_string(), vec![config.cd.two_step_tau])].into(),
    }
    .save(run_dir.join(CARD_FILE))?;
    Ok(CdOutcome {
        teacher_dir: tdir,
        teacher_reused: reused,
        train: out,
        report: Some(report),
    })
}

/// Samples one grid per sampler from the same latents, timing each.
#[allow(clippy::too_many_arguments)]
fn write_report(
    config: &CdRunConfig,
    objective: &CdObjective,
    out: &cm_train::TrainOutcome,
    run_dir: &Path,
    teacher_dir: &Path,
    reused: bool,
    teacher_s: f64,
    distill_s: f64,
) -> cm_train::Result<PathBuf> {
    let student = out.emas.first().map(|e| &e.model).unwrap_or(&out.online);
    let edm = config.teacher.edm.edm;
    let c = config.cd.recipe.consistency;
    tch::manual_seed(mix_seed(config.train.seed ^ 0xCD_5A4D, 0));
    let mut shape = vec![config.train.sample_count as i64];
    shape.extend(student.config().sample_shape());
    let latents = Tensor::randn(shape, (Kind::Float, student.device()));
    let teacher_d = Preconditioned::eval(objective.teacher(), edm.preconditioning());
    let student_f = Preconditioned::eval(student, c.parameterization());
    let mut rows = Vec::new();
    let runs: [(&str, &str); 4] = [
        ("teacher, Heun 18 steps", "samples_teacher_heun35.png"),
        ("teacher, Euler 1 step", "samples_teacher_euler1.png"),
        ("CD, 1 step", "samples_cd_1step.png"),
        ("CD, 2 steps", "samples_cd_2step.png"),
    ];
    for (i, (label, file)) in runs.iter().enumerate() {
        tch::manual_seed(mix_seed(config.train.seed, 77));
        let t = Instant::now();
        let sampled = match i {
            0 => edm_sample(
                &teacher_d,
                &latents,
                &edm.grid(),
                &EdmSampler::default(),
                None,
            )?,
            1 => edm_sample(
                &teacher_d,
                &latents,
                &edm.grid(),
                &EdmSampler {
                    steps: 1,
                    solver: Solver::Euler,
                    ..Default::default()
                },
                None,
            )?,
            2 => consistency_sample(&student_f, &latents, c.sigma_max, c.sigma_min, &[], None)?,
            _ => consistency_sample(
                &student_f,
                &latents,
                c.sigma_max,
                c.sigma_min,
                &[config.cd.two_step_tau],
                None,
            )?,
        };
        let secs = t.elapsed().as_secs_f64();
        let path = run_dir.join(file);
        if sampled.x.dim() == 4 {
            report::write_image_grid(&sampled.x, &path)?;
        } else {
            report::write_scatter(&sampled.x, &path)?;
        }
        rows.push((label, file, sampled.nfe, secs));
    }
    let last_loss = out.losses.last().map(|l| l.1).unwrap_or(f64::NAN);
    let mut md = String::new();
    let _ = writeln!(md, "# Consistency distillation run\n");
    let _ = writeln!(
        md,
        "- teacher: `{}` ({}; {:.1} min)",
        teacher_dir.display(),
        if reused {
            "reused"
        } else {
            "trained in this run"
        },
        teacher_s / 60.0
    );
    let _ = writeln!(
        md,
        "- distillation: {} steps, batch {}, {:.1} min, final loss {last_loss:.5}",
        out.step,
        config.train.batch_size,
        distill_s / 60.0
    );
    let _ = writeln!(
        md,
        "- recipe: N(k), mu(k) {:?}; metric {:?}; weighting {:?}; solver {:?}\n",
        config.cd.recipe.schedule,
        config.cd.recipe.metric,
        config.cd.recipe.weighting,
        config.cd.solver
    );
    let _ = writeln!(
        md,
        "| sampler | NFE | seconds for {} samples | grid |",
        config.train.sample_count
    );
    let _ = writeln!(md, "| --- | ---: | ---: | --- |");
    for (label, file, nfe, secs) in &rows {
        let _ = writeln!(md, "| {label} | {nfe} | {secs:.2} | ![{label}]({file}) |");
    }
    let _ = writeln!(
        md,
        "\nLoss curve: ![loss](loss.png). Metrics: `metrics.csv`. Config: `config.toml`."
    );
    let path = run_dir.join("report.md");
    std::fs::write(&path, md).map_err(TrainError::io("cannot write", &path))?;
    Ok(path)
}
