//! Checkpoints of the shared loop: one folder per step,
//! `checkpoints/step_0001000/` holding `online.safetensors`, one
//! `ema_RATE.safetensors` per evaluation EMA, the objective's extra networks
//! (`target.safetensors`, ...), `optimizer.safetensors`, `state.json` and
//! the resolved `config.toml`. Written atomically (temporary folder, flush,
//! rename), pruned to the newest `keep_last`, and named here once for every
//! pipeline.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use cm_nets::Model;

use crate::config::TrainConfig;
use crate::ema::Ema;
use crate::error::{Result, TrainError};
use crate::objective::Objective;
use crate::optim::Optimizer;

/// The checkpoint folder name of a step.
pub fn checkpoint_name(step: u64) -> String {
    format!("step_{step:07}")
}

/// The weights a finished run is used through, relative to its run folder:
/// the first EMA of the final checkpoint (the online weights when there is no
/// EMA). Model cards (`model.toml`) point here.
pub fn final_weights(config: &TrainConfig) -> PathBuf {
    PathBuf::from("checkpoints")
        .join(checkpoint_name(config.steps))
        .join(evaluation_weights_file(&config.ema_rates))
}

/// The file of a checkpoint that evaluation uses: the first EMA's
/// (`ema_RATE.safetensors`), else the online weights.
pub fn evaluation_weights_file(ema_rates: &[f64]) -> String {
    match ema_rates.first() {
        Some(&rate) => format!("{}.safetensors", Ema::file_stem(rate)),
        None => "online.safetensors".to_string(),
    }
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

/// Refuses to start a fresh run in a folder that already holds a
/// checkpoint: it would be overwritten step by step.
pub(crate) fn refuse_existing_run(run_dir: &Path) -> Result<()> {
    match latest_checkpoint(run_dir) {
        Some((step, dir)) => Err(TrainError::RunFolder {
            path: run_dir.to_path_buf(),
            reason: format!(
                "it already holds a run (checkpoint {} at step {step}); resume it, or choose a new run folder",
                dir.display()
            ),
        }),
        None => Ok(()),
    }
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
    /// Shards per global batch (each with its own noise stream); absent in
    /// checkpoints from before data parallelism (one shard).
    #[serde(default)]
    shards: Option<usize>,
}

/// The networks and optimizer state a checkpoint holds.
pub(crate) struct Roles {
    pub online: Model,
    pub emas: Vec<Ema>,
    pub optimizer: Optimizer,
}

/// Saves and restores [`Roles`] in a run folder.
pub(crate) struct Checkpointer<'a> {
    pub config: &'a TrainConfig,
    pub run_dir: &'a Path,
    pub roles: Roles,
    /// Shards per global batch in this session.
    pub shards: usize,
}

impl Checkpointer<'_> {
    /// Writes the checkpoint of `step` atomically: a temporary folder,
    /// flushed, then renamed into place, then older ones pruned.
    pub(crate) fn save(&self, objective: &dyn Objective, step: u64) -> Result<PathBuf> {
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
        self.roles.online.save(tmp.join("online.safetensors"))?;
        for ema in &self.roles.emas {
            ema.model
                .save(tmp.join(format!("{}.safetensors", ema.name())))?;
        }
        for (name, model) in objective.extra_models() {
            model.save(tmp.join(format!("{name}.safetensors")))?;
        }
        let opt_path = tmp.join("optimizer.safetensors");
        let opt_state = self.roles.optimizer.state_tensors();
        cm_nets::write_atomic(&opt_path, |t| Ok(Tensor::write_safetensors(&opt_state, t)?))?;
        let state = CheckpointState {
            step,
            optimizer_steps: self.roles.optimizer.steps(),
            seed: self.config.seed,
            objective: objective.name().to_string(),
            ema_rates: self.config.ema_rates.clone(),
            shards: Some(self.shards),
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
        self.prune(step)?;
        Ok(final_dir)
    }

    /// Keeps the newest `keep_last` complete checkpoints; never the one just
    /// written (`current`).
    fn prune(&self, current: u64) -> Result<()> {
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

    /// Restores every role and the optimizer from the checkpoint `dir` (of
    /// step `expected`, from its folder name); returns its step. Nothing in
    /// it is trusted: the state's step must match the folder and lie within
    /// the run, tensors must match in shape and dtype exactly, and every
    /// loaded weight and moment must be finite. Also returns the shards the
    /// checkpoint was trained with.
    pub(crate) fn load(
        &mut self,
        objective: &mut dyn Objective,
        dir: &Path,
        expected: u64,
    ) -> Result<(u64, usize)> {
        let state_path = dir.join("state.json");
        let text =
            cm_core::read_bounded_text(&state_path, cm_core::MAX_CONFIG_BYTES, "a state.json")
                .map_err(TrainError::io("cannot read", &state_path))?;
        let state: CheckpointState =
            serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
                path: state_path.clone(),
                reason: format!("corrupt state: {e}"),
            })?;
        if state.step != expected {
            return Err(TrainError::Checkpoint {
                path: state_path,
                reason: format!(
                    "state.json says step {}, the folder is {}",
                    state.step,
                    checkpoint_name(expected)
                ),
            });
        }
        if state.step > self.config.steps {
            return Err(TrainError::Checkpoint {
                path: state_path,
                reason: format!(
                    "step {} is beyond the run's {} steps",
                    state.step, self.config.steps
                ),
            });
        }
        if state.optimizer_steps > state.step {
            return Err(TrainError::Checkpoint {
                path: state_path,
                reason: format!(
                    "{} optimizer steps at step {}",
                    state.optimizer_steps, state.step
                ),
            });
        }
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
        self.roles
            .online
            .load_weights(dir.join("online.safetensors"))?;
        for ema in &mut self.roles.emas {
            let name = ema.name();
            ema.model
                .load_weights(dir.join(format!("{name}.safetensors")))?;
        }
        for (name, model) in objective.extra_models_mut() {
            model.load_weights(dir.join(format!("{name}.safetensors")))?;
        }
        let opt_path = dir.join("optimizer.safetensors");
        let tensors = Tensor::read_safetensors(&opt_path)?;
        self.roles
            .optimizer
            .load_state(tensors, state.optimizer_steps)
            .map_err(|reason| TrainError::Checkpoint {
                path: opt_path.clone(),
                reason,
            })?;
        // NaN or inf anywhere would poison the run (and reach the card).
        let mut loaded: Vec<(String, Tensor)> = Vec::new();
        let mut add = |file: &str, model: &Model| {
            for (n, t) in model.var_store().variables() {
                loaded.push((format!("{file}: {n}"), t));
            }
        };
        add("online.safetensors", &self.roles.online);
        for ema in &self.roles.emas {
            add(&format!("{}.safetensors", ema.name()), &ema.model);
        }
        for (name, model) in objective.extra_models() {
            add(&format!("{name}.safetensors"), model);
        }
        for (n, t) in self.roles.optimizer.state_tensors() {
            loaded.push((format!("optimizer.safetensors: {n}"), t));
        }
        if let Some((name, _)) = loaded
            .iter()
            .find(|(_, t)| t.numel() > 0 && !bool::try_from(t.isfinite().all()).unwrap_or(false))
        {
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                reason: format!("non-finite values (NaN or inf) in {name}"),
            });
        }
        Ok((state.step, state.shards.unwrap_or(1)))
    }
}
