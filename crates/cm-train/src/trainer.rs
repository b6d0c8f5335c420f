//! The one training loop every objective runs on: per-step reseeding of
//! libtorch's generator (so a resumed run reproduces an uninterrupted one),
//! Adam / RAdam with saved state, warm-up and clipping, EMA copies, atomic
//! checkpoints with retention, a stop flag (Ctrl-C) that saves before
//! returning, NaN detection, a metrics CSV, sample grids and a loss plot.
//!
//! Run folder layout:
//! ```text
//! RUN/config.toml                       the resolved config (written by the caller)
//! RUN/metrics.csv                       step,loss,lr,grad_norm,elapsed_s,steps_per_s
//! RUN/loss.png                          loss curve
//! RUN/samples/step_0001000.png          sample grids from the first EMA
//! RUN/checkpoints/step_0001000/         online.safetensors (+ .toml), ema_RATE.*,
//!                                       extra networks, optimizer.safetensors, state.json
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use cm_core::CoreError;
use cm_nets::Model;

use crate::ema::Ema;
use crate::error::{Result, TrainError};
use crate::objective::{BatchSource, Objective};
use crate::optim::{Optimizer, OptimizerConfig};
use cm_report as report;

/// Loop settings shared by every objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Total optimizer steps.
    pub steps: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// Seed of everything random (weights, batches, noise).
    pub seed: u64,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// EMA rates of the evaluation copies (the first one makes the sample grids).
    pub ema_rates: Vec<f64>,
    /// Warm the EMA rates up as `min(rate, (1+k)/(10+k))`.
    pub ema_warmup: bool,
    /// Save a checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Keep this many newest checkpoints.
    pub keep_last: usize,
    /// Write a sample grid every this many steps (0: only at the end).
    pub sample_every: u64,
    /// Samples in each grid.
    pub sample_count: usize,
    /// Report to the observer every this many steps.
    pub log_every: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            batch_size: 64,
            seed: 0,
            optimizer: OptimizerConfig::default(),
            ema_rates: vec![0.999],
            ema_warmup: true,
            checkpoint_every: 500,
            keep_last: 2,
            sample_every: 0,
            sample_count: 64,
            log_every: 10,
        }
    }
}

impl TrainConfig {
    /// Checks the ranges; `prefix` is the dotted path of the section.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        let f = |n: &str| format!("{prefix}{n}");
        for (name, v) in [
            ("steps", self.steps),
            ("checkpoint_every", self.checkpoint_every),
            ("log_every", self.log_every),
        ] {
            if v == 0 {
                return Err(CoreError::invalid(f(name), v, "at least 1"));
            }
        }
        for (name, v) in [
            ("batch_size", self.batch_size),
            ("keep_last", self.keep_last),
            ("sample_count", self.sample_count),
        ] {
            if v == 0 {
                return Err(CoreError::invalid(f(name), v, "at least 1"));
            }
        }
        if let Some(r) = self.ema_rates.iter().find(|r| !(0.0..1.0).contains(*r)) {
            return Err(CoreError::invalid(f("ema_rates"), r, "rates in [0, 1)"));
        }
        for (i, r) in self.ema_rates.iter().enumerate() {
            if self.ema_rates[..i].contains(r) {
                return Err(CoreError::invalid(
                    f("ema_rates"),
                    r,
                    "distinct rates (each names a checkpoint file)",
                ));
            }
        }
        self.optimizer.validate_at(&f("optimizer."))
    }
}

/// Mixes a seed and a step into one generator seed (splitmix64), so every
/// step draws from its own reproducible stream.
pub fn mix_seed(seed: u64, step: u64) -> i64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// What the loop reports about a step.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// The step just finished (1-based count of updates).
    pub step: u64,
    /// Total steps of the run.
    pub total: u64,
    /// Its loss.
    pub loss: f64,
    /// Its learning rate.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Steps per second over this session.
    pub steps_per_s: f64,
    /// Examples per second over this session.
    pub images_per_s: f64,
}

/// Receives progress; binaries show a bar or log lines, libraries stay quiet.
pub trait Observer {
    /// Training (re)starts at `step` of `total`.
    fn on_start(&mut self, _step: u64, _total: u64) {}
    /// A step finished (called every `log_every` steps and at the end).
    fn on_step(&mut self, _info: &StepInfo) {}
    /// Something worth telling (checkpoint written, resumed, stopped).
    fn on_message(&mut self, _message: &str) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {}

/// What a finished (or stopped) run leaves.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The online network.
    pub online: Model,
    /// The evaluation EMAs, in `ema_rates` order.
    pub emas: Vec<Ema>,
    /// Updates applied so far.
    pub step: u64,
    /// True when the stop flag ended the run early (a checkpoint was saved).
    pub stopped: bool,
    /// `(step, loss)` of every step run in this session.
    pub losses: Vec<(u64, f64)>,
    /// The newest checkpoint folder.
    pub checkpoint: Option<PathBuf>,
}

