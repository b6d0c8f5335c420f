//! The EDM teacher pipeline: a TOML config naming the data, the network, the
//! loop settings and the EDM objective; [`run_teacher`] loads the data,
//! builds (or resumes) the network, trains on the shared loop and writes the
//! final sample grids (35-NFE Heun, and the 1-step Euler sample for
//! contrast) into the run folder.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use tch::Device;

use cm_core::{CoreError, Solver, Validate};
use cm_data::{BatchLoader, DataSource, LoaderConfig};
use cm_nets::{Model, NetConfig, Preconditioned};
use cm_sample::{edm_sample, EdmSampler, ModelCard, CARD_FILE};

use crate::edm::{EdmObjective, EdmObjectiveConfig};
use crate::error::{Result, TrainError};
use crate::objective::{Batch, BatchSource};
use crate::trainer::{
    eval_model, final_weights, fixed_latents, mix_seed, train, Observer, TrainConfig, TrainOutcome,
};
use cm_report as report;

/// Loader options beyond batch size and seed (which come from `[train]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderOptions {
    /// Random horizontal flips.
    pub hflip: bool,
    /// Pixels of padding (value -1) on each side; 2 turns 28 into 32.
    pub pad: usize,
}

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
}

impl TeacherConfig {
    /// Validates with a dotted-path prefix (`"teacher."` inside a CD config).
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        self.net.validate()?;
        self.train.validate_at(&format!("{prefix}train."))?;
        self.edm.validate_at(&format!("{prefix}edm."))?;
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

/// Adapts cm-data's random-access loader to the training loop.
#[derive(Debug)]
pub struct LoaderSource(pub BatchLoader);

impl BatchSource for LoaderSource {
    fn batch(&self, step: u64, device: Device) -> Result<Batch> {
        let b = self
            .0
            .batch(step)
            .map_err(|e| TrainError::Batch(e.to_string()))?;
        Ok(Batch {
            x: b.x.to_device(device),
            labels: b.labels.map(|l| l.to_device(device)),
        })
    }
}

/// Builds the batch source for a data set, checking that its examples fit
/// the network.
pub fn loader_for(
    data: &cm_data::Dataset,
    options: LoaderOptions,
    train: &TrainConfig,
    net: &NetConfig,
) -> Result<LoaderSource> {
    let config = LoaderConfig::new(train.batch_size, train.seed)
        .with_hflip(options.hflip)
        .with_pad(options.pad);
    let loader =
        BatchLoader::new(data.train(), config).map_err(|e| TrainError::Batch(e.to_string()))?;
    let mut shape: Vec<i64> = data.example_shape().iter().map(|&d| d as i64).collect();
    if shape.len() == 3 {
        shape[1] += 2 * options.pad as i64;
        shape[2] += 2 * options.pad as i64;
    }
    if shape != net.sample_shape() {
        return Err(TrainError::Batch(format!(
            "the data gives examples of shape {shape:?} (after padding), the network takes {:?}",
            net.sample_shape()
        )));
    }
    if net.num_classes() > 0 && net.num_classes() != data.num_classes() {
        return Err(TrainError::Batch(format!(
            "the network has {} classes, the data {}",
            net.num_classes(),
            data.num_classes()
        )));
    }
    Ok(LoaderSource(loader))
}

/// What a teacher run leaves.
#[derive(Debug)]
pub struct TeacherOutcome {
    /// The loop's outcome (online network, EMAs, losses, checkpoint).
    pub train: TrainOutcome,
}

/// Runs (or with `resume`, continues) an EDM teacher run into `run_dir`:
/// writes the resolved config to `run_dir/config.toml`, trains, and unless
/// stopped writes `samples_heun35.png` and `samples_euler1.png` from the
/// first EMA.
pub fn run_teacher(
    config: &TeacherConfig,
    run_dir: &Path,
    resume: bool,
    device: Device,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<TeacherOutcome> {
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
    let mut objective = EdmObjective { config: config.edm };
    let outcome = train(
        &mut objective,
        model,
        &source,
        &config.train,
        run_dir,
        resume,
        stop,
        observer,
    )?;
    if !outcome.stopped {
        write_final_samples(config, &outcome, run_dir)?;
        ModelCard::Edm {
            weights: final_weights(&config.train),
            edm: config.edm.edm,
            sampler: config.edm.sampler,
        }
        .save(run_dir.join(CARD_FILE))?;
    }
    Ok(TeacherOutcome { train: outcome })
}

fn write_final_samples(
    config: &TeacherConfig,
    outcome: &TrainOutcome,
    run_dir: &Path,
) -> Result<()> {
    let model = eval_model(&outcome.online, &outcome.emas);
    let denoiser = Preconditioned::eval(model, config.edm.edm.preconditioning());
    let latents = fixed_latents(model, config.train.sample_count, config.train.seed);
    let grid = config.edm.edm.grid();
    for (name, sampler) in [
        (
            "samples_heun35.png",
            EdmSampler {
                steps: 18,
                solver: Solver::Heun,
                ..Default::default()
            },
        ),
        (
            "samples_euler1.png",
            EdmSampler {
                steps: 1,
                solver: Solver::Euler,
                ..Default::default()
            },
        ),
    ] {
        let x = edm_sample(&denoiser, &latents, &grid, &sampler, None)?.x;
        report::write_samples(&x, &run_dir.join(name))?;
    }
    Ok(())
}

/// Writes `config` as the run's `config.toml`. When resuming a folder that
/// already has one, the two must agree once `with_steps_of` has copied the
/// new step counts into the old config (a run may be extended); otherwise the
/// checkpoints would continue under settings they were not made with.
pub fn write_run_config<T>(
    run_dir: &Path,
    config: &T,
    resume: bool,
    with_steps_of: impl Fn(&mut T, &T),
) -> Result<()>
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq + Validate,
{
    let path = run_dir.join("config.toml");
    if resume && path.is_file() {
        let mut old: T = cm_core::load_toml(&path)?;
        with_steps_of(&mut old, config);
        if old != *config {
            return Err(TrainError::RunFolder {
                path,
                reason: "the config differs from the one this run was started with (only step counts may change); \
                         restore it, or start a new run folder"
                    .into(),
            });
        }
    }
    std::fs::create_dir_all(run_dir)
        .map_err(TrainError::io("cannot create run folder", run_dir))?;
    let text = toml::to_string(config).expect("configs serialize to TOML");
    std::fs::write(&path, text).map_err(TrainError::io("cannot write", &path))
}
