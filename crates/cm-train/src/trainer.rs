//! The one training loop every objective runs on: per-step reseeding of
//! libtorch's generator (so a resumed run reproduces an uninterrupted one),
//! Adam / RAdam with saved state, warm-up and clipping, EMA copies, atomic
//! checkpoints with retention ([`crate::checkpoint`]), a stop flag (Ctrl-C)
//! that saves before returning, NaN detection, a metrics CSV
//! ([`crate::metrics`]), sample grids and a loss plot.
//!
//! Data parallel (docs/scale.md): under MPI (cm-dist's world) every rank
//! starts from rank 0's state, computes its shards of each global batch
//! (`train.shards`, noise seeded per shard by [`shard_seed`]), and the
//! gradients are summed across ranks before clipping and the update; only
//! rank 0 writes the run folder, and the ranks' states are compared by
//! checksum at every checkpoint.
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
    checkpoint_name, list_checkpoints, refuse_existing_run, Checkpointer, Roles,
};
use crate::config::TrainConfig;
use crate::ema::Ema;
use crate::error::{Result, TrainError};
use crate::metrics::{read_losses, truncate_metrics, METRICS_HEADER};
use crate::objective::{Batch, BatchSource, Objective};
use crate::observer::{Observer, StepInfo};
use crate::optim::Optimizer;
use cm_dist::Communicator;
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
    /// Seconds this session spent in the gradient all-reduce (0 on one
    /// rank).
    pub comm_seconds: f64,
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
    let comm = cm_dist::world();
    let (rank, ranks) = (comm.rank(), comm.size());
    let shards = config.shards_for(ranks, "train.")?;
    let shard_size = (config.batch_size / shards) as i64;
    // Only rank 0 writes the run folder.
    let writer = rank == 0;
    if writer {
        fs::create_dir_all(run_dir).map_err(TrainError::io("cannot create run folder", run_dir))?;
    }
    let device = online.device();
    let emas = config
        .ema_rates
        .iter()
        .map(|&rate| {
            let mut model = online.new_like()?;
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
        shards,
    };

    if writer {
        let removed = clean_stale_temporaries(run_dir);
        if removed > 0 {
            observer.on_message(&format!(
                "removed {removed} temporary file(s) left by an interrupted write"
            ));
        }
    }
    let metrics_path = run_dir.join("metrics.csv");
    let mut start = 0;
    let mut checkpoint = None;
    if resume && writer {
        let all = list_checkpoints(run_dir);
        if let Some((step, dir)) = all.last().cloned() {
            let (step_loaded, old_shards) = s.load(objective, &dir, step).map_err(|e| {
                // Say how to recover instead of silently skipping the newest state.
                let hint = match all.len().checked_sub(2).map(|i| &all[i]) {
                    Some((prev, _)) => format!("; move this folder away to resume from the previous checkpoint (step {prev})"),
                    None => "; no older checkpoint to fall back to".to_string(),
                };
                TrainError::Checkpoint { path: dir.clone(), reason: format!("cannot resume from it: {e}{hint}") }
            })?;
            start = step_loaded;
            observer.on_message(&format!("resumed from {} (step {step})", dir.display()));
            if old_shards != shards {
                // The noise of a step is keyed by shard: the run continues,
                // but not as it would have without the interruption.
                observer.on_message(&format!(
                    "note: the run so far used {old_shards} shard(s) per batch, this session {shards} \
                     ({ranks} rank(s)); set train.shards in a new run to make the rank count irrelevant"
                ));
            }
            checkpoint = Some(dir);
            truncate_metrics(&metrics_path, start)?;
        }
    }
    if !resume {
        refuse_existing_run(run_dir)?;
    }
    if ranks > 1 {
        // Every rank starts from rank 0's state: fresh weights, or the
        // checkpoint only rank 0 read (no shared file system needed).
        start = cm_dist::tensors::broadcast_u64(&*comm, start);
        let resumed = cm_dist::tensors::broadcast_u64(&*comm, checkpoint.is_some() as u64) == 1;
        let opt_steps = cm_dist::tensors::broadcast_u64(&*comm, s.roles.optimizer.steps());
        s.roles.optimizer.set_steps(opt_steps);
        cm_dist::tensors::broadcast_from_root(&*comm, &state_tensors(&s.roles, objective))?;
        if resumed && !writer {
            checkpoint = Some(run_dir.join("checkpoints").join(checkpoint_name(start)));
        }
        observer.on_message(&format!(
            "data parallel: {}; global batch {} = {ranks} ranks x {} ({shards} shards of {shard_size})",
            comm.describe(),
            config.batch_size,
            config.batch_size / ranks,
        ));
    }
    let mut metrics = if writer {
        if start == 0 {
            let _ = fs::remove_file(&metrics_path);
        }
        let new_file = !metrics_path.exists();
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(TrainError::io("cannot open", &metrics_path))?;
        if new_file {
            writeln!(file, "{METRICS_HEADER}")
                .map_err(TrainError::io("cannot write", &metrics_path))?;
        }
        Some(file)
    } else {
        None
    };

    observer.on_start(start, config.steps);
    let mut guard = DivergenceGuard::new(&s.roles.online);
    let started = Instant::now();
    let mut comm_seconds = 0.0;
    let mut losses = Vec::new();
    let mut stopped = false;
    let mut step = start;
    while step < config.steps {
        // Every rank stops at the same step (a collective when ranks > 1).
        if comm.any(stop.load(Ordering::SeqCst)) {
            stopped = true;
            break;
        }
        // Under `--threads auto`, follow the machine's load (cm-runtime).
        if let Some(threads) = cm_runtime::tick() {
            observer.on_message(&format!(
                "libtorch threads -> {threads} (cores other processes leave idle)"
            ));
        }
        let batch = source.batch(step, device)?;
        s.roles.optimizer.zero_grad();
        // This rank's shards of the global batch; each shard's loss is its
        // mean, so the global loss is the mean over shards.
        let mut local_loss = 0.0;
        for shard in (rank..shards).step_by(ranks) {
            let part = if shards == 1 {
                None
            } else {
                let (at, n) = (shard as i64 * shard_size, shard_size);
                Some(Batch {
                    x: batch.x.narrow(0, at, n),
                    labels: batch.labels.as_ref().map(|l| l.narrow(0, at, n)),
                })
            };
            // Reseed after the batch (a source may use the generator itself).
            tch::manual_seed(shard_seed(config.seed, step, shard as u64));
            let loss = objective.loss(&s.roles.online, part.as_ref().unwrap_or(&batch), step)?;
            let value = loss.double_value(&[]);
            local_loss += value / shards as f64;
            if !value.is_finite() {
                // Reported below, on every rank, after the loss is reduced.
                continue;
            }
            if shards == 1 {
                loss.backward();
            } else {
                (loss / shards as f64).backward();
            }
        }
        let loss_value = if ranks > 1 {
            let mut buf = [local_loss];
            comm.all_reduce_sum_f64(&mut buf);
            buf[0]
        } else {
            local_loss
        };
        if !loss_value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step,
                loss: loss_value,
                last_checkpoint: checkpoint,
            });
        }
        guard.check_loss(loss_value, step, &checkpoint)?;
        if ranks > 1 {
            // The sum of the shards' gradients: the gradient of the global
            // loss, identical on every rank before clipping and the update.
            let t = Instant::now();
            let grads = s.roles.optimizer.grads();
            // Buffers of different lengths would sum different parameters.
            let (fewest, most) = comm.all_reduce_min_max_u64(grads.len() as u64);
            if fewest != most {
                return Err(TrainError::Batch(format!(
                    "step {step}: the ranks' losses reached different parameters ({fewest} to {most} \
                     gradients); data-parallel training needs every shard to use the same parameters"
                )));
            }
            cm_dist::tensors::all_reduce_sum(&*comm, &grads, cm_dist::tensors::BUCKET_ELEMENTS)?;
            comm_seconds += t.elapsed().as_secs_f64();
        }
        let lr = config.optimizer.lr_at(step, config.steps);
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
        if let Some(metrics) = metrics.as_mut() {
            writeln!(
                metrics,
                "{step},{loss_value},{lr},{grad_norm},{elapsed:.3},{steps_per_s:.4}"
            )
            .map_err(TrainError::io("cannot write", &metrics_path))?;
        }
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
        if writer
            && config.sample_every > 0
            && step % config.sample_every == 0
            && step < config.steps
        {
            write_samples(objective, &s, config, run_dir, step)?;
        }
        if step % config.checkpoint_every == 0 && step < config.steps {
            // Only a healthy state becomes "the last good checkpoint".
            guard.check_weights(&s.roles.online, step, &checkpoint)?;
            check_ranks_agree(&*comm, &s.roles, objective, step, &checkpoint)?;
            checkpoint = Some(save_on_root(&*comm, &s, objective, step)?);
            if writer {
                report::write_loss_plot(&read_losses(&metrics_path), &run_dir.join("loss.png"))?;
            }
            observer.on_message(&format!("checkpoint at step {step}"));
        }
    }
    if let Some(metrics) = metrics.as_mut() {
        metrics
            .flush()
            .map_err(TrainError::io("cannot write", &metrics_path))?;
    }
    if step > start || checkpoint.is_none() {
        guard.check_weights(&s.roles.online, step, &checkpoint)?;
        check_ranks_agree(&*comm, &s.roles, objective, step, &checkpoint)?;
        checkpoint = Some(save_on_root(&*comm, &s, objective, step)?);
    }
    if ranks > 1 && step > start {
        let total = started.elapsed().as_secs_f64();
        observer.on_message(&format!(
            "data parallel: gradient all-reduce took {comm_seconds:.2} s of {total:.2} s ({:.1}%)",
            100.0 * comm_seconds / total.max(1e-9)
        ));
    }
    if writer {
        report::write_loss_plot(&read_losses(&metrics_path), &run_dir.join("loss.png"))?;
    }
    if stopped {
        observer.on_message(&format!(
            "stopped at step {step}; checkpoint saved, resume to continue"
        ));
    } else if writer {
        write_samples(objective, &s, config, run_dir, step)?;
    }
    Ok(TrainOutcome {
        online: s.roles.online,
        emas: s.roles.emas,
        step,
        stopped,
        losses,
        checkpoint,
        comm_seconds,
    })
}

