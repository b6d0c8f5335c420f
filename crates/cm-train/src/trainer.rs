//! The one training loop every objective runs on: per-step reseeding of
//! libtorch's generator (so a resumed run reproduces an uninterrupted one),
//! Adam / RAdam with saved state, warm-up and clipping, EMA copies, atomic
//! checkpoints with retention ([`crate::checkpoint`]), a stop flag (Ctrl-C)
//! that saves before returning, NaN detection, a metrics CSV
//! ([`crate::metrics`]), sample grids and a loss plot.
//!
//! Run folder layout:
//! ```text
//! RUN/config.toml                       the resolved config (written by the run skeleton)
//! RUN/metrics.csv                       step,loss,lr,grad_norm,elapsed_s,steps_per_s
//! RUN/loss.png, loss.svg                loss curve
//! RUN/samples/step_0001000.png          sample grids from the first EMA
//! RUN/checkpoints/step_0001000/         online.safetensors (+ .toml), ema_RATE.*,
//!                                       extra networks, optimizer.safetensors, state.json
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tch::{Kind, Tensor};

use cm_core::Conditioning;
use cm_nets::Model;

use crate::checkpoint::{
    checkpoint_name, latest_checkpoint, list_checkpoints, Checkpointer, Roles,
};
use crate::config::TrainConfig;
use crate::ema::Ema;
use crate::error::{Result, TrainError};
use crate::metrics::{read_losses, truncate_metrics, METRICS_HEADER};
use crate::objective::{BatchSource, Objective};
use crate::observer::{Observer, StepInfo};
use crate::optim::Optimizer;
use cm_report as report;

pub use cm_core::seed::mix_seed;

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
            // The EMA is the model the card describes: same metadata.
            model.copy_metadata_from(&online);
            Ok(Ema {
                rate,
                warmup: config.ema_warmup,
                model,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let optimizer = Optimizer::new(online.trainable_variables(), config.optimizer);
    let mut s = Checkpointer {
        config,
        run_dir,
        roles: Roles {
            online,
            emas,
            optimizer,
        },
    };

    let metrics_path = run_dir.join("metrics.csv");
    let mut start = 0;
    let mut checkpoint = None;
    if resume {
        let all = list_checkpoints(run_dir);
        if let Some((step, dir)) = all.last().cloned() {
            start = s.load(objective, &dir).map_err(|e| {
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
        writeln!(metrics, "{METRICS_HEADER}")
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
        s.roles.optimizer.zero_grad();
        let loss = objective.loss(&s.roles.online, &batch, step)?;
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
        let grad_norm = s.roles.optimizer.grad_norm();
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFiniteGradient {
                step,
                norm: grad_norm,
                last_checkpoint: checkpoint,
            });
        }
        s.roles.optimizer.step(lr, grad_norm);
        objective.after_step(&s.roles.online, step)?;
        for ema in &s.roles.emas {
            ema.update(&s.roles.online, step);
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
            checkpoint = Some(s.save(objective, step)?);
            report::write_loss_plot(&read_losses(&metrics_path), &run_dir.join("loss.png"))?;
            observer.on_message(&format!("checkpoint at step {step}"));
        }
    }
    metrics
        .flush()
        .map_err(TrainError::io("cannot write", &metrics_path))?;
    if step > start || checkpoint.is_none() {
        checkpoint = Some(s.save(objective, step)?);
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
        online: s.roles.online,
        emas: s.roles.emas,
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
    s: &Checkpointer,
    config: &TrainConfig,
    run_dir: &Path,
    step: u64,
) -> Result<()> {
    let model = eval_model(&s.roles.online, &s.roles.emas);
    let latents = fixed_latents(model, config.sample_count, config.seed);
    let samples = tch::no_grad(|| objective.sample(model, &latents, Conditioning::none()))?;
    let path = run_dir
        .join("samples")
        .join(format!("{}.png", checkpoint_name(step)));
    Ok(report::write_samples(&samples, &path)?)
}
