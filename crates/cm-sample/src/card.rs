//! The model card: the small TOML file that turns a weights file into a
//! sampler. `cm sample`, `cm edit` and `cm eval` take a card, not a run
//! folder, so any model can be used whichever pipeline made it.
//!
//! ```toml
//! kind = "consistency"                       # or "edm" (a diffusion teacher)
//! weights = "checkpoints/step_0001000/ema_0.999.safetensors"  # relative to the card
//!
//! [consistency]                              # the parameterization it was trained with
//! sigma_data = 0.5
//! sigma_min = 0.002
//! sigma_max = 80.0
//! rho = 7.0
//! noise_conditioning = "edm"
//!
//! [timesteps]                                # intermediate times for k-step sampling
//! 2 = [0.821]
//! ```
//!
//! The network architecture is not repeated here: it lives in the weights'
//! sidecar (`NAME.toml` beside `NAME.safetensors`, see cm-nets).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use cm_core::{
    Conditioning, ConsistencyConfig, CoreError, Denoiser, EdmConfig, NoiseRange, Validate,
};
use cm_nets::{Model, Preconditioned};

use crate::consistency::consistency_sample;
use crate::diffusers::{ClipDenoised, CmSchedulerConfig, DiffusersCardFile, DiffusersFolder};
use crate::edm::{edm_sample, EdmSampler, Sampled};
use crate::error::{Result, SampleError};

/// File name pipelines give the card of a finished run: `<run>/model.toml`.
pub const CARD_FILE: &str = "model.toml";

/// Checkpoint metadata key of the card (kind, parameterization, stored
/// times; no weights path) as JSON: training runs write it into every
/// checkpoint, so a weights file alone says how to sample from it
/// ([`ModelCard::from_weights`]).
pub const META_CARD: &str = "cm_rs.card";

/// The `kind` of a card file, read before the rest (a `diffusers` card has
/// its own fields).
#[derive(Deserialize)]
struct KindPeek {
    kind: Option<String>,
}

impl Validate for KindPeek {
    fn validate(&self) -> cm_core::Result<()> {
        Ok(())
    }
}

/// Where the intermediate times of k-step consistency sampling came from
/// ([`ModelCard::taus_or_karras`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TauSource {
    /// The card's `[timesteps]` entry (or, for one step, no times at all).
    Stored,
    /// The interior points of the Karras sampling grid: the card stores no
    /// times for this step count.
    Karras,
    /// The default spacing of the card's diffusers scheduler
    /// (`set_timesteps(num_inference_steps = k)`).
    Scheduler,
}

/// The largest guidance scale `w` a card or a sampling call may name (cm-core's).
pub use cm_core::MAX_GUIDANCE;

/// What kind of model a card describes and how to sample from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelCard {
    /// A consistency model `f(x, t)` (CD, CT or iCT).
    Consistency {
        /// Weights file (`.safetensors`), relative to the card's folder or absolute.
        weights: PathBuf,
        /// The boundary parameterization and noise range.
        consistency: ConsistencyConfig,
        /// Intermediate times `tau_1 > ... > tau_{k-1}` of k-step sampling,
        /// keyed by `k` (CM Algorithm 1); the timestep search writes these.
        #[serde(default)]
        timesteps: BTreeMap<String, Vec<f64>>,
        /// A diffusers `CMStochasticIterativeScheduler` the model was
        /// published with (a diffusers folder's card): step counts without
        /// stored times use its spacing, and its `clip_denoised` clips each
        /// step's output to [-1, 1].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduler: Option<CmSchedulerConfig>,
        /// The autoencoder's card when the model works in its latent space
        /// (a latent consistency model): samples are decoded to images.
        /// Relative to this card's folder, or absolute.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        autoencoder: Option<PathBuf>,
        /// The default guidance scale `w` of a network that embeds `w`
        /// (LCM's w-conditioning, `D_c + w (D_c - D_u)` distilled into one
        /// evaluation); `None` for networks that do not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guidance: Option<f64>,
        /// LoRA adapters applied on the fly on top of `weights` (LCM-LoRA:
        /// the base is the teacher, the adapter the acceleration vector).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        lora: Vec<LoraRef>,
    },
    /// An EDM diffusion model `D(x; sigma)` (the teacher).
    Edm {
        /// Weights file (`.safetensors`), relative to the card's folder or absolute.
        weights: PathBuf,
        /// Preconditioning and noise range.
        edm: EdmConfig,
        /// The default sampler.
        #[serde(default)]
        sampler: EdmSampler,
        /// The autoencoder's card when the model works in its latent space
        /// (a latent diffusion teacher): samples are decoded to images.
        /// Relative to this card's folder, or absolute.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        autoencoder: Option<PathBuf>,
        /// LoRA adapters applied on the fly on top of `weights` (a style
        /// fine-tune).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        lora: Vec<LoraRef>,
    },
}