/// The generator seed of shard `shard` at step `step`: shard 0 has the
/// one-process seed `mix_seed(seed, step)` (so a one-shard run is the run
/// cm-rs always made), the others a stream of their own.
pub fn shard_seed(seed: u64, step: u64, shard: u64) -> i64 {
    let base = mix_seed(seed, step);
    if shard == 0 {
        base
    } else {
        mix_seed(base as u64, shard)
    }
}

/// Every tensor of the training state, in the same order on every rank:
/// the online network, the EMAs, the objective's networks (e.g. CD's
/// target) and the optimizer's moments.
fn state_tensors(roles: &Roles, objective: &dyn Objective) -> Vec<(String, Tensor)> {
    let mut out = model_tensors("online", &roles.online);
    for ema in &roles.emas {
        out.extend(model_tensors(&ema.name(), &ema.model));
    }
    for (name, model) in objective.extra_models() {
        out.extend(model_tensors(name, model));
    }
    out.extend(roles.optimizer.state_views());
    out
}

/// `model`'s variables named `prefix.NAME`, sorted by name.
fn model_tensors(prefix: &str, model: &Model) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, t)| (format!("{prefix}.{n}"), t))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// [`TrainError::RanksDiverged`] unless every rank holds bit-identical
/// weights and optimizer state (one checksum each; nothing when alone).
fn check_ranks_agree(
    comm: &dyn Communicator,
    roles: &Roles,
    objective: &dyn Objective,
    step: u64,
    last: &Option<PathBuf>,
) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let hash = cm_dist::tensors::checksum(&state_tensors(roles, objective))?;
    let (min, max) = comm.all_reduce_min_max_u64(hash);
    if min != max {
        return Err(TrainError::RanksDiverged {
            step,
            what: "weights or optimizer state",
            min,
            max,
            last_checkpoint: last.clone(),
        });
    }
    Ok(())
}

