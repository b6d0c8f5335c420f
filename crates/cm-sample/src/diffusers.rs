//! Sampling the published diffusers consistency models.
//!
//! - [`CmSchedulerConfig`] and [`CmStochasticIterativeScheduler`]: diffusers'
//!   `CMStochasticIterativeScheduler` (a pure struct, as diffusers-rs writes
//!   schedulers): the Karras sigmas of `num_train_timesteps` levels, the
//!   `timesteps` (`1000 * 0.25 ln sigma`) fed to the network, the default
//!   spacing of `k` inference steps and custom timesteps such as `[22, 0]`,
//!   computed exactly as diffusers computes them (f64 timesteps, f32 sigmas).
//!   Its step is CM Algorithm 1 with the denoised sample clipped to [-1, 1]
//!   (`clip_denoised`), which [`crate::consistency_sample_with`] runs with
//!   the clipping denoiser [`ClipDenoised`].
//! - [`DiffusersFolder`]: where a diffusers folder keeps the U-Net config,
//!   weights and scheduler config (a `ConsistencyModelPipeline` folder with
//!   `unet/` and `scheduler/`, or one flat folder), and the model card it
//!   makes ([`DiffusersFolder::card`]); a `kind = "diffusers"` card file
//!   names such a folder ([`crate::ModelCard::load`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use cm_core::{Conditioning, ConsistencyConfig, CoreError, Denoiser, NoiseConditioning, Validate};

use crate::error::{Result, SampleError};

/// The `_class_name` of the scheduler configs read here.
pub const CM_SCHEDULER_CLASS: &str = "CMStochasticIterativeScheduler";

/// The most training levels a scheduler config may declare (published: 40,
/// 151, 201).
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// diffusers' `CMStochasticIterativeScheduler` config
/// (`scheduler_config.json`), with diffusers' defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CmSchedulerConfig {
    /// Levels of the training discretization `N` (timesteps index them).
    pub num_train_timesteps: usize,
    /// `eps`, where the consistency function is the identity.
    pub sigma_min: f64,
    /// `T`: sampling starts from `T z`.
    pub sigma_max: f64,
    /// Data standard deviation of the boundary scalings.
    pub sigma_data: f64,
    /// Scale of the re-noising noise (only 1 is supported, as published).
    pub s_noise: f64,
    /// Karras grid exponent.
    pub rho: f64,
    /// Clip each step's denoised sample to [-1, 1].
    pub clip_denoised: bool,
}

impl Default for CmSchedulerConfig {
    fn default() -> Self {
        CmSchedulerConfig {
            num_train_timesteps: 40,
            sigma_min: 0.002,
            sigma_max: 80.0,
            sigma_data: 0.5,
            s_noise: 1.0,
            rho: 7.0,
            clip_denoised: true,
        }
    }
}

fn invalid(field: &str, value: impl std::fmt::Debug, expected: impl Into<String>) -> CoreError {
    CoreError::invalid_debug(field, value, expected)
}

impl Validate for CmSchedulerConfig {
    fn validate(&self) -> cm_core::Result<()> {
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&self.num_train_timesteps) {
            return Err(invalid(
                "num_train_timesteps",
                self.num_train_timesteps,
                format!("2 to {MAX_TRAIN_TIMESTEPS}"),
            ));
        }
        for (field, v) in [
            ("sigma_min", self.sigma_min),
            ("sigma_max", self.sigma_max),
            ("sigma_data", self.sigma_data),
            ("rho", self.rho),
        ] {
            // f32 is where the sigmas end up.
            if !(v.is_finite() && v > 0.0 && v < f32::MAX as f64) {
                return Err(invalid(field, v, "a positive number representable in f32"));
            }
        }
        if self.sigma_min >= self.sigma_max {
            return Err(invalid(
                "sigma_min",
                self.sigma_min,
                format!("less than sigma_max = {}", self.sigma_max),
            ));
        }
        if self.s_noise != 1.0 {
            return Err(invalid(
                "s_noise",
                self.s_noise,
                "1.0 (the published configs' value; other noise scales are not supported)",
            ));
        }
        Ok(())
    }
}