/// The checkpoint folder name of a step.
pub fn checkpoint_name(step: u64) -> String {
    format!("step_{step:07}")
}

/// The weights a finished run is used through, relative to its run folder:
/// the first EMA of the final checkpoint (the online weights when there is no
/// EMA). Model cards (`model.toml`) point here.
pub fn final_weights(config: &TrainConfig) -> PathBuf {
    let file = match config.ema_rates.first() {
        Some(rate) => format!("ema_{rate}.safetensors"),
        None => "online.safetensors".to_string(),
    };
    PathBuf::from("checkpoints")
        .join(checkpoint_name(config.steps))
        .join(file)
}

/// The complete checkpoints (folders `step_*` holding `state.json`) in
/// `run_dir/checkpoints`, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(run_dir.join("checkpoints")) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step_")?.parse::<u64>().ok()?;
            e.path()
                .join("state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The newest complete checkpoint in `run_dir/checkpoints`, by step.
pub fn latest_checkpoint(run_dir: &Path) -> Option<(u64, PathBuf)> {
    list_checkpoints(run_dir).pop()
}

/// Flushes a folder's entries (a rename inside it) to disk.
fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(TrainError::io("cannot flush", dir))
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: u64,
    optimizer_steps: u64,
    seed: u64,
    objective: String,
    ema_rates: Vec<f64>,
}

/// Everything the loop owns while it runs.
struct Session<'a> {
    config: &'a TrainConfig,
    run_dir: &'a Path,
    online: Model,
    emas: Vec<Ema>,
    optimizer: Optimizer,
}

impl Session<'_> {
    fn save_checkpoint(&self, objective: &dyn Objective, step: u64) -> Result<PathBuf> {
        let dir = self.run_dir.join("checkpoints");
        let final_dir = dir.join(checkpoint_name(step));
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            checkpoint_name(step),
            std::process::id()
        ));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(TrainError::io("cannot clear", &tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(TrainError::io("cannot create", &tmp))?;
        self.online.save(tmp.join("online.safetensors"))?;
        for ema in &self.emas {
            ema.model
                .save(tmp.join(format!("{}.safetensors", ema.name())))?;
        }
        for (name, model) in objective.extra_models() {
            model.save(tmp.join(format!("{name}.safetensors")))?;
        }
        let opt_path = tmp.join("optimizer.safetensors");
        let opt_state = self.optimizer.state_tensors();
        cm_nets::write_atomic(&opt_path, |t| Ok(Tensor::write_safetensors(&opt_state, t)?))?;
        let state = CheckpointState {
            step,
            optimizer_steps: self.optimizer.steps(),
            seed: self.config.seed,
            objective: objective.name().to_string(),
            ema_rates: self.config.ema_rates.clone(),
        };
        let json = serde_json::to_string_pretty(&state).expect("state serializes");
        let config_src = self.run_dir.join("config.toml");
        cm_nets::write_atomic(&tmp.join("state.json"), |t| {
            fs::write(t, json.as_bytes()).map_err(|source| cm_nets::NetError::Io {
                action: "cannot write",
                path: t.to_path_buf(),
                source,
            })
        })?;
        if config_src.is_file() {
            // The resolved config travels with the weights.
            fs::copy(&config_src, tmp.join("config.toml"))
                .map_err(TrainError::io("cannot copy", &config_src))?;
        }
        sync_dir(&tmp)?;
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir).map_err(TrainError::io("cannot replace", &final_dir))?;
        }
        // The folder appears complete or not at all.
        fs::rename(&tmp, &final_dir)
            .map_err(TrainError::io("cannot rename into place", &final_dir))?;
        sync_dir(&dir)?;
        self.prune_checkpoints(step)?;
        Ok(final_dir)
    }

    /// Keeps the newest `keep_last` complete checkpoints; never the one just
    /// written (`current`).
    fn prune_checkpoints(&self, current: u64) -> Result<()> {
        let all = list_checkpoints(self.run_dir);
        let excess = all.len().saturating_sub(self.config.keep_last);
        for (step, path) in all.into_iter().take(excess) {
            if step != current {
                fs::remove_dir_all(&path)
                    .map_err(TrainError::io("cannot remove old checkpoint", &path))?;
            }
        }
        Ok(())
    }

    fn load_checkpoint(&mut self, objective: &mut dyn Objective, dir: &Path) -> Result<u64> {
        let state_path = dir.join("state.json");
        let text =
            fs::read_to_string(&state_path).map_err(TrainError::io("cannot read", &state_path))?;
        let state: CheckpointState =
            serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
                path: state_path.clone(),
                reason: format!("corrupt state: {e}"),
            })?;
        if state.objective != objective.name() {
            return Err(TrainError::Checkpoint {
                path: state_path,
                reason: format!(
                    "written by objective `{}`, resuming `{}`",
                    state.objective,
                    objective.name()
                ),
            });
        }
        if state.ema_rates != self.config.ema_rates || state.seed != self.config.seed {
            return Err(TrainError::Checkpoint {
                path: state_path,
                reason: format!(
                    "seed / EMA rates differ from the config (checkpoint: seed {}, rates {:?}; config: seed {}, rates {:?})",
                    state.seed, state.ema_rates, self.config.seed, self.config.ema_rates
                ),
            });
        }
        self.online.load_weights(dir.join("online.safetensors"))?;
        for ema in &mut self.emas {
            let name = ema.name();
            ema.model
                .load_weights(dir.join(format!("{name}.safetensors")))?;
        }
        for (name, model) in objective.extra_models_mut() {
            model.load_weights(dir.join(format!("{name}.safetensors")))?;
        }
        let opt_path = dir.join("optimizer.safetensors");
        let tensors = Tensor::read_safetensors(&opt_path)?;
        self.optimizer
            .load_state(tensors, state.optimizer_steps)
            .map_err(|reason| TrainError::Checkpoint {
                path: opt_path,
                reason,
            })?;
        Ok(state.step)
    }
}

