//! The progressive-distillation objective (Salimans & Ho 2022, Algorithm 2,
//! in the form of openai's `progdist_losses`): a student with `N` steps on
//! the nested grid `t_0 = sigma_max > ... > t_N = sigma_min`
//! (`KarrasGrid::progressive_sigmas`) learns to make in one Euler step
//! `t_i -> t_{i+1}` what its teacher makes in two deterministic steps
//! `t_i -> t' -> t_{i+1}` on the `2N`-step grid. The target is written as
//! the denoiser value whose Euler step lands where the teacher's two steps
//! did, `x_t - t (x_{t''} - x_t) / (t'' - t)` (`cm_core::euler_to_denoiser`),
//! so the student stays an EDM denoiser and every EDM sampler runs it.
//!
//! One objective is one stage; the pipeline ([`crate::pd_pipeline`]) halves
//! `N` from stage to stage, the student of one becoming the teacher of the
//! next.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use cm_core::{
    append_dims, euler_to_denoiser, grid_tensor, BoundWeighting, Conditioning, CoreError, Denoiser,
    DistanceMetric, EdmConfig, LossWeighting, MetricConfig, OdeSolver, Solver, Weighting,
};
use cm_nets::{Model, Preconditioned};
use cm_sample::{edm_sample, EdmSampler, SamplingGrid};
use cm_train::{Batch, Objective, Result};

/// The most steps a progressive-distillation student may start with: its
/// teacher takes twice as many, 8192 (Salimans & Ho's CIFAR-10 teacher
/// sampler), within `cm_sample::MAX_SAMPLER_STEPS`.
pub const MAX_PD_STEPS: usize = 4096;

// The first teacher's sampler (2 x start_steps) must be a valid sampler.
const _: () = assert!(2 * MAX_PD_STEPS <= cm_sample::MAX_SAMPLER_STEPS);

/// Settings of progressive distillation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PdConfig {
    /// Student steps `N` of the first stage; its teacher (the EDM teacher)
    /// takes `2N`. A power of two times `end_steps`, at most
    /// [`MAX_PD_STEPS`].
    pub start_steps: usize,
    /// Student steps of the last stage.
    pub end_steps: usize,
    /// The teacher's two deterministic steps: Euler (openai's
    /// `progdist_losses`) or Heun.
    pub solver: Solver,
    /// `lambda(t)` of the loss at the student's starting level `t`.
    pub weighting: Weighting,
    /// `d(D_student, target)`: L2 (Salimans & Ho), L1 or pseudo-Huber.
    pub metric: MetricConfig,
}

impl Default for PdConfig {
    /// The CPU default: from 64 student steps down to 1 (7 stages), Euler
    /// teacher steps, L2 under EDM's weighting `(t^2 + sd^2) / (t sd)^2`,
    /// which makes the loss the teacher's own training loss on the
    /// network's raw output (Karras et al. 2022, Eq. 8), Salimans & Ho's
    /// "truncated SNR" role.
    fn default() -> Self {
        PdConfig {
            start_steps: 64,
            end_steps: 1,
            solver: Solver::Euler,
            weighting: Weighting::Edm,
            metric: MetricConfig::L2,
        }
    }
}

impl PdConfig {
    /// Checks the ranges; `prefix` is the dotted path of the section.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        if !(1..=MAX_PD_STEPS).contains(&self.start_steps) {
            return Err(CoreError::invalid(
                format!("{prefix}start_steps"),
                self.start_steps,
                format!("1 to {MAX_PD_STEPS}"),
            ));
        }
        let halvings_apart = self.end_steps >= 1
            && self.end_steps <= self.start_steps
            && self.start_steps.is_multiple_of(self.end_steps)
            && (self.start_steps / self.end_steps).is_power_of_two();
        if !halvings_apart {
            return Err(CoreError::invalid(
                format!("{prefix}end_steps"),
                self.end_steps,
                format!(
                    "a step count >= 1 that start_steps = {} reaches by halving",
                    self.start_steps
                ),
            ));
        }
        if matches!(self.weighting, Weighting::InverseStep) {
            return Err(CoreError::invalid(
                format!("{prefix}weighting"),
                "inverse_step",
                "\"uniform\" or \"edm\" (inverse_step weighs consistency pairs)",
            ));
        }
        self.metric.validate(&format!("{prefix}metric."))
    }

    /// The student step counts of the stages, halving:
    /// `[start_steps, start_steps / 2, ..., end_steps]`.
    pub fn stages(&self) -> Vec<usize> {
        let mut n = self.start_steps;
        let mut stages = vec![n];
        while n > self.end_steps.max(1) {
            n /= 2;
            stages.push(n);
        }
        stages
    }
}