/// An adapter file applied with weight `lambda` (`W + lambda (alpha/r) B
/// A`), as a card lists it and `--lora FILE:WEIGHT` names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraRef {
    /// The adapter file (`.safetensors`), relative to the card's folder or
    /// absolute.
    pub file: PathBuf,
    /// `lambda`.
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// The most adapters a card or a command line may stack.
pub const MAX_ADAPTERS: usize = 16;

impl LoraRef {
    /// Parses `FILE[:WEIGHT]` (weight 1 when absent); `what` names the
    /// argument in errors.
    pub fn parse(text: &str, what: &str) -> std::result::Result<LoraRef, String> {
        let (file, weight) = match text.rsplit_once(':') {
            Some((f, w)) if !f.is_empty() => {
                let weight: f64 = w.parse().map_err(|_| {
                    format!("{what} {text:?}: expected FILE:WEIGHT with a number after ':', found {w:?}")
                })?;
                (f, weight)
            }
            _ => (text, 1.0),
        };
        if file.is_empty() {
            return Err(format!("{what} {text:?}: expected FILE[:WEIGHT]"));
        }
        if !(weight.is_finite() && weight.abs() <= 100.0) {
            return Err(format!(
                "{what} {text:?}: the weight must be a finite number in [-100, 100], found {weight}"
            ));
        }
        Ok(LoraRef {
            file: file.into(),
            weight,
        })
    }
}

impl Validate for ModelCard {
    fn validate(&self) -> cm_core::Result<()> {
        if self.lora().len() > MAX_ADAPTERS {
            return Err(CoreError::invalid(
                "lora",
                format!("{} adapters", self.lora().len()),
                format!("at most {MAX_ADAPTERS} adapters"),
            ));
        }
        for (i, adapter) in self.lora().iter().enumerate() {
            if !(adapter.weight.is_finite() && adapter.weight.abs() <= 100.0) {
                return Err(CoreError::invalid(
                    format!("lora[{i}].weight"),
                    adapter.weight,
                    "a finite adapter weight in [-100, 100]",
                ));
            }
        }
        match self {
            ModelCard::Consistency {
                consistency,
                timesteps,
                scheduler,
                guidance,
                ..
            } => {
                consistency.validate_at("consistency.")?;
                if let Some(w) = *guidance {
                    cm_core::check_guidance_scale("guidance", w)?;
                }
                if let Some(scheduler) = scheduler {
                    scheduler.validate()?;
                }
                for (k, taus) in timesteps {
                    let field = format!("timesteps.{k}");
                    let steps: usize = k.parse().map_err(|_| {
                        CoreError::invalid(&field, k, "a step count (an integer >= 2) as the key")
                    })?;
                    if steps < 2 || taus.len() != steps - 1 {
                        return Err(CoreError::invalid(
                            &field,
                            format!("{taus:?}"),
                            format!(
                                "{} intermediate times for {steps}-step sampling (k >= 2)",
                                steps.saturating_sub(1)
                            ),
                        ));
                    }
                    let mut prev = consistency.sigma_max;
                    for &tau in taus {
                        if !(tau > consistency.sigma_min && tau < prev) {
                            return Err(CoreError::invalid(
                                &field,
                                format!("{taus:?}"),
                                format!(
                                    "decreasing times in (sigma_min, sigma_max) = ({}, {})",
                                    consistency.sigma_min, consistency.sigma_max
                                ),
                            ));
                        }
                        prev = tau;
                    }
                }
                Ok(())
            }
            ModelCard::Edm { edm, sampler, .. } => {
                edm.validate_at("edm.")?;
                sampler.validate_at("sampler.")
            }
        }
    }
}