impl CmSchedulerConfig {
    /// Reads a diffusers `scheduler_config.json` (text `json`, named `source`
    /// in messages): `_`-prefixed keys are skipped, another `_class_name` is
    /// refused, unknown keys are errors naming them. Validated.
    pub fn from_json(json: &str, source: &str) -> cm_core::Result<Self> {
        cm_core::parse_diffusers_json(json, source, CM_SCHEDULER_CLASS, &[])
    }

    /// The config as diffusers' `scheduler_config.json`.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("configs serialize to JSON");
        value
            .as_object_mut()
            .expect("a struct serializes to an object")
            .insert("_class_name".into(), CM_SCHEDULER_CLASS.into());
        serde_json::to_string_pretty(&value).expect("JSON values print")
    }

    /// The consistency parameterization these models use: the boundary
    /// scalings with this `sigma_data` and `sigma_min`, and the network fed
    /// `1000 * 0.25 ln sigma` ([`NoiseConditioning::Adm`]).
    pub fn consistency(&self) -> ConsistencyConfig {
        ConsistencyConfig {
            sigma_data: self.sigma_data,
            sigma_min: self.sigma_min,
            sigma_max: self.sigma_max,
            rho: self.rho,
            noise_conditioning: NoiseConditioning::Adm,
        }
    }

    /// `_convert_to_karras(ramp)`: Karras et al. 2022, Eq. 5, at `ramp` in [0, 1].
    fn karras(&self, ramp: f64) -> f64 {
        let min_inv_rho = self.sigma_min.powf(1.0 / self.rho);
        let max_inv_rho = self.sigma_max.powf(1.0 / self.rho);
        (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(self.rho)
    }

    /// The default timesteps of `steps` inference steps (diffusers: `N //
    /// steps` apart from 0, descending).
    pub fn default_timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        let n = self.num_train_timesteps;
        if steps == 0 || steps > n {
            return Err(invalid(
                "steps",
                steps,
                format!("1 to num_train_timesteps = {n} (the model's training levels)"),
            )
            .into());
        }
        let ratio = n / steps;
        Ok((0..steps).rev().map(|i| i * ratio).collect())
    }

    /// The intermediate times `tau_1 > ... > tau_{k-1}` of consistency
    /// sampling ([`crate::consistency_sample_with`]) for diffusers'
    /// `timesteps` (descending indices into the training levels, ending at
    /// 0 so that the chain starts at `sigma_max` as diffusers' noise does).
    pub fn taus_for(&self, timesteps: &[usize]) -> Result<Vec<f64>> {
        let schedule = CmStochasticIterativeScheduler::with_timesteps(self.clone(), timesteps)?;
        if timesteps.last() != Some(&0) {
            return Err(invalid(
                "timesteps",
                timesteps,
                "indices ending with 0 (the first step is at sigma_max, where sampling starts)",
            )
            .into());
        }
        let sigmas = &schedule.sigmas;
        Ok(sigmas[1..sigmas.len() - 1]
            .iter()
            .map(|&s| s as f64)
            .collect())
    }

    /// [`CmSchedulerConfig::taus_for`] the default timesteps of `steps` steps.
    pub fn default_taus(&self, steps: usize) -> Result<Vec<f64>> {
        self.taus_for(&self.default_timesteps(steps)?)
    }
}

/// diffusers' `CMStochasticIterativeScheduler` state after `set_timesteps`:
/// the sampling sigmas (f32, with `sigma_min` appended) and the timesteps
/// (f64, `1000 * 0.25 ln(sigma + 1e-44)`).
#[derive(Clone, Debug, PartialEq)]
pub struct CmStochasticIterativeScheduler {
    /// The config.
    pub config: CmSchedulerConfig,
    /// Sigmas of the sampling steps, then `sigma_min` (f32, as diffusers).
    pub sigmas: Vec<f32>,
    /// The network's time input at each step (f64, as diffusers).
    pub timesteps: Vec<f64>,
}

