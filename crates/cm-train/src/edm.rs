//! The EDM teacher objective (Karras et al. 2022, Section 5 and Table 1):
//! `ln sigma ~ N(P_mean, P_std^2)`, loss `lambda(sigma) |D(x0 + sigma z; sigma) - x0|^2`
//! with `lambda = (sigma^2 + sd^2)/(sigma sd)^2`, averaged over pixels and batch;
//! optional label dropout to the null class for classifier-free guidance.
//! Samples for the periodic grids come from the EDM sampler.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use cm_core::{
    append_dims, Conditioning, CoreError, Denoiser, DistanceMetric, EdmConfig, SquaredL2,
};
use cm_nets::{Model, Preconditioned};
use cm_sample::{edm_sample, EdmSampler};

use crate::error::Result;
use crate::objective::{Batch, Objective};

/// Settings of the EDM objective.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdmObjectiveConfig {
    /// Preconditioning, training noise levels and sampling grid.
    pub edm: EdmConfig,
    /// Probability of replacing a label by the null class (for
    /// classifier-free guidance); 0 for unconditional training.
    pub label_dropout: f64,
    /// Sampler for the periodic sample grids.
    pub sampler: EdmSampler,
}

impl EdmObjectiveConfig {
    /// Checks the ranges; `prefix` is the dotted path of the section.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        self.edm.validate_at(&format!("{prefix}edm."))?;
        if !(0.0..=1.0).contains(&self.label_dropout) {
            return Err(CoreError::invalid(
                format!("{prefix}label_dropout"),
                self.label_dropout,
                "a probability in [0, 1]",
            ));
        }
        self.sampler.validate_at(&format!("{prefix}sampler."))
    }
}

/// The EDM denoising objective.
#[derive(Debug, Clone, Copy)]
pub struct EdmObjective {
    /// Its settings.
    pub config: EdmObjectiveConfig,
}

/// Replaces each label by `null` with probability `p` (libtorch's generator).
pub fn drop_labels(labels: &Tensor, null: i64, p: f64) -> Tensor {
    if p <= 0.0 {
        return labels.shallow_clone();
    }
    let drop = Tensor::rand(labels.size(), (Kind::Float, labels.device())).lt(p);
    labels.where_self(&drop.logical_not(), &labels.full_like(null))
}

impl Objective for EdmObjective {
    fn name(&self) -> &str {
        "edm"
    }

    fn loss(&mut self, online: &Model, batch: &Batch, _step: u64) -> Result<Tensor> {
        let x0 = &batch.x;
        let b = x0.size()[0];
        let edm = &self.config.edm;
        let sigma = edm.noise().sample(b, x0.kind(), x0.device());
        let noisy = x0 + x0.randn_like() * append_dims(&sigma, x0.dim());
        let labels = match (online.null_class(), &batch.labels) {
            (Some(null), Some(l)) => Some(drop_labels(l, null, self.config.label_dropout)),
            _ => None,
        };
        let precond = edm.preconditioning();
        let d = Preconditioned {
            model: online,
            param: precond,
            train: true,
        };
        let denoised = d.denoise(&noisy, &sigma, Conditioning::from_class(labels.as_ref()));
        let per_example = SquaredL2.distance(&denoised, x0);
        Ok((precond.loss_weight(&sigma) * per_example).mean(Kind::Float))
    }

    fn sample(&self, model: &Model, latents: &Tensor, cond: Conditioning<'_>) -> Result<Tensor> {
        let d = Preconditioned::eval(model, self.config.edm.preconditioning());
        Ok(edm_sample(
            &d,
            latents,
            &self.config.edm.grid(),
            &self.config.sampler,
            cond,
        )?
        .x)
    }
}