impl ModelCard {
    /// Reads and validates a card; a relative `weights` path is resolved
    /// against the card's folder.
    /// A folder (a run folder) is refused with the card path to pass; a
    /// `.safetensors` file is read as a weights file that carries its card
    /// ([`ModelCard::from_weights`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.extension().is_some_and(|e| e == "safetensors") {
            return Self::from_weights(path);
        }
        if path.is_dir() {
            let inside = path.join(CARD_FILE);
            return Err(SampleError::Card {
                path: path.to_path_buf(),
                message: if inside.is_file() {
                    format!(
                        "is a folder; pass the model card inside it, {}",
                        inside.display()
                    )
                } else {
                    format!(
                        "is a folder, not a model card (a finished run writes {CARD_FILE} in its folder; \
                         this one has none)"
                    )
                },
            });
        }
        let kind = cm_core::load_toml::<KindPeek>(path)?.kind;
        if kind.as_deref() == Some("autoencoder") {
            return Err(SampleError::Card {
                path: path.to_path_buf(),
                message: "is an autoencoder's card: it does not sample on its own; name it as \
                          `[latent] autoencoder` in a run config"
                    .into(),
            });
        }
        if kind.as_deref() == Some("diffusers") {
            let file: DiffusersCardFile = cm_core::load_toml(path)?;
            return file.resolve(path);
        }
        let mut card: ModelCard = cm_core::load_toml(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let weights = card.weights_mut();
        if weights.is_relative() {
            *weights = dir.join(&*weights);
        }
        if let Some(ae) = card.autoencoder_mut() {
            if ae.is_relative() {
                *ae = dir.join(&*ae);
            }
        }
        for adapter in card.lora_mut() {
            if adapter.file.is_relative() {
                adapter.file = dir.join(&adapter.file);
            }
        }
        Ok(card)
    }

    /// The card as checkpoint metadata ([`META_CARD`]): JSON without the
    /// weights path.
    pub fn metadata_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("model cards serialize to JSON");
        if let Some(map) = value.as_object_mut() {
            map.remove("weights");
        }
        value.to_string()
    }

    /// The card stored in the metadata of the weights file `weights` (what a
    /// training run writes, [`META_CARD`]), pointing at that file: sampling
    /// needs no `model.toml` and no sidecar.
    pub fn from_weights(weights: impl AsRef<Path>) -> Result<Self> {
        let weights = weights.as_ref();
        let meta = cm_nets::read_metadata(weights)?;
        let bad = |message: String| SampleError::Card {
            path: weights.to_path_buf(),
            message,
        };
        let json = meta.get(META_CARD).ok_or_else(|| {
            bad(format!(
                "has no `{META_CARD}` metadata (written by cm-rs training runs); pass its model.toml"
            ))
        })?;
        let mut value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| bad(format!("metadata `{META_CARD}` is not JSON ({e})")))?;
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "weights".into(),
                serde_json::Value::String(weights.to_string_lossy().into_owned()),
            );
        }
        let mut card: ModelCard = serde_json::from_value(value)
            .map_err(|e| bad(format!("metadata `{META_CARD}` is not a model card ({e})")))?;
        card.validate()?;
        let dir = weights.parent().unwrap_or(Path::new("."));
        for adapter in card.lora_mut() {
            if adapter.file.is_relative() {
                adapter.file = dir.join(&adapter.file);
            }
        }
        Ok(card)
    }

    /// Writes the card atomically. `weights` is written as it is: make it
    /// relative to `path`'s folder to keep a run folder movable.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.validate()?;
        write_toml_atomic(self, path.as_ref())
    }

    /// Writes the card over the file it was loaded from, `path`, keeping
    /// the weights, autoencoder and adapter paths as that file has them ([`ModelCard::load`] makes a
    /// relative one card-relative-joined; this keeps the run folder movable).
    pub fn save_over(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let on_disk: ModelCard = cm_core::load_toml(path)?;
        let mut card = self.clone();
        card.set_weights(on_disk.weights().to_path_buf());
        card.set_autoencoder(on_disk.autoencoder().map(Path::to_path_buf));
        // Adapter files as the file names them (relative to its folder).
        *card.lora_mut() = on_disk.lora().to_vec();
        card.save(path)
    }

    /// The weights file.
    pub fn weights(&self) -> &Path {
        match self {
            ModelCard::Consistency { weights, .. } | ModelCard::Edm { weights, .. } => weights,
        }
    }

    /// Points the card at another weights file (relative paths are taken
    /// relative to the card's folder when it is loaded).
    pub fn set_weights(&mut self, weights: PathBuf) {
        *self.weights_mut() = weights;
    }

    fn weights_mut(&mut self) -> &mut PathBuf {
        match self {
            ModelCard::Consistency { weights, .. } | ModelCard::Edm { weights, .. } => weights,
        }
    }

    /// The autoencoder's card, for a model in its latent space.
    pub fn autoencoder(&self) -> Option<&Path> {
        match self {
            ModelCard::Consistency { autoencoder, .. } | ModelCard::Edm { autoencoder, .. } => {
                autoencoder.as_deref()
            }
        }
    }

    fn autoencoder_mut(&mut self) -> Option<&mut PathBuf> {
        match self {
            ModelCard::Consistency { autoencoder, .. } | ModelCard::Edm { autoencoder, .. } => {
                autoencoder.as_mut()
            }
        }
    }

    /// Names the autoencoder whose latent space the model works in.
    pub fn set_autoencoder(&mut self, card: Option<PathBuf>) {
        match self {
            ModelCard::Consistency { autoencoder, .. } | ModelCard::Edm { autoencoder, .. } => {
                *autoencoder = card
            }
        }
    }

    /// The default guidance scale of a network that embeds `w` (LCM).
    pub fn embedded_guidance(&self) -> Option<f64> {
        match self {
            ModelCard::Consistency { guidance, .. } => *guidance,
            ModelCard::Edm { .. } => None,
        }
    }

    /// The autoencoder that decodes the model's latents, loaded on
    /// `device`; `None` for a model in image space.
    pub fn load_codec(&self, device: Device) -> Result<Option<crate::LatentCodec>> {
        self.autoencoder()
            .map(|path| crate::AutoencoderCard::load(path)?.load_codec(device))
            .transpose()
    }

    /// Loads the network (architecture from the weights' sidecar, else from
    /// the weights' metadata) with the card's adapters applied on the fly
    /// (named `lora0`, `lora1`, ... in card order).
    pub fn load_model(&self, device: Device) -> Result<Model> {
        let mut model = Model::from_checkpoint(self.weights(), device)?;
        for (i, adapter) in self.lora().iter().enumerate() {
            model.load_adapter(&adapter.file, &format!("lora{i}"), adapter.weight)?;
        }
        Ok(model)
    }

    /// The adapters applied on top of the weights.
    pub fn lora(&self) -> &[LoraRef] {
        match self {
            ModelCard::Consistency { lora, .. } | ModelCard::Edm { lora, .. } => lora,
        }
    }

    fn lora_mut(&mut self) -> &mut Vec<LoraRef> {
        match self {
            ModelCard::Consistency { lora, .. } | ModelCard::Edm { lora, .. } => lora,
        }
    }

    /// Drops the adapters (a merged card holds them in its weights).
    pub fn clear_lora(&mut self) {
        self.lora_mut().clear();
    }

    /// Stacks adapters (`--lora FILE:WEIGHT`) on those the card lists; one
    /// naming a file the card already lists sets that adapter's weight
    /// instead (LCM-LoRA's `lambda` of the acceleration vector). At most
    /// [`MAX_ADAPTERS`] in all.
    pub fn push_lora(&mut self, adapters: &[LoraRef]) -> Result<()> {
        let lora = self.lora_mut();
        for adapter in adapters {
            match lora
                .iter_mut()
                .find(|l| cm_core::same_file(&l.file, &adapter.file))
            {
                Some(listed) => listed.weight = adapter.weight,
                None => lora.push(adapter.clone()),
            }
        }
        if lora.len() > MAX_ADAPTERS {
            return Err(SampleError::Card {
                path: PathBuf::from("--lora"),
                message: format!(
                    "{} adapters in all; at most {MAX_ADAPTERS} may be stacked",
                    lora.len()
                ),
            });
        }
        Ok(())
    }

    /// The noise range `[sigma_min, sigma_max]` the model is defined on.
    pub fn range(&self) -> NoiseRange {
        match self {
            ModelCard::Consistency { consistency, .. } => consistency.range(),
            ModelCard::Edm { edm, .. } => edm.range(),
        }
    }

    /// `sigma_max`: samples start from `sigma_max * z`.
    pub fn sigma_max(&self) -> f64 {
        match self {
            ModelCard::Consistency { consistency, .. } => consistency.sigma_max,
            ModelCard::Edm { edm, .. } => edm.sigma_max,
        }
    }

    /// `sigma_min`: the end of the noise range.
    pub fn sigma_min(&self) -> f64 {
        match self {
            ModelCard::Consistency { consistency, .. } => consistency.sigma_min,
            ModelCard::Edm { edm, .. } => edm.sigma_min,
        }
    }

    /// The model as a denoiser: the consistency function `f(x, t)` or the
    /// EDM denoiser `D(x; sigma)`, without dropout.
    pub fn denoiser<'a>(&self, model: &'a Model) -> Box<dyn Denoiser + 'a> {
        match self {
            ModelCard::Consistency {
                consistency,
                scheduler,
                ..
            } => {
                let f = Preconditioned::eval(model, consistency.parameterization());
                if scheduler.as_ref().is_some_and(|s| s.clip_denoised) {
                    Box::new(ClipDenoised(f))
                } else {
                    Box::new(f)
                }
            }
            ModelCard::Edm { edm, .. } => {
                Box::new(Preconditioned::eval(model, edm.preconditioning()))
            }
        }
    }

    /// The stored intermediate times of `steps`-step consistency sampling:
    /// none for one step, the card's `timesteps` entry otherwise (or, for a
    /// card with a diffusers scheduler, that scheduler's default spacing).
    pub fn taus(&self, steps: usize) -> Result<Vec<f64>> {
        match self {
            ModelCard::Consistency {
                timesteps,
                scheduler,
                ..
            } => match steps {
                0 => Err(CoreError::invalid("steps", 0, "at least 1").into()),
                1 => Ok(Vec::new()),
                k if !timesteps.contains_key(&k.to_string()) && scheduler.is_some() => {
                    scheduler.as_ref().expect("checked").default_taus(k)
                }
                k => timesteps.get(&k.to_string()).cloned().ok_or_else(|| {
                    CoreError::invalid(
                        "steps",
                        k,
                        format!(
                            "a step count with stored timesteps (the card has 1{}); \
                             pass the times explicitly or run the timestep search",
                            timesteps
                                .keys()
                                .map(|k| format!(", {k}"))
                                .collect::<String>()
                        ),
                    )
                    .into()
                }),
            },
            ModelCard::Edm { .. } => Err(CoreError::invalid(
                "kind",
                "edm",
                "a consistency model (intermediate times belong to consistency sampling)",
            )
            .into()),
        }
    }

    /// The default intermediate times of `steps`-step consistency sampling:
    /// the interior points of the `(steps + 1)`-level EDM sampling grid
    /// (Karras et al. 2022, Eq. 5) from `start` (default `sigma_max`; SDEdit
    /// starts lower) down to `sigma_min`, with the card's `rho`. The grid is
    /// `start = s_0 > s_1 > ... > s_steps = sigma_min`; its `steps - 1`
    /// interior levels are the re-noising times, so `steps` counts network
    /// evaluations (one step: no times).
    pub fn karras_taus(&self, steps: usize, start: Option<f64>) -> Result<Vec<f64>> {
        let ModelCard::Consistency { consistency, .. } = self else {
            return Err(CoreError::invalid(
                "kind",
                "edm",
                "a consistency model (intermediate times belong to consistency sampling)",
            )
            .into());
        };
        if steps == 0 {
            return Err(CoreError::invalid("steps", 0, "at least 1").into());
        }
        let start = start.unwrap_or(consistency.sigma_max);
        if !(start > consistency.sigma_min && start <= consistency.sigma_max) {
            return Err(CoreError::invalid(
                "start",
                start,
                format!(
                    "a time in (sigma_min, sigma_max] = ({}, {}]",
                    consistency.sigma_min, consistency.sigma_max
                ),
            )
            .into());
        }
        let grid = cm_core::KarrasGrid {
            sigma_max: start,
            ..consistency.grid()
        };
        // steps + 2 values: s_0 .. s_steps, then 0.
        let sigmas = grid.sampling_sigmas(steps + 1)?;
        Ok(sigmas[1..steps].to_vec())
    }

    /// The times of `steps`-step consistency sampling as `cm eval` uses
    /// them: the card's stored ones ([`ModelCard::taus`]; none for one
    /// step), else the default Karras times ([`ModelCard::karras_taus`] from
    /// `sigma_max`), with where they came from.
    pub fn taus_or_karras(&self, steps: usize) -> Result<(Vec<f64>, TauSource)> {
        let stored = match self {
            ModelCard::Consistency { timesteps, .. } => {
                steps <= 1 || timesteps.contains_key(&steps.to_string())
            }
            ModelCard::Edm { .. } => true,
        };
        match self.taus(steps) {
            Ok(taus) if stored => Ok((taus, TauSource::Stored)),
            Ok(taus) => Ok((taus, TauSource::Scheduler)),
            Err(_) if steps >= 2 && matches!(self, ModelCard::Consistency { .. }) => {
                Ok((self.karras_taus(steps, None)?, TauSource::Karras))
            }
            Err(e) => Err(e),
        }
    }

    /// Samples from standard-normal `latents` with the card's defaults and
    /// `steps` network steps: consistency sampling with the stored times
    /// (CM Algorithm 1), or the EDM sampler with `steps` steps (Heun uses
    /// `2 steps - 1` evaluations). Runs without autograd.
    pub fn sample(
        &self,
        model: &Model,
        latents: &Tensor,
        steps: usize,
        cond: Conditioning<'_>,
    ) -> Result<Sampled> {
        let f = self.denoiser(model);
        match self {
            ModelCard::Consistency { consistency, .. } => {
                let taus = self.taus(steps)?;
                Ok(consistency_sample(
                    f.as_ref(),
                    latents,
                    consistency.range(),
                    &taus,
                    cond,
                )?)
            }
            ModelCard::Edm { edm, sampler, .. } => {
                let sampler = EdmSampler { steps, ..*sampler };
                Ok(edm_sample(
                    f.as_ref(),
                    latents,
                    &edm.grid(),
                    &sampler,
                    cond,
                )?)
            }
        }
    }
}