/// Rank 0 writes the checkpoint; the others wait for it (a later stage may
/// read it) and return its path.
fn save_on_root(
    comm: &dyn Communicator,
    s: &Checkpointer,
    objective: &dyn Objective,
    step: u64,
) -> Result<PathBuf> {
    let path = if comm.rank() == 0 {
        s.save(objective, step)?
    } else {
        s.run_dir.join("checkpoints").join(checkpoint_name(step))
    };
    comm.barrier();
    Ok(path)
}

/// How far above its running mean (an EMA of rate 0.99 over the session's
/// losses) a loss may go before the run counts as diverged (finite losses:
/// lr = 1e3 reached 1.6e9 from 0.5). A mean, not the best loss, so that a
/// single lucky batch near `sigma_min` does not set the bar.
pub const LOSS_DIVERGENCE_FACTOR: f64 = 1e6;
/// How far the weights' norm may grow over a session before the state is
/// refused as a checkpoint (training moves it by a small factor; lr = 1e30
/// by 1e30).
pub const WEIGHT_DIVERGENCE_FACTOR: f64 = 1e3;

/// Watches for divergence that stays finite: a loss far above the running
/// mean of the session, weights far larger than at its start.
struct DivergenceGuard {
    mean_loss: Option<f64>,
    /// The lowest running mean of the session (after it settled).
    lowest_mean: Option<f64>,
    /// Losses seen this session.
    seen: u64,
    start_norm: f64,
}

