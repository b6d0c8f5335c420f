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
//! As in the reference code, the student and the target see the same dropout
//! mask: both forward passes start from the same generator seed.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use cm_core::{
    adjacent_pairs, append_dims, grid_tensor, BoundWeighting, ConsistencyRecipe, Denoiser,
    DiscretizationSchedule, DistanceMetric, EdmConfig, IndexSampler, LossWeighting, OdeSolver,
    Solver,
};
use cm_nets::{Model, Preconditioned};
use cm_sample::consistency_sample;
use cm_train::{ema_update, Batch, Objective, Result};

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
pub struct CdObjective {
    config: CdConfig,
    teacher: Model,
    teacher_edm: EdmConfig,
    target: Model,
    metric: Box<dyn DistanceMetric + Send>,
    weighting: BoundWeighting,
    grids: HashMap<usize, (Vec<f64>, Tensor)>,
}

impl std::fmt::Debug for CdObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdObjective")
            .field("config", &self.config)
            .field("metric", &self.metric.name())
            .field("grids_cached", &self.grids.len())
            .finish_non_exhaustive()
    }
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
    ) -> Result<Self> {
        config.validate_at("cd.")?;
        teacher.var_store_mut().freeze();
        let mut target = Model::new(student.config().clone(), student.device())?;
        target.copy_from(student)?;
        target.var_store_mut().freeze();
        let dim = student.config().sample_shape().iter().product::<i64>() as usize;
        Ok(CdObjective {
            metric: config.recipe.metric.build(dim),
            weighting: config
                .recipe
                .weighting
                .bind(config.recipe.consistency.sigma_data)?,
            config,
            teacher,
            teacher_edm,
            target,
            grids: HashMap::new(),
        })
    }

    /// The target network `theta-`.
    pub fn target(&self) -> &Model {
        &self.target
    }

    /// The frozen teacher.
    pub fn teacher(&self) -> &Model {
        &self.teacher
    }

    /// The training grid with `n` points, as values and a tensor (cached).
    fn grid(&mut self, n: usize, kind: Kind, device: Device) -> Result<&(Vec<f64>, Tensor)> {
        if !self.grids.contains_key(&n) {
            let values = self.config.recipe.consistency.grid().training_sigmas(n)?;
            let tensor = grid_tensor(&values, kind, device);
            self.grids.insert(n, (values, tensor));
        }
        Ok(&self.grids[&n])
    }
}

impl Objective for CdObjective {
    fn name(&self) -> &str {
        "cd"
    }

    fn loss(&mut self, online: &Model, batch: &Batch, step: u64) -> Result<Tensor> {
        let x0 = &batch.x;
        let (b, ndim) = (x0.size()[0], x0.dim());
        let n = self.config.recipe.schedule.at(step).n;
        let noise = self.config.recipe.noise;
        let (t_n, t_next) = {
            let (values, grid) = self.grid(n, x0.kind(), x0.device())?;
            let index = noise.sample(values, b, x0.device());
            adjacent_pairs(grid, &index)
        };
        let x_next = x0 + x0.randn_like() * append_dims(&t_next, ndim);
        let labels = batch.labels.as_ref();
        // One teacher ODE step t_{n+1} -> t_n, without autograd.
        let x_hat = tch::no_grad(|| {
            let teacher = Preconditioned::eval(&self.teacher, self.teacher_edm.preconditioning());
            self.config
                .solver
                .step(&teacher, &x_next, &t_next, &t_n, labels)
        });
        let param = self.config.recipe.consistency.parameterization();
        // Same dropout mask for student and target (reference code).
        let dropout_seed =
            Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
        tch::manual_seed(dropout_seed);
        let student = Preconditioned {
            model: online,
            param,
            train: true,
        };
        let pred = student.denoise(&x_next, &t_next, labels);
        tch::manual_seed(dropout_seed);
        let target = tch::no_grad(|| {
            Preconditioned {
                model: &self.target,
                param,
                train: true,
            }
            .denoise(&x_hat, &t_n, labels)
        });
        let weights = self.weighting.weight(&t_n, &t_next);
        Ok((weights * self.metric.distance(&pred, &target)).mean(Kind::Float))
    }

    fn after_step(&mut self, online: &Model, step: u64) -> Result<()> {
        ema_update(
            &self.target,
            online,
            self.config.recipe.schedule.at(step).mu,
        );
        Ok(())
    }

    fn extra_models(&self) -> Vec<(&'static str, &Model)> {
        vec![("target", &self.target)]
    }

    fn extra_models_mut(&mut self) -> Vec<(&'static str, &mut Model)> {
        vec![("target", &mut self.target)]
    }

    fn sample(&self, model: &Model, latents: &Tensor, class: Option<&Tensor>) -> Result<Tensor> {
        let c = self.config.recipe.consistency;
        let f = Preconditioned::eval(model, c.parameterization());
        Ok(consistency_sample(&f, latents, c.sigma_max, c.sigma_min, &[], class)?.x)
    }
}