// The diffusers folder's card lives here, beside the card type it builds
// (diffusers.rs knows folders and schedulers, not cards).
impl DiffusersFolder {
    /// The model card that samples this folder as diffusers'
    /// `ConsistencyModelPipeline` does: a consistency card with the
    /// scheduler's parameterization, clipping and spacing, the weights of
    /// `unet/`, and `timesteps` (diffusers indices per step count)
    /// converted to intermediate times.
    pub fn card(&self, timesteps: &BTreeMap<String, Vec<usize>>) -> Result<ModelCard> {
        let scheduler = self.scheduler()?;
        let mut taus = BTreeMap::new();
        for (k, ts) in timesteps {
            let field = format!("timesteps.{k}");
            let steps: usize = k.parse().map_err(|_| {
                CoreError::invalid(&field, k, "a step count (an integer >= 2) as the key")
            })?;
            if steps < 2 || ts.len() != steps {
                return Err(CoreError::invalid_debug(
                    &field,
                    ts,
                    format!("{steps} timesteps for {steps}-step sampling (k >= 2)"),
                )
                .into());
            }
            // The canonical key ("2", not "02"), which lookups use.
            if taus
                .insert(steps.to_string(), scheduler.taus_for(ts)?)
                .is_some()
            {
                return Err(CoreError::invalid_debug(&field, k, "one entry per step count").into());
            }
        }
        let card = ModelCard::Consistency {
            weights: self.weights.clone(),
            consistency: scheduler.consistency(),
            timesteps: taus,
            scheduler: Some(scheduler),
            autoencoder: None,
            guidance: None,
            lora: Vec::new(),
        };
        card.validate()?;
        Ok(card)
    }
}