/// Losses the running mean takes in before its lowest value is tracked (the
/// first few batches set it from one draw).
const MEAN_SETTLE_STEPS: u64 = 20;

impl DivergenceGuard {
    fn new(online: &Model) -> Self {
        Self::with_norm(weight_norm(online))
    }

    fn with_norm(start_norm: f64) -> Self {
        DivergenceGuard {
            mean_loss: None,
            lowest_mean: None,
            seen: 0,
            start_norm,
        }
    }

    /// [`TrainError::Diverged`] (naming `last`, the newest checkpoint) when
    /// `loss` is far above the session's running mean.
    fn check_loss(&mut self, loss: f64, step: u64, last: &Option<PathBuf>) -> Result<()> {
        match self.loss(loss) {
            Some(what) => Err(diverged(step, what, last)),
            None => Ok(()),
        }
    }

    /// [`TrainError::Diverged`] when the weights are not healthy enough to
    /// become a checkpoint.
    fn check_weights(&self, online: &Model, step: u64, last: &Option<PathBuf>) -> Result<()> {
        match self.weights(online) {
            Some(what) => Err(diverged(step, what, last)),
            None => Ok(()),
        }
    }

    /// `Some(description)` when `loss` is far above the session's running
    /// mean.
    fn loss(&mut self, loss: f64) -> Option<String> {
        if let Some(mean) = self.mean_loss {
            let bar = mean.abs().max(1e-12);
            if loss > LOSS_DIVERGENCE_FACTOR * bar {
                return Some(format!(
                    "loss {loss:.3e}, more than {LOSS_DIVERGENCE_FACTOR:.0e} x its running mean ({bar:.3e})"
                ));
            }
        }
        let mean = match self.mean_loss {
            Some(m) => 0.99 * m + 0.01 * loss,
            None => loss,
        };
        self.mean_loss = Some(mean);
        self.seen += 1;
        // A loss that grows a little every step (10% a step) drags its
        // running mean along and never stands 1e6 above it; the mean itself
        // standing 1e6 above its lowest value this session catches it.
        if self.seen > MEAN_SETTLE_STEPS {
            let lowest = self.lowest_mean.map_or(mean, |l| l.min(mean));
            self.lowest_mean = Some(lowest);
            let bar = lowest.abs().max(1e-12);
            if mean > LOSS_DIVERGENCE_FACTOR * bar {
                return Some(format!(
                    "loss {loss:.3e} with a running mean of {mean:.3e}, more than \
                     {LOSS_DIVERGENCE_FACTOR:.0e} x its lowest this session ({bar:.3e})"
                ));
            }
        }
        None
    }

    /// `Some(description)` when the weights are not finite or grew far
    /// beyond their norm at the start of the session.
    fn weights(&self, online: &Model) -> Option<String> {
        let norm = weight_norm(online);
        let limit = WEIGHT_DIVERGENCE_FACTOR * self.start_norm.max(1.0);
        (!norm.is_finite() || norm > limit).then(|| {
            format!(
                "weight norm {norm:.3e}, more than {WEIGHT_DIVERGENCE_FACTOR:.0e} x its {:.3e} at the start of the session",
                self.start_norm
            )
        })
    }
}

fn diverged(step: u64, what: String, last: &Option<PathBuf>) -> TrainError {
    TrainError::Diverged {
        step,
        what,
        last_checkpoint: last.clone(),
    }
}

/// The L2 norm of all of `model`'s variables together.
fn weight_norm(model: &Model) -> f64 {
    let _guard = tch::no_grad_guard();
    model
        .var_store()
        .variables()
        .values()
        .map(|t| t.square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt()
}

/// Removes what interrupted writes of this run folder left behind:
/// checkpoint folders `checkpoints/.tmp-*-PID` and atomic-write files
/// `.NAME.tmp-PID` (in the run folder, `checkpoints/` and `samples/`) whose
/// process `PID` no longer runs (a live one, e.g. another command writing
/// into the same folder, is left alone). Returns how many were removed.
pub fn clean_stale_temporaries(run_dir: &Path) -> usize {
    let alive = |name: &str| {
        name.rsplit('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    };
    let mut removed = 0;
    let mut sweep = |dir: &Path| {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale =
                name.starts_with('.') && name.contains(".tmp-") || name.starts_with(".tmp-");
            if !stale || alive(&name) {
                continue;
            }
            let path = e.path();
            let ok = match e.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&path).is_ok(),
                Ok(_) => fs::remove_file(&path).is_ok(),
                Err(_) => false,
            };
            removed += ok as usize;
        }
    };
    sweep(run_dir);
    sweep(&run_dir.join("checkpoints"));
    sweep(&run_dir.join("samples"));
    removed
}

