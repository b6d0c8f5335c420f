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

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use cm_core::{
    adjacent_pairs, append_dims, grid_tensor, BoundWeighting, ConsistencyRecipe, Denoiser,
    DiscretizationSchedule, DistanceMetric, IndexSampler, LossWeighting,
};
use cm_nets::{Model, Preconditioned};
use cm_sample::consistency_sample;

use crate::ema::ema_update;
use crate::error::Result;
use crate::objective::{Batch, Objective};

/// The CT / iCT objective with its target network.
pub struct CtObjective {
    recipe: ConsistencyRecipe,
    target: Model,
    metric: Box<dyn DistanceMetric + Send>,
    weighting: BoundWeighting,
    grids: HashMap<usize, (Vec<f64>, Tensor)>,
}

impl std::fmt::Debug for CtObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtObjective")
            .field("recipe", &self.recipe)
            .field("metric", &self.metric.name())
            .finish_non_exhaustive()
    }
}

impl CtObjective {
    /// The target starts as a copy of `student` (frozen; it only follows the
    /// student by EMA).
    pub fn new(recipe: ConsistencyRecipe, student: &Model) -> Result<Self> {
        recipe.validate_at("recipe.")?;
        let mut target = Model::new(student.config().clone(), student.device())?;
        target.copy_from(student)?;
        target.var_store_mut().freeze();
        let dim = student.config().sample_shape().iter().product::<i64>() as usize;
        Ok(CtObjective {
            metric: recipe.metric.build(dim),
            weighting: recipe.weighting.bind(recipe.consistency.sigma_data)?,
            recipe,
            target,
            grids: HashMap::new(),
        })
    }

    /// The target network `theta-`.
    pub fn target(&self) -> &Model {
        &self.target
    }

    fn grid(&mut self, n: usize, kind: Kind, device: Device) -> Result<&(Vec<f64>, Tensor)> {
        if !self.grids.contains_key(&n) {
            let values = self.recipe.consistency.grid().training_sigmas(n)?;
            let tensor = grid_tensor(&values, kind, device);
            self.grids.insert(n, (values, tensor));
        }
        Ok(&self.grids[&n])
    }
}

impl Objective for CtObjective {
    fn name(&self) -> &str {
        "ct"
    }

    fn loss(&mut self, online: &Model, batch: &Batch, step: u64) -> Result<Tensor> {
        let x0 = &batch.x;
        let (b, ndim) = (x0.size()[0], x0.dim());
        let n = self.recipe.schedule.at(step).n;
        let noise = self.recipe.noise;
        let (t_n, t_next) = {
            let (values, grid) = self.grid(n, x0.kind(), x0.device())?;
            let index = noise.sample(values, b, x0.device());
            adjacent_pairs(grid, &index)
        };
        // The same z for both points (Algorithm 3).
        let z = x0.randn_like();
        let x_next = x0 + &z * append_dims(&t_next, ndim);
        let x_n = x0 + &z * append_dims(&t_n, ndim);
        let labels = batch.labels.as_ref();
        let param = self.recipe.consistency.parameterization();
        // Same dropout mask for student and target (reference code).
        let dropout_seed =
            Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
        tch::manual_seed(dropout_seed);
        let pred = Preconditioned {
            model: online,
            param,
            train: true,
        }
        .denoise(&x_next, &t_next, labels);
        tch::manual_seed(dropout_seed);
        // With mu = 0 (iCT) the target is the student's copy from the last
        // step, i.e. theta- = stopgrad(theta).
        let target = tch::no_grad(|| {
            Preconditioned {
                model: &self.target,
                param,
                train: true,
            }
            .denoise(&x_n, &t_n, labels)
        });
        let weights = self.weighting.weight(&t_n, &t_next);
        Ok((weights * self.metric.distance(&pred, &target)).mean(Kind::Float))
    }

    fn after_step(&mut self, online: &Model, step: u64) -> Result<()> {
        ema_update(&self.target, online, self.recipe.schedule.at(step).mu);
        Ok(())
    }

    fn extra_models(&self) -> Vec<(&'static str, &Model)> {
        vec![("target", &self.target)]
    }

    fn extra_models_mut(&mut self) -> Vec<(&'static str, &mut Model)> {
        vec![("target", &mut self.target)]
    }

    fn sample(&self, model: &Model, latents: &Tensor, class: Option<&Tensor>) -> Result<Tensor> {
        let c = self.recipe.consistency;
        let f = Preconditioned::eval(model, c.parameterization());
        Ok(consistency_sample(&f, latents, c.sigma_max, c.sigma_min, &[], class)?.x)
    }
}