impl DiffusersCardFile {
    /// Resolves the card file at `path` (its `folder` relative to the
    /// card's folder) into the model card it stands for.
    pub fn resolve(&self, path: &Path) -> Result<ModelCard> {
        self.validate()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let folder = if self.folder.is_relative() {
            dir.join(&self.folder)
        } else {
            self.folder.clone()
        };
        DiffusersFolder::open(folder)?.card(&self.timesteps)
    }
}

/// Writes `value` as TOML to `path` atomically (temporary file, then
/// rename): a card is never left half-written.
pub(crate) fn write_toml_atomic<T: Serialize>(value: &T, path: &Path) -> Result<()> {
    let text = toml::to_string(value).map_err(|e| SampleError::Card {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    cm_nets::write_atomic(path, |tmp| {
        std::fs::write(tmp, &text).map_err(|source| cm_nets::NetError::Io {
            action: "cannot write",
            path: tmp.to_path_buf(),
            source,
        })
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cm_core::ConsistencyConfig;

    fn card(timesteps: &[(&str, Vec<f64>)]) -> ModelCard {
        ModelCard::Consistency {
            weights: "w.safetensors".into(),
            consistency: ConsistencyConfig::default(),
            timesteps: timesteps
                .iter()
                .map(|(k, t)| (k.to_string(), t.clone()))
                .collect(),
            scheduler: None,
            autoencoder: None,
            guidance: None,
            lora: Vec::new(),
        }
    }

    /// Karras et al. 2022, Eq. 5, written out: level `i` of `n` from `hi` to `lo`.
    fn karras(hi: f64, lo: f64, rho: f64, i: usize, n: usize) -> f64 {
        let t = i as f64 / (n - 1) as f64;
        (hi.powf(1.0 / rho) + t * (lo.powf(1.0 / rho) - hi.powf(1.0 / rho))).powf(rho)
    }

    #[test]
    fn karras_taus_are_the_interior_grid_levels() {
        let c = ConsistencyConfig::default();
        let card = card(&[]);
        assert!(card.karras_taus(1, None).unwrap().is_empty());
        for steps in [2, 3, 5] {
            let taus = card.karras_taus(steps, None).unwrap();
            assert_eq!(taus.len(), steps - 1);
            for (j, tau) in taus.iter().enumerate() {
                let want = karras(c.sigma_max, c.sigma_min, c.rho, j + 1, steps + 1);
                assert!((tau - want).abs() < 1e-9 * want, "{steps}: {tau} vs {want}");
            }
        }
        // SDEdit: the grid starts at the given time.
        let taus = card.karras_taus(3, Some(2.0)).unwrap();
        assert!((taus[0] - karras(2.0, c.sigma_min, c.rho, 1, 4)).abs() < 1e-9);
        assert!(card.karras_taus(0, None).is_err());
        assert!(card.karras_taus(2, Some(c.sigma_max * 2.0)).is_err());
        assert!(card.karras_taus(2, Some(c.sigma_min)).is_err());
    }

    #[test]
    fn stored_times_win_over_karras_times() {
        let card = card(&[("2", vec![0.821])]);
        assert_eq!(
            card.taus_or_karras(2).unwrap(),
            (vec![0.821], TauSource::Stored)
        );
        assert_eq!(card.taus_or_karras(1).unwrap(), (vec![], TauSource::Stored));
        assert_eq!(
            card.taus_or_karras(3).unwrap(),
            (card.karras_taus(3, None).unwrap(), TauSource::Karras)
        );
        assert!(card.taus_or_karras(0).is_err());
        let edm = ModelCard::Edm {
            weights: "w.safetensors".into(),
            edm: Default::default(),
            sampler: Default::default(),
            autoencoder: None,
            lora: Vec::new(),
        };
        assert!(edm.taus_or_karras(2).is_err());
        assert!(edm.karras_taus(2, None).is_err());
    }
}