/// Standard-normal latents for `count` samples of `model`, from a fixed
/// stream of `seed`, so every grid of a run starts from the same noise.
pub fn fixed_latents(model: &Model, count: usize, seed: u64) -> Tensor {
    tch::manual_seed(mix_seed(seed ^ 0x6A1D_5A3D, 0));
    let mut shape = vec![count as i64];
    shape.extend(model.config().sample_shape());
    Tensor::randn(shape, (Kind::Float, model.device()))
}

/// Runs `f` over `latents` in chunks of at most `chunk` rows (`None`: one
/// call) and joins the results: a periodic or report grid holds the
/// activations of one chunk at a time ([`Objective::grid_chunk`], by
/// default a training batch, which the run has shown it holds), whatever
/// `sample_count` is.
pub(crate) fn in_chunks(
    latents: &Tensor,
    chunk: Option<usize>,
    mut f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let n = latents.size()[0];
    let chunk = match chunk {
        Some(c) => c.max(1) as i64,
        None => n,
    };
    if n <= chunk {
        return f(latents);
    }
    let mut parts = Vec::with_capacity((n / chunk + 1) as usize);
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        parts.push(f(&latents.narrow(0, start, len))?);
        start += len;
    }
    Ok(Tensor::cat(&parts, 0))
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
    let samples = tch::no_grad(|| {
        in_chunks(&latents, objective.grid_chunk(config.batch_size), |l| {
            objective.sample(model, l, Conditioning::none())
        })
    })?;
    let path = run_dir
        .join("samples")
        .join(format!("{}.png", checkpoint_name(step)));
    Ok(report::write_samples(&samples, &path)?)
}

#[cfg(test)]
mod divergence_tests {
    use super::DivergenceGuard;

    /// The first step (1-based) the guard flags, if any.
    fn first_flag(losses: impl IntoIterator<Item = f64>) -> Option<usize> {
        let mut guard = DivergenceGuard::with_norm(1.0);
        losses
            .into_iter()
            .position(|l| guard.loss(l).is_some())
            .map(|i| i + 1)
    }

    #[test]
    fn a_sudden_jump_is_caught_at_once() {
        let losses = (0..100).map(|i| if i < 50 { 0.5 } else { 1e9 });
        assert_eq!(first_flag(losses), Some(51));
    }

    #[test]
    fn a_slow_finite_divergence_is_caught() {
        // 10% a step: the running mean follows it, a loss is never 1e6 x
        // the mean; the mean reaches 1e6 x its lowest after about 175 steps.
        let losses: Vec<f64> = (0..1000).map(|i| 0.5 * 1.1f64.powi(i)).collect();
        let mut guard = DivergenceGuard::with_norm(1.0);
        let mut mean = None::<f64>;
        for &l in &losses[..150] {
            assert!(guard.loss(l).is_none());
            mean = Some(mean.map_or(l, |m| 0.99 * m + 0.01 * l));
            assert!(l < 1e6 * mean.unwrap());
        }
        let step = first_flag(losses.iter().copied()).expect("caught");
        assert!((150..300).contains(&step), "flagged at step {step}");
        assert!(losses[step - 1].is_finite());
    }

    #[test]
    fn healthy_curves_are_never_flagged() {
        // A falling, noisy loss; a loss whose weighting grows 1,000x over
        // the run (curricula that shrink t - r); a fall of 500x.
        let noisy = (0..5000).map(|i| {
            let base = 1.0 / (1.0 + i as f64 / 100.0);
            base * (1.0 + 0.9 * ((i * 7919) % 13) as f64 / 13.0)
        });
        assert_eq!(first_flag(noisy), None);
        let weighted = (0..5000).map(|i| 0.1 * 1000f64.powf(i as f64 / 5000.0));
        assert_eq!(first_flag(weighted), None);
        let falling = (0..3000).map(|i| 5.0 * 0.002f64.powf(i as f64 / 3000.0));
        assert_eq!(first_flag(falling), None);
    }
}
