//! Consistency training without a teacher (CT, Song et al. 2023,
//! Algorithm 3) and, through the recipe's switches, the improved recipe (iCT,
//! Song & Dhariwal 2023): the two points of a pair share one noise draw,
//! `x_{n+1} = x0 + t_{n+1} z` and `x_n = x0 + t_n z`, and the student's
//! `f_theta(x_{n+1}, t_{n+1})` is pulled towards the target's
//! `f_theta-(x_n, t_n)` under `lambda(t_n) d(., .)`.
//!
//! Every iCT change is a field of [`cm_core::ConsistencyRecipe`]: `mu = 0`
//! through the exponential curriculum, pseudo-Huber, `1/(t_{n+1} - t_n)`
//! weighting, lognormal pairs; dropout and the Fourier scale are network
//! settings. So the path from CT to iCT can be run one change at a time.
//!
//! The pair sampling, target network, weighted distance and sampling are
//! [`ConsistencyCore`], shared with consistency distillation (cm-distill).

use tch::Tensor;

use cm_core::{append_dims, Conditioning, ConsistencyRecipe};
use cm_nets::Model;

use crate::consistency::ConsistencyCore;
use crate::error::Result;
use crate::objective::{Batch, Objective};

/// The CT / iCT objective.
#[derive(Debug)]
pub struct CtObjective {
    core: ConsistencyCore,
}

impl CtObjective {
    /// The target starts as a copy of `student`; `metric` is the recipe's
    /// `d` ([`crate::build_metric`]).
    pub fn new(
        recipe: ConsistencyRecipe,
        student: &Model,
        metric: Box<dyn cm_core::DistanceMetric + Send>,
    ) -> Result<Self> {
        Ok(CtObjective {
            core: ConsistencyCore::new(recipe, student, "recipe.", metric)?,
        })
    }

    /// The target network `theta-`.
    pub fn target(&self) -> &Model {
        self.core.target()
    }
}

impl Objective for CtObjective {
    fn name(&self) -> &str {
        "ct"
    }

    fn loss(&mut self, online: &Model, batch: &Batch, step: u64) -> Result<Tensor> {
        let x0 = &batch.x;
        let (t_n, t_next) = self.core.pairs(x0, step)?;
        // The same z for both points (Algorithm 3).
        let z = x0.randn_like();
        let x_next = x0 + &z * append_dims(&t_next, x0.dim());
        let x_n = x0 + &z * append_dims(&t_n, x0.dim());
        Ok(self.core.loss(
            online,
            (&x_next, &t_next),
            (&x_n, &t_n),
            Conditioning::from_class(batch.labels.as_ref()),
        ))
    }

    fn after_step(&mut self, online: &Model, step: u64) -> Result<()> {
        self.core.update_target(online, step);
        Ok(())
    }

    fn extra_models(&self) -> Vec<(&'static str, &Model)> {
        self.core.extra_models()
    }

    fn extra_models_mut(&mut self) -> Vec<(&'static str, &mut Model)> {
        self.core.extra_models_mut()
    }

    fn sample(&self, model: &Model, latents: &Tensor, cond: Conditioning<'_>) -> Result<Tensor> {
        self.core.sample(model, latents, cond)
    }
}