impl CmStochasticIterativeScheduler {
    /// `sigma_to_t`: `1000 * 0.25 ln(sigma + 1e-44)`.
    pub fn sigma_to_t(sigma: f64) -> f64 {
        1000.0 * 0.25 * (sigma + 1e-44).ln()
    }

    /// The training discretization (the scheduler right after
    /// construction): `N` Karras levels at `linspace(0, 1, N)` (f64 sigmas,
    /// returned widened here as diffusers keeps them in f64).
    pub fn training(config: &CmSchedulerConfig) -> cm_core::Result<(Vec<f64>, Vec<f64>)> {
        config.validate()?;
        let n = config.num_train_timesteps;
        // numpy's linspace: i * (1 / (n - 1)), the last point set to 1.
        let step = 1.0 / (n - 1) as f64;
        let sigmas: Vec<f64> = (0..n)
            .map(|i| {
                let ramp = if i + 1 == n { 1.0 } else { i as f64 * step };
                config.karras(ramp)
            })
            .collect();
        let timesteps = sigmas.iter().map(|&s| Self::sigma_to_t(s)).collect();
        Ok((sigmas, timesteps))
    }

    /// `set_timesteps(num_inference_steps = steps)`.
    pub fn with_steps(config: CmSchedulerConfig, steps: usize) -> Result<Self> {
        config.validate()?;
        let timesteps = config.default_timesteps(steps)?;
        Self::with_timesteps(config, &timesteps)
    }

    /// `set_timesteps(timesteps = ...)`: strictly descending indices below
    /// `num_train_timesteps`.
    pub fn with_timesteps(config: CmSchedulerConfig, timesteps: &[usize]) -> Result<Self> {
        config.validate()?;
        let n = config.num_train_timesteps;
        if timesteps.is_empty() || timesteps.len() > n {
            return Err(invalid(
                "timesteps",
                timesteps,
                format!("1 to {n} indices (num_train_timesteps)"),
            )
            .into());
        }
        if timesteps.windows(2).any(|w| w[1] >= w[0]) {
            return Err(invalid("timesteps", timesteps, "strictly descending indices").into());
        }
        if timesteps[0] >= n {
            return Err(invalid(
                "timesteps",
                timesteps,
                format!("indices below num_train_timesteps = {n}"),
            )
            .into());
        }
        // diffusers: ramp = timesteps[::-1] / (N - 1); the sigmas follow the
        // reversed ramp (so the last given index is the first, largest sigma).
        let sigmas64: Vec<f64> = timesteps
            .iter()
            .rev()
            .map(|&t| config.karras(t as f64 / (n - 1) as f64))
            .collect();
        let timesteps = sigmas64.iter().map(|&s| Self::sigma_to_t(s)).collect();
        let mut sigmas: Vec<f32> = sigmas64.iter().map(|&s| s as f32).collect();
        sigmas.push(config.sigma_min as f32);
        Ok(CmStochasticIterativeScheduler {
            config,
            sigmas,
            timesteps,
        })
    }
}

/// A denoiser whose output is clipped to [-1, 1] (the scheduler's
/// `clip_denoised`, applied after each consistency evaluation).
pub struct ClipDenoised<D>(pub D);

impl<D: Denoiser> Denoiser for ClipDenoised<D> {
    fn denoise(&self, x: &Tensor, sigma: &Tensor, cond: Conditioning<'_>) -> Tensor {
        self.0.denoise(x, sigma, cond).clamp(-1.0, 1.0)
    }
}