/// The target of one student step `t -> t''`: the teacher's two
/// deterministic steps `t -> t' -> t''`, written as the denoiser value whose
/// Euler step from `(x_t, t)` lands on the same `x_{t''}`
/// (`x_t - t (x_{t''} - x_t) / (t'' - t)`). All levels `[B]`, without
/// autograd in training (the caller's `no_grad`).
pub fn pd_target(
    teacher: &dyn Denoiser,
    solver: Solver,
    x_t: &Tensor,
    (t, t_mid, t_next): (&Tensor, &Tensor, &Tensor),
    cond: Conditioning<'_>,
) -> Tensor {
    let x_mid = solver.step(teacher, x_t, t, t_mid, cond);
    let x_next = solver.step(teacher, &x_mid, t_mid, t_next, cond);
    euler_to_denoiser(x_t, t, &x_next, t_next)
}

/// The sampler of a progressive-distillation student with `steps` steps:
/// Euler on the nested grid it was trained on.
pub fn pd_sampler(steps: usize) -> EdmSampler {
    EdmSampler {
        steps,
        solver: Solver::Euler,
        grid: SamplingGrid::Progressive,
        ..EdmSampler::default()
    }
}

/// One stage of progressive distillation: a frozen teacher with `2N` steps
/// and a student learning `N`.
pub struct PdObjective {
    config: PdConfig,
    steps: usize,
    teacher: Model,
    edm: EdmConfig,
    /// The teacher's grid, `2N + 1` levels, descending.
    fine: Tensor,
    metric: Box<dyn DistanceMetric + Send>,
    weighting: BoundWeighting,
}

impl std::fmt::Debug for PdObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PdObjective")
            .field("config", &self.config)
            .field("steps", &self.steps)
            .field("metric", &self.metric.name())
            .finish_non_exhaustive()
    }
}

impl PdObjective {
    /// The stage whose student takes `steps` steps; `teacher` (frozen here)
    /// is an EDM denoiser network with the EDM settings `edm` that takes
    /// `2 steps`.
    pub fn new(config: PdConfig, steps: usize, mut teacher: Model, edm: EdmConfig) -> Result<Self> {
        config.validate_at("pd.")?;
        edm.validate_at("teacher.edm.edm.")?;
        if !(1..=MAX_PD_STEPS).contains(&steps) {
            return Err(CoreError::invalid("steps", steps, format!("1 to {MAX_PD_STEPS}")).into());
        }
        teacher.var_store_mut().freeze();
        let fine = edm.grid().progressive_sigmas(2 * steps)?;
        let dim = teacher.config().sample_shape().iter().product::<i64>() as usize;
        Ok(PdObjective {
            metric: config.metric.build(dim, "pd.metric.")?,
            weighting: config.weighting.bind(edm.sigma_data)?,
            fine: grid_tensor(&fine, Kind::Float, teacher.device()),
            config,
            steps,
            teacher,
            edm,
        })
    }

    /// The frozen teacher of this stage.
    pub fn teacher(&self) -> &Model {
        &self.teacher
    }

    /// The student's step count `N`.
    pub fn steps(&self) -> usize {
        self.steps
    }
}

impl Objective for PdObjective {
    fn name(&self) -> &str {
        "pd"
    }

    fn loss(&mut self, online: &Model, batch: &Batch, _step: u64) -> Result<Tensor> {
        let x0 = &batch.x;
        let b = x0.size()[0];
        let device = x0.device();
        // The student's step i ~ U{0..N-1}: t = t_{2i}, t' = t_{2i+1},
        // t'' = t_{2i+2} on the teacher's 2N grid.
        let i = Tensor::randint(self.steps as i64, [b], (Kind::Int64, device));
        let level = |k: i64| self.fine.index_select(0, &(&i * 2 + k)).to_kind(x0.kind());
        let (t, t_mid, t_next) = (level(0), level(1), level(2));
        let x_t = x0 + x0.randn_like() * append_dims(&t, x0.dim());
        let cond = Conditioning::from_class(batch.labels.as_ref());
        let precond = self.edm.preconditioning();
        let target = tch::no_grad(|| {
            let teacher = Preconditioned::eval(&self.teacher, precond);
            pd_target(
                &teacher,
                self.config.solver,
                &x_t,
                (&t, &t_mid, &t_next),
                cond,
            )
        });
        let pred = Preconditioned {
            model: online,
            param: precond,
            train: true,
        }
        .denoise(&x_t, &t, cond);
        let weights = self.weighting.weight(&t, &t_next);
        Ok((weights * self.metric.distance(&pred, &target)).mean(Kind::Float))
    }

    fn sample(&self, model: &Model, latents: &Tensor, cond: Conditioning<'_>) -> Result<Tensor> {
        let d = Preconditioned::eval(model, self.edm.preconditioning());
        Ok(edm_sample(&d, latents, &self.edm.grid(), &pd_sampler(self.steps), cond)?.x)
    }
}
