//! The machinery every consistency objective shares, public so that the
//! objectives that learn from data (CT, iCT, here) and those that learn
//! from a teacher (CD, cm-distill) are built from one piece: the pair
//! sampling `(t_n, t_{n+1})` on the step's discretization (CM Eq. 5, iCT
//! Eq. 10 lognormal pairs), the target network `theta-` and its EMA
//! `mu(k)` (CM Alg. 2-3; `mu = 0` is iCT's stop-gradient copy), the
//! weighted distance `lambda(t_n) d(f_theta(x_{n+1}, t_{n+1}),
//! f_theta-(x_n, t_n))` with the student's dropout mask shared by the
//! target, and one-step sampling (CM Alg. 1).

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use cm_core::{
    adjacent_pairs, grid_tensor, BoundWeighting, Conditioning, ConsistencyRecipe, Denoiser,
    DiscretizationSchedule, DistanceMetric, IndexSampler, LossWeighting,
};
use cm_nets::{Model, Preconditioned};
use cm_sample::consistency_sample;

use crate::ema::ema_update;
use crate::error::Result;

/// The machinery every consistency objective shares.
pub struct ConsistencyCore {
    recipe: ConsistencyRecipe,
    target: Model,
    /// The target is the online network itself without gradient (LCM-LoRA's
    /// choice) instead of `target`.
    online_target: bool,
    metric: Box<dyn DistanceMetric + Send>,
    weighting: BoundWeighting,
    grids: HashMap<usize, (Vec<f64>, Tensor)>,
}

impl std::fmt::Debug for ConsistencyCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsistencyCore")
            .field("recipe", &self.recipe)
            .field("metric", &self.metric.name())
            .field("grids_cached", &self.grids.len())
            .finish_non_exhaustive()
    }
}

impl ConsistencyCore {
    /// The target starts as a copy of `student` (frozen: it only follows the
    /// student by EMA). `prefix` is the recipe's dotted path for errors;
    /// `metric` is the recipe's `d` ([`crate::build_metric`]).
    pub fn new(
        recipe: ConsistencyRecipe,
        student: &Model,
        prefix: &str,
        metric: Box<dyn DistanceMetric + Send>,
    ) -> Result<Self> {
        recipe.validate_at(prefix)?;
        let mut target = student.new_like()?;
        target.copy_from(student)?;
        target.var_store_mut().freeze();
        Ok(ConsistencyCore {
            metric,
            weighting: recipe.weighting.bind(recipe.consistency.sigma_data)?,
            recipe,
            target,
            online_target: false,
            grids: HashMap::new(),
        })
    }

    /// Makes the target the online network itself, evaluated without
    /// gradient (`theta- = stopgrad(theta)` of the same step, as LCM-LoRA
    /// trains): no EMA, no target checkpoint.
    pub fn with_online_target(mut self) -> Self {
        self.online_target = true;
        self
    }

    /// Whether the target is the online network itself.
    pub fn online_target(&self) -> bool {
        self.online_target
    }

    /// The recipe.
    pub fn recipe(&self) -> &ConsistencyRecipe {
        &self.recipe
    }

    /// The target network `theta-`.
    pub fn target(&self) -> &Model {
        &self.target
    }

    /// Draws a pair `(t_n, t_{n+1})` of the step's training grid for each
    /// example of `x0` (the grid for each `N` is built once).
    pub fn pairs(&mut self, x0: &Tensor, step: u64) -> Result<(Tensor, Tensor)> {
        let n = self.recipe.schedule.at(step).n;
        let (kind, device) = (x0.kind(), x0.device());
        if !self.grids.contains_key(&n) {
            let values = self.recipe.consistency.grid().training_sigmas(n)?;
            let tensor = grid_tensor(&values, kind, device);
            self.grids.insert(n, (values, tensor));
        }
        let (values, grid) = &self.grids[&n];
        let index = self.recipe.noise.sample(values, x0.size()[0], device);
        Ok(adjacent_pairs(grid, &index))
    }

    /// `mean(lambda(t_n) d(f_theta(x_next, t_next), f_theta-(x_target, t_n)))`,
    /// the target without autograd. As in the reference code, student and
    /// target see the same dropout mask: both start from one generator seed.
    pub fn loss(
        &self,
        online: &Model,
        (x_next, t_next): (&Tensor, &Tensor),
        (x_target, t_n): (&Tensor, &Tensor),
        cond: Conditioning<'_>,
    ) -> Tensor {
        let param = self.recipe.consistency.parameterization();
        let dropout_seed =
            Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
        tch::manual_seed(dropout_seed);
        let pred = Preconditioned {
            model: online,
            param,
            train: true,
        }
        .denoise(x_next, t_next, cond);
        tch::manual_seed(dropout_seed);
        // With mu = 0 (iCT) the target is the student's copy from the last
        // step, i.e. theta- = stopgrad(theta).
        let target_model = if self.online_target {
            online
        } else {
            &self.target
        };
        let target = tch::no_grad(|| {
            Preconditioned {
                model: target_model,
                param,
                train: true,
            }
            .denoise(x_target, t_n, cond)
        });
        let weights = self.weighting.weight(t_n, t_next);
        (weights * self.metric.distance(&pred, &target)).mean(Kind::Float)
    }

    /// `theta- <- mu(k) theta- + (1 - mu(k)) theta` after step `k`.
    pub fn update_target(&self, online: &Model, step: u64) {
        if self.online_target {
            return;
        }
        ema_update(&self.target, online, self.recipe.schedule.at(step).mu);
    }

    /// The target, for checkpoints.
    pub fn extra_models(&self) -> Vec<(&'static str, &Model)> {
        if self.online_target {
            return Vec::new();
        }
        vec![("target", &self.target)]
    }

    /// The target, for resuming.
    pub fn extra_models_mut(&mut self) -> Vec<(&'static str, &mut Model)> {
        if self.online_target {
            return Vec::new();
        }
        vec![("target", &mut self.target)]
    }

    /// One-step samples `f(T z, T)` from `model`.
    pub fn sample(
        &self,
        model: &Model,
        latents: &Tensor,
        cond: Conditioning<'_>,
    ) -> Result<Tensor> {
        let c = self.recipe.consistency;
        let f = Preconditioned::eval(model, c.parameterization());
        Ok(consistency_sample(&f, latents, c.range(), &[], cond)?.x)
    }
}