/// The card file of a diffusers folder:
///
/// ```toml
/// kind = "diffusers"
/// folder = "."            # the diffusers folder, relative to this file
///
/// [timesteps]             # optional: diffusers timesteps per step count
/// 2 = [22, 0]
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusersCardFile {
    /// Always `"diffusers"`.
    pub kind: String,
    /// The diffusers folder (a pipeline folder or a flat one).
    pub folder: PathBuf,
    /// Timesteps (indices into the training levels, descending, ending at
    /// 0) per step count; other step counts use diffusers' default spacing.
    #[serde(default)]
    pub timesteps: BTreeMap<String, Vec<usize>>,
}

/// Where a diffusers folder keeps its parts.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffusersFolder {
    /// The folder given.
    pub root: PathBuf,
    /// The U-Net's `config.json`.
    pub unet_config: PathBuf,
    /// The U-Net's `diffusion_pytorch_model.safetensors`.
    pub weights: PathBuf,
    /// The scheduler's `scheduler_config.json`.
    pub scheduler_config: PathBuf,
}

/// The weights file name diffusers writes.
pub const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
/// The scheduler config file name diffusers writes.
pub const DIFFUSERS_SCHEDULER_CONFIG: &str = "scheduler_config.json";

/// The `model_index.json` of a `ConsistencyModelPipeline` folder.
pub const MODEL_INDEX_JSON: &str = "{\n  \"_class_name\": \"ConsistencyModelPipeline\",\n  \"scheduler\": [\"diffusers\", \"CMStochasticIterativeScheduler\"],\n  \"unet\": [\"diffusers\", \"UNet2DModel\"]\n}\n";

impl DiffusersFolder {
    /// Finds the parts: `unet/` and `scheduler/` when the folder has a
    /// `model_index.json` (what `ConsistencyModelPipeline.save_pretrained`
    /// writes) or a `unet/` folder, else `config.json`, the weights and `scheduler_config.json`
    /// side by side. A missing part is an error naming the file.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let bad = |message: String| SampleError::Card {
            path: root.clone(),
            message,
        };
        if !root.is_dir() {
            return Err(bad(
                "is not a folder (a diffusers folder holds config.json, \
                 diffusion_pytorch_model.safetensors and scheduler_config.json, or a \
                 pipeline's model_index.json with unet/ and scheduler/)"
                    .into(),
            ));
        }
        let (unet, scheduler) =
            if root.join("model_index.json").is_file() || root.join("unet").is_dir() {
                (root.join("unet"), root.join("scheduler"))
            } else {
                (root.clone(), root.clone())
            };
        let folder = DiffusersFolder {
            unet_config: unet.join(cm_nets::DIFFUSERS_CONFIG),
            weights: unet.join(DIFFUSERS_WEIGHTS),
            scheduler_config: scheduler.join(DIFFUSERS_SCHEDULER_CONFIG),
            root: root.clone(),
        };
        for part in [
            &folder.unet_config,
            &folder.weights,
            &folder.scheduler_config,
        ] {
            if !part.is_file() {
                return Err(bad(format!(
                    "has no {} (a diffusers consistency-model folder holds the U-Net's \
                     config.json and {DIFFUSERS_WEIGHTS}, and the scheduler's \
                     {DIFFUSERS_SCHEDULER_CONFIG})",
                    part.strip_prefix(&root).unwrap_or(part).display()
                )));
            }
        }
        Ok(folder)
    }

    /// The scheduler config.
    pub fn scheduler(&self) -> Result<CmSchedulerConfig> {
        Ok(cm_core::load_diffusers_json(
            &self.scheduler_config,
            CM_SCHEDULER_CLASS,
            &[],
        )?)
    }
}

impl Validate for DiffusersCardFile {
    fn validate(&self) -> cm_core::Result<()> {
        if self.kind != "diffusers" {
            return Err(invalid("kind", &self.kind, "\"diffusers\""));
        }
        Ok(())
    }
}
