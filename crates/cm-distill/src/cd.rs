//! The consistency-distillation objective (Song et al. 2023, Algorithm 2):
//! draw a pair `(t_n, t_{n+1})` of the training grid, noise the data to
//! `x_{n+1} = x0 + t_{n+1} z`, take one teacher PF-ODE step down to `t_n`
//! (Euler or Heun, autograd off), and pull the student's
//! `f_theta(x_{n+1}, t_{n+1})` towards the target network's
//! `f_theta-(x^_n, t_n)` under the distance `d`, weighted by `lambda(t_n)`.
//! After each optimizer step the target follows the student,
//! `theta- <- mu theta- + (1 - mu) theta`, with `mu` from the discretization
//! schedule (`mu = 0` makes it a stop-gradient copy).
//!
//! The pair sampling, target EMA, weighted distance and sampling are
//! [`cm_train::ConsistencyCore`], shared with consistency training through
//! cm-train's public API. As in the
//! reference code, the student and the target see the same dropout
//! mask: both forward passes start from the same generator seed.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use cm_core::{append_dims, Conditioning, ConsistencyRecipe, EdmConfig, OdeSolver, Solver};
use cm_nets::{Model, Preconditioned};
use cm_train::{Batch, ConsistencyCore, Objective, Result};

/// Settings of consistency distillation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdConfig {
    /// Parameterization, N / mu schedule, pair sampling, weighting, metric.
    pub recipe: ConsistencyRecipe,
    /// The teacher's ODE solver for the step `t_{n+1} -> t_n`.
    pub solver: Solver,
    /// Intermediate time of the 2-step sample grids (Algorithm 1).
    pub two_step_tau: f64,
}

impl Default for CdConfig {
    /// The CM paper's CIFAR-10 CD: N = 18, mu = 0.95, Heun teacher, uniform
    /// pairs and weights (pseudo-Huber instead of LPIPS, see
    /// `ConsistencyRecipe::cd`); 2-step grids re-noise to t = 0.821.
    fn default() -> Self {
        CdConfig {
            recipe: ConsistencyRecipe::cd(),
            solver: Solver::Heun,
            two_step_tau: 0.821,
        }
    }
}

impl CdConfig {
    /// Checks the ranges; `prefix` is the dotted path of the section.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        self.recipe.validate_at(&format!("{prefix}recipe."))?;
        let c = &self.recipe.consistency;
        if !(self.two_step_tau > c.sigma_min && self.two_step_tau < c.sigma_max) {
            return Err(cm_core::CoreError::invalid(
                format!("{prefix}two_step_tau"),
                self.two_step_tau,
                format!(
                    "a time in (sigma_min, sigma_max) = ({}, {})",
                    c.sigma_min, c.sigma_max
                ),
            ));
        }
        Ok(())
    }
}

/// The CD objective with its frozen teacher and its target network.
#[derive(Debug)]
pub struct CdObjective {
    config: CdConfig,
    teacher: Model,
    teacher_edm: EdmConfig,
    core: ConsistencyCore,
}

impl CdObjective {
    /// `teacher` is the EDM denoiser network (frozen here) with its EDM
    /// settings; `student` is the network being trained (start it from the
    /// teacher's weights); the target starts as a copy of the student.
    pub fn new(
        config: CdConfig,
        mut teacher: Model,
        teacher_edm: EdmConfig,
        student: &Model,
        metric: Box<dyn cm_core::DistanceMetric + Send>,
    ) -> Result<Self> {
        config.validate_at("cd.")?;
        teacher.var_store_mut().freeze();
        let core = ConsistencyCore::new(config.recipe, student, "cd.recipe.", metric)?;
        Ok(CdObjective {
            config,
            teacher,
            teacher_edm,
            core,
        })
    }

    /// The target network `theta-`.
    pub fn target(&self) -> &Model {
        self.core.target()
    }

    /// The frozen teacher.
    pub fn teacher(&self) -> &Model {
        &self.teacher
    }
}

impl Objective for CdObjective {
    fn name(&self) -> &str {
        "cd"
    }

    fn loss(&mut self, online: &Model, batch: &Batch, step: u64) -> Result<Tensor> {
        let x0 = &batch.x;
        let (t_n, t_next) = self.core.pairs(x0, step)?;
        let x_next = x0 + x0.randn_like() * append_dims(&t_next, x0.dim());
        let cond = Conditioning::from_class(batch.labels.as_ref());
        // One teacher ODE step t_{n+1} -> t_n, without autograd.
        let x_hat = tch::no_grad(|| {
            let teacher = Preconditioned::eval(&self.teacher, self.teacher_edm.preconditioning());
            self.config
                .solver
                .step(&teacher, &x_next, &t_next, &t_n, cond)
        });
        Ok(self
            .core
            .loss(online, (&x_next, &t_next), (&x_hat, &t_n), cond))
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