/// Rewrites `metrics.csv` keeping the rows of steps `<= step` (a resumed run
/// continues after its checkpoint; rows written after it are redone).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, line)| {
            *i == 0
                || line
                    .split(',')
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|s| s <= step)
        })
        .map(|(_, l)| l)
        .collect();
    fs::write(path, kept.join("\n") + "\n").map_err(TrainError::io("cannot rewrite", path))
}

/// Reads `(step, loss)` pairs back from `metrics.csv` (for the loss plot).
pub fn read_losses(path: &Path) -> Vec<(u64, f64)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut it = l.split(',');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// Trains `online` with `objective` on batches from `source` for
/// `config.steps` steps, writing the run folder `run_dir` (see the module
/// docs). With `resume`, continues from the newest checkpoint in `run_dir`
/// if there is one. When `stop` becomes true the loop saves a checkpoint and
/// returns with `stopped = true`.
#[allow(clippy::too_many_arguments)]
pub fn train(
    objective: &mut dyn Objective,
    online: Model,
    source: &dyn BatchSource,
    config: &TrainConfig,
    run_dir: &Path,
    resume: bool,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<TrainOutcome> {
    config.validate_at("train.")?;
    fs::create_dir_all(run_dir).map_err(TrainError::io("cannot create run folder", run_dir))?;
    let device = online.device();
    let emas = config
        .ema_rates
        .iter()
        .map(|&rate| {
            let mut model = Model::new(online.config().clone(), device)?;
            model.copy_from(&online)?;
            Ok(Ema {
                rate,
                warmup: config.ema_warmup,
                model,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let optimizer = Optimizer::new(online.var_store(), config.optimizer);
    let mut s = Session {
        config,
        run_dir,
        online,
        emas,
        optimizer,
    };

    let metrics_path = run_dir.join("metrics.csv");
    let mut start = 0;
    let mut checkpoint = None;
    if resume {
        let all = list_checkpoints(run_dir);
        if let Some((step, dir)) = all.last().cloned() {
            start = s.load_checkpoint(objective, &dir).map_err(|e| {
                // Say how to recover instead of silently skipping the newest state.
                let hint = match all.len().checked_sub(2).map(|i| &all[i]) {
                    Some((prev, _)) => format!("; move this folder away to resume from the previous checkpoint (step {prev})"),
                    None => "; no older checkpoint to fall back to".to_string(),
                };
                TrainError::Checkpoint { path: dir.clone(), reason: format!("cannot resume from it: {e}{hint}") }
            })?;
            observer.on_message(&format!("resumed from {} (step {step})", dir.display()));
            checkpoint = Some(dir);
            truncate_metrics(&metrics_path, start)?;
        }
    }
    if !resume {
        if let Some((step, dir)) = latest_checkpoint(run_dir) {
            return Err(TrainError::RunFolder {
                path: run_dir.to_path_buf(),
                reason: format!(
                    "it already holds a run (checkpoint {} at step {step}); resume it, or choose a new run folder",
                    dir.display()
                ),
            });
        }
    }
    if start == 0 {
        let _ = fs::remove_file(&metrics_path);
    }
    let new_file = !metrics_path.exists();
    let mut metrics = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(TrainError::io("cannot open", &metrics_path))?;
    if new_file {
        writeln!(metrics, "step,loss,lr,grad_norm,elapsed_s,steps_per_s")
            .map_err(TrainError::io("cannot write", &metrics_path))?;
    }

    observer.on_start(start, config.steps);
    let started = Instant::now();
    let mut losses = Vec::new();
    let mut stopped = false;
    let mut step = start;
    while step < config.steps {
        if stop.load(Ordering::SeqCst) {
            stopped = true;
            break;
        }
        let batch = source.batch(step, device)?;
        // Reseed after the batch (a source may use the generator itself).
        tch::manual_seed(mix_seed(config.seed, step));
        s.optimizer.zero_grad();
        let loss = objective.loss(&s.online, &batch, step)?;
        let loss_value = loss.double_value(&[]);
        if !loss_value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step,
                loss: loss_value,
                last_checkpoint: checkpoint,
            });
        }
        loss.backward();
        let lr = config.optimizer.lr_at(step);
        let grad_norm = s.optimizer.grad_norm();
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFiniteGradient {
                step,
                norm: grad_norm,
                last_checkpoint: checkpoint,
            });
        }
        s.optimizer.step(lr, grad_norm);
        objective.after_step(&s.online, step)?;
        for ema in &s.emas {
            ema.update(&s.online, step);
        }
        step += 1;
        losses.push((step, loss_value));
        let elapsed = started.elapsed().as_secs_f64();
        let steps_per_s = (step - start) as f64 / elapsed.max(1e-9);
        writeln!(
            metrics,
            "{step},{loss_value},{lr},{grad_norm},{elapsed:.3},{steps_per_s:.4}"
        )
        .map_err(TrainError::io("cannot write", &metrics_path))?;
        if step % config.log_every == 0 || step == config.steps {
            observer.on_step(&StepInfo {
                step,
                total: config.steps,
                loss: loss_value,
                lr,
                grad_norm,
                steps_per_s,
                images_per_s: steps_per_s * config.batch_size as f64,
            });
        }
        if config.sample_every > 0 && step % config.sample_every == 0 && step < config.steps {
            write_samples(objective, &s, config, run_dir, step)?;
        }
        if step % config.checkpoint_every == 0 && step < config.steps {
            checkpoint = Some(s.save_checkpoint(objective, step)?);
            report::write_loss_plot(&read_losses(&metrics_path), &run_dir.join("loss.png"))?;
            observer.on_message(&format!("checkpoint at step {step}"));
        }
    }
    metrics
        .flush()
        .map_err(TrainError::io("cannot write", &metrics_path))?;
    if step > start || checkpoint.is_none() {
        checkpoint = Some(s.save_checkpoint(objective, step)?);
    }
    report::write_loss_plot(&read_losses(&metrics_path), &run_dir.join("loss.png"))?;
    if stopped {
        observer.on_message(&format!(
            "stopped at step {step}; checkpoint saved, resume to continue"
        ));
    } else {
        write_samples(objective, &s, config, run_dir, step)?;
    }
    Ok(TrainOutcome {
        online: s.online,
        emas: s.emas,
        step,
        stopped,
        losses,
        checkpoint,
    })
}

/// Standard-normal latents for `count` samples of `model`, from a fixed
/// stream of `seed`, so every grid of a run starts from the same noise.
pub fn fixed_latents(model: &Model, count: usize, seed: u64) -> Tensor {
    tch::manual_seed(mix_seed(seed ^ 0x6A1D_5A3D, 0));
    let mut shape = vec![count as i64];
    shape.extend(model.config().sample_shape());
    Tensor::randn(shape, (Kind::Float, model.device()))
}

/// The evaluation network of a run: its first EMA, else the online network.
pub fn eval_model<'a>(online: &'a Model, emas: &'a [Ema]) -> &'a Model {
    emas.first().map(|e| &e.model).unwrap_or(online)
}

fn write_samples(
    objective: &dyn Objective,
    s: &Session,
    config: &TrainConfig,
    run_dir: &Path,
    step: u64,
) -> Result<()> {
    let model = eval_model(&s.online, &s.emas);
    let latents = fixed_latents(model, config.sample_count, config.seed);
    let samples = tch::no_grad(|| objective.sample(model, &latents, None))?;
    let path = run_dir
        .join("samples")
        .join(format!("{}.png", checkpoint_name(step)));
    Ok(report::write_samples(&samples, &path)?)
}
