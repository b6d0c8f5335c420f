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

use cm_core::{Conditioning, ConsistencyConfig, CoreError, Denoiser, EdmConfig, NoiseRange, Validate};
use cm_nets::{Model, Preconditioned};

use crate::consistency::consistency_sample;
use crate::edm::{edm_sample, EdmSampler, Sampled};
use crate::error::{Result, SampleError};

/// File name pipelines give the card of a finished run: `<run>/model.toml`.
pub const CARD_FILE: &str = "model.toml";

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
    },
}

impl Validate for ModelCard {
    fn validate(&self) -> cm_core::Result<()> {
        match self {
            ModelCard::Consistency {
                consistency,
                timesteps,
                ..
            } => {
                consistency.validate_at("consistency.")?;
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
                if sampler.steps == 0 {
                    return Err(CoreError::invalid("sampler.steps", 0, "at least 1"));
                }
                Ok(())
            }
        }
    }
}

impl ModelCard {
    /// Reads and validates a card; a relative `weights` path is resolved
    /// against the card's folder.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut card: ModelCard = cm_core::load_toml(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let weights = card.weights_mut();
        if weights.is_relative() {
            *weights = dir.join(&*weights);
        }
        Ok(card)
    }

    /// Writes the card atomically. `weights` is written as it is: make it
    /// relative to `path`'s folder to keep a run folder movable.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.validate()?;
        let path = path.as_ref();
        let text = toml::to_string(self).map_err(|e| SampleError::Card {
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

    /// Loads the network (architecture from the weights' sidecar).
    pub fn load_model(&self, device: Device) -> Result<Model> {
        Ok(Model::from_checkpoint(self.weights(), device)?)
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
            ModelCard::Consistency { consistency, .. } => {
                Box::new(Preconditioned::eval(model, consistency.parameterization()))
            }
            ModelCard::Edm { edm, .. } => {
                Box::new(Preconditioned::eval(model, edm.preconditioning()))
            }
        }
    }

    /// The stored intermediate times of `steps`-step consistency sampling:
    /// none for one step, the card's `timesteps` entry otherwise.
    pub fn taus(&self, steps: usize) -> Result<Vec<f64>> {
        match self {
            ModelCard::Consistency { timesteps, .. } => match steps {
                0 => Err(CoreError::invalid("steps", 0, "at least 1").into()),
                1 => Ok(Vec::new()),
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
