//! Latent consistency distillation (LCD; Luo et al. 2023, Algorithm 1): CD
//! with a classifier-free-guided teacher and a student that embeds the
//! guidance scale, run in an autoencoder's latent space (`[latent]` of the
//! teacher's config; the objective itself works on any data).
//!
//! Per example: a pair `(t_n, t_{n+k})` of the training grid `k` points
//! apart (the skipping step), `w ~ U[w_min, w_max]` (or in two uniform
//! bands, [`GuidanceSampler`]), `x_{n+k} = x0 + t_{n+k} z`, one ODE step of the guided teacher
//! `D_w = D_c + w (D_c - D_u)` (LCM Eq. 9) from `t_{n+k}` down to `t_n`
//! (Euler, LCM's DDIM step in EDM form, or Heun), and the consistency loss
//! `lambda d(f_theta(x_{n+k}, t_{n+k}, c, w), f_theta-(x^_n, t_n, c, w))`
//! against the EMA target (or, LCM-LoRA's choice, the student itself
//! without gradient), with the boundary scalings of the recipe's
//! parameterization. An LCM student embeds `w` through a zero-initialised
//! projection (cm-nets `guidance_embedding`), so it starts as the teacher;
//! an LCM-LoRA student is the frozen teacher plus zero-initialised LoRA
//! adapters and learns one fixed `w`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use cm_core::{
    append_dims, grid_tensor, Conditioning, ConsistencyRecipe, CoreError, DiscretizationSchedule,
    EdmConfig, OdeSolver, PerExampleGuidance, Solver,
};
use cm_nets::{Model, Preconditioned};
use cm_sample::consistency_sample;
use cm_train::{Batch, ConsistencyCore, Objective, Result};

/// Settings of latent consistency distillation (`[lcd]`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LcdConfig {
    /// Parameterization, the schedule of grid size `N` and target EMA `mu`
    /// (LCM's fixed grid, or iCT's growing one with `mu = 0`), the pair
    /// sampler (uniform over `n` as LCM, or iCT's lognormal, each
    /// skipping-step pair taking the mass it spans), weighting, metric.
    pub recipe: ConsistencyRecipe,
    /// The skipping step `k`: pairs `(t_n, t_{n+k})` of the `N`-point grid.
    pub skip: usize,
    /// The guided teacher's ODE step `t_{n+k} -> t_n`.
    pub solver: Solver,
    /// Guidance scales are drawn from `[w_min, w_max]` (by `w_sampler`).
    pub w_min: f64,
    /// See `w_min`.
    pub w_max: f64,
    /// How `w` is spread over `[w_min, w_max]`: uniformly (LCM), or in
    /// two uniform bands. Written only when not uniform, so the configs of
    /// uniform runs (and the folders keyed by them) stay as they were.
    #[serde(skip_serializing_if = "GuidanceSampler::is_uniform")]
    pub w_sampler: GuidanceSampler,
    /// The default scale of sampling (grids, the model card).
    pub guidance: f64,
    /// What the student is pulled towards: an EMA of it (LCM), or itself
    /// without gradient (LCM-LoRA).
    pub target: LcdTarget,
    /// The student's w-embedding also gates its class embedding,
    /// `e_c + s(w) (e_c - e_null)` (cm-nets `guidance_class_gate`), so the
    /// class's effect can scale with `w` down to the unconditional model.
    /// Not LCM's; docs/lcm.md measures it. Written only when set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub class_gate: bool,
    /// Label swapping at rate `r`: each example's label is replaced by a
    /// class drawn uniformly with probability `exp(-r (w + 1))` (1 at and
    /// below `w = -1`), so the labelled data the student is trained on
    /// looks like the guided teacher's samples, not like the data. At `w =
    /// -1` the guided target is the unconditional `D_u`, whose samples
    /// carry no class: a label tied to the data there teaches the student
    /// a class the teacher does not follow; at `w = 0` a weakly
    /// conditioned teacher's samples are still partly of other classes.
    /// The rate is fitted to the teacher's class accuracy against `w`
    /// (docs/lcm.md). Not LCM's (which trains on the data's labels);
    /// written only when set, in `(0, 100]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_swap: Option<f64>,
}

/// How LCD draws the guidance scale `w` of each example within
/// `[w_min, w_max]` (`[lcd] w_sampler`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum GuidanceSampler {
    /// `w ~ U[w_min, w_max]` (LCM Algorithm 1).
    #[default]
    Uniform,
    /// Two uniform bands split at `at`: `P(w < at) = below`, uniform on
    /// `[w_min, at)` and on `[at, w_max]`. Not LCM's: the student fits the
    /// low end of the range more weakly than its teacher (docs/lcm.md), so
    /// the band below `at` can be given more than its share of the draws.
    Split {
        /// The split point, strictly inside `(w_min, w_max)`.
        at: f64,
        /// The share of draws below `at`, in `(0, 1)`.
        below: f64,
    },
}

impl GuidanceSampler {
    /// Whether this is LCM's uniform draw.
    pub fn is_uniform(&self) -> bool {
        *self == GuidanceSampler::Uniform
    }

    /// Checks the parameters against the range; `field` names the section.
    pub fn validate_at(&self, field: &str, w_min: f64, w_max: f64) -> cm_core::Result<()> {
        if let GuidanceSampler::Split { at, below } = *self {
            if !(at > w_min && at < w_max) {
                return Err(CoreError::invalid(
                    format!("{field}.at"),
                    at,
                    format!("a split point strictly inside (w_min, w_max) = ({w_min}, {w_max})"),
                ));
            }
            if !(below > 0.0 && below < 1.0) {
                return Err(CoreError::invalid(
                    format!("{field}.below"),
                    below,
                    "a share of the draws in (0, 1)",
                ));
            }
        }
        Ok(())
    }

    /// The draw in words, e.g. `w ~ U[-1, 4.5]`.
    pub fn describe(&self, w_min: f64, w_max: f64) -> String {
        match *self {
            GuidanceSampler::Uniform => format!("w ~ U[{w_min}, {w_max}]"),
            GuidanceSampler::Split { at, below } => {
                format!("w ~ U[{w_min}, {at}) with probability {below}, else U[{at}, {w_max}]")
            }
        }
    }

    /// Maps `u ~ U[0, 1)` (any shape) to guidance scales in `[w_min,
    /// w_max]` by the inverse of this distribution's CDF.
    pub fn scales(&self, u: &Tensor, w_min: f64, w_max: f64) -> Tensor {
        match *self {
            GuidanceSampler::Uniform => u * (w_max - w_min) + w_min,
            GuidanceSampler::Split { at, below } => {
                // u < below: w_min + (at - w_min) u / below; else at +
                // (w_max - at) (u - below) / (1 - below).
                let low = u * ((at - w_min) / below) + w_min;
                let high = (u - below) * ((w_max - at) / (1.0 - below)) + at;
                low.where_self(&u.lt(below), &high)
            }
        }
    }
}

/// The consistency target of LCD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LcdTarget {
    /// `theta-` follows the student by EMA at the recipe's `mu` (LCM,
    /// CM Algorithm 2).
    #[default]
    Ema,
    /// `theta- = stopgrad(theta)`: the student itself at the same step
    /// (LCM-LoRA's training script: the target is the adapted network under
    /// no-grad).
    Online,
}

impl Default for LcdConfig {
    /// CD's recipe on a 40-point grid with `k = 2` (20 skipping-step times:
    /// each guided teacher step spans about what a CD step on CD's 18-point
    /// grid does; LCM's `k = 20` of 1,000 DDIM steps leaves 50. `k = 4`
    /// followed large `w` badly on the 2-D toy, docs/lcm.md), a Heun teacher step,
    /// `w ~ U[0, 3]` and `w = 1.5` for sampling (LCM's scales `[2, 14]`
    /// suit Stable Diffusion's text guidance, not a 10-class model).
    fn default() -> Self {
        let mut recipe = ConsistencyRecipe::cd();
        recipe.schedule =
            cm_core::ScheduleConfig::Fixed(cm_core::FixedSchedule { n: 40, mu: 0.95 });
        LcdConfig {
            recipe,
            skip: 2,
            solver: Solver::Heun,
            w_min: 0.0,
            w_max: 3.0,
            w_sampler: GuidanceSampler::Uniform,
            guidance: 1.5,
            target: LcdTarget::Ema,
            class_gate: false,
            label_swap: None,
        }
    }
}

impl LcdConfig {
    /// Checks the ranges; `prefix` is the dotted path of the section.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        self.recipe.validate_at(&format!("{prefix}recipe."))?;
        // N never shrinks (fixed, CT's and iCT's schedules), so the first
        // grid is the smallest the skipping step must fit in.
        let n = self.recipe.schedule.at(0).n;
        if self.skip == 0 || self.skip >= n {
            return Err(CoreError::invalid(
                format!("{prefix}skip"),
                self.skip,
                format!("a skipping step in 1..{n} (the recipe's first grid has N = {n} points)"),
            ));
        }
        for (name, w) in [
            ("w_min", self.w_min),
            ("w_max", self.w_max),
            ("guidance", self.guidance),
        ] {
            cm_core::check_guidance_scale(format!("{prefix}{name}"), w)?;
        }
        if self.w_min > self.w_max {
            return Err(CoreError::invalid(
                format!("{prefix}w_min"),
                self.w_min,
                format!("at most w_max = {}", self.w_max),
            ));
        }
        self.w_sampler
            .validate_at(&format!("{prefix}w_sampler"), self.w_min, self.w_max)?;
        if let Some(rate) = self.label_swap {
            if !(rate > 0.0 && rate <= 100.0) {
                return Err(CoreError::invalid(
                    format!("{prefix}label_swap"),
                    rate,
                    "a rate in (0, 100] (the swap probability is exp(-rate (w + 1)))",
                ));
            }
        }
        Ok(())
    }

    /// The times of `steps`-step sampling on the skipping-step grid
    /// ([`cm_core::lcm_times`]) of the schedule's last training grid (the
    /// only grid when the schedule is fixed), the first being `sigma_max`.
    pub fn times(&self, steps: usize) -> cm_core::Result<Vec<f64>> {
        let n = self.recipe.schedule.at(u64::MAX).n;
        let grid = self.recipe.consistency.grid().training_sigmas(n)?;
        cm_core::lcm_times(&grid, self.skip, steps)
    }
}

/// The LCD objective with its frozen guided teacher and its target. The
/// student may embed `w` (LCM: the teacher's network plus the
/// w-embedding) or not (LCM-LoRA: the teacher's network plus adapters,
/// one fixed `w`).
#[derive(Debug)]
pub struct LcdObjective {
    config: LcdConfig,
    teacher: Model,
    teacher_edm: EdmConfig,
    null_class: i64,
    core: ConsistencyCore,
    /// Per `N`: the grid and, for a non-uniform pair sampler, the pair
    /// probabilities.
    grids: HashMap<usize, (Tensor, Option<Tensor>)>,
    /// Whether the student embeds `w` (LCM); without (LCM-LoRA) it learns
    /// the one fixed scale.
    embedded: bool,
}

impl LcdObjective {
    /// `teacher`: the class-conditional EDM teacher (frozen here, trained
    /// with label dropout so it has a null class); `student`: the network
    /// being trained (the teacher's plus the w-embedding); the target starts
    /// as a copy of the student.
    pub fn new(
        config: LcdConfig,
        mut teacher: Model,
        teacher_edm: EdmConfig,
        student: &Model,
        metric: Box<dyn cm_core::DistanceMetric + Send>,
    ) -> Result<Self> {
        config.validate_at("lcd.")?;
        let Some(null_class) = teacher.null_class() else {
            return Err(CoreError::invalid(
                "teacher.net.num_classes",
                teacher.config().num_classes(),
                "a class-conditional teacher with a null class (classifier-free guidance needs \
                 one; train it with edm.label_dropout > 0)",
            )
            .into());
        };
        let embedded = student.config().embeds_guidance();
        if !embedded && (config.w_min != config.w_max || config.guidance != config.w_min) {
            return Err(CoreError::invalid(
                "lcd.w_max",
                config.w_max,
                format!(
                    "w_min = w_max = guidance (a student without a w-embedding, as LCM-LoRA's, \
                     learns one fixed scale; found w in [{}, {}], guidance {})",
                    config.w_min, config.w_max, config.guidance
                ),
            )
            .into());
        }
        teacher.var_store_mut().freeze();
        let mut core = ConsistencyCore::new(config.recipe, student, "lcd.recipe.", metric)?;
        if config.target == LcdTarget::Online {
            core = core.with_online_target();
        }
        Ok(LcdObjective {
            config,
            teacher,
            teacher_edm,
            null_class,
            core,
            grids: HashMap::new(),
            embedded,
        })
    }

    /// The frozen teacher.
    pub fn teacher(&self) -> &Model {
        &self.teacher
    }

    /// The target network `theta-`.
    pub fn target(&self) -> &Model {
        self.core.target()
    }

    /// Draws `(t_n, t_{n+k})` per example on the step's `N`-point grid:
    /// `n` uniform in `0..N-k` (LCM), or by the recipe's pair sampler with
    /// each pair taking the mass it spans
    /// ([`cm_core::skipping_probabilities`]; iCT's lognormal). Returns
    /// `(t_n, t_{n+k})`, each `[b]`; `k` is clamped to `N - 1`.
    pub fn draw_pairs(&mut self, b: i64, step: u64, device: Device) -> Result<(Tensor, Tensor)> {
        let n = self.config.recipe.schedule.at(step).n;
        let k = self.config.skip.min(n - 1);
        if !self.grids.contains_key(&n) {
            let values = self.config.recipe.consistency.grid().training_sigmas(n)?;
            let probs = match self.config.recipe.noise {
                // randint, as LCM draws, keeps the uniform runs' random
                // streams as they were.
                cm_core::IndexSamplerConfig::Uniform(_) => None,
                sampler => Some(Tensor::from_slice(&cm_core::skipping_probabilities(
                    &sampler, &values, k,
                ))),
            };
            self.grids
                .insert(n, (grid_tensor(&values, Kind::Float, device), probs));
        }
        let (grid, probs) = &self.grids[&n];
        let index = match probs {
            None => Tensor::randint((n - k) as i64, [b], (Kind::Int64, device)),
            Some(p) => p.multinomial(b, true).to_device(device),
        };
        Ok(cm_core::skipping_pairs(grid, &index, k as i64))
    }

    /// Class labels cycling through the classes (`0..null_class`) and the
    /// default `w`, for the grids.
    fn grid_conditioning(&self, b: i64, device: Device) -> (Tensor, Tensor) {
        let classes = Tensor::arange(b, (Kind::Int64, device)).remainder(self.null_class);
        let w = Tensor::full([b], self.config.guidance, (Kind::Float, device));
        (classes, w)
    }

    /// LCM samples from `model` (the student or an EMA of it), classes
    /// cycling, the default `w`: from `range.sigma_max` through the
    /// intermediate times `taus` (decreasing; empty: one step), e.g. the
    /// card's times.
    pub fn sample_times(
        &self,
        model: &Model,
        latents: &Tensor,
        range: cm_core::NoiseRange,
        taus: &[f64],
    ) -> Result<Tensor> {
        let c = self.config.recipe.consistency;
        let f = Preconditioned::eval(model, c.parameterization());
        let (classes, w) = self.grid_conditioning(latents.size()[0], latents.device());
        let cond = if self.embedded {
            Conditioning::class(&classes).with_guidance(&w)
        } else {
            Conditioning::class(&classes)
        };
        Ok(consistency_sample(&f, latents, range, taus, cond)?.x)
    }
}

/// Each label replaced, with probability `exp(-rate max(w + 1, 0))`, by a
/// class drawn uniformly from `0..classes` (`[lcd] label_swap`).
pub fn swap_labels(labels: &Tensor, w: &Tensor, rate: f64, classes: i64) -> Tensor {
    let b = labels.size()[0];
    let device = labels.device();
    let p = ((w.to_kind(Kind::Double) + 1.0).clamp_min(0.0) * -rate).exp();
    let swap = Tensor::rand([b], (Kind::Double, device)).lt_tensor(&p);
    let random = Tensor::randint(classes, [b], (labels.kind(), device));
    random.where_self(&swap, labels)
}

impl Objective for LcdObjective {
    fn name(&self) -> &str {
        "lcd"
    }

    fn loss(&mut self, online: &Model, batch: &Batch, step: u64) -> Result<Tensor> {
        let x0 = &batch.x;
        let b = x0.size()[0];
        let Some(labels) = &batch.labels else {
            return Err(CoreError::invalid(
                "teacher.data",
                "unlabelled",
                "labelled data (the guided teacher and the student are class-conditional)",
            )
            .into());
        };
        let (t_n, t_next) = self.draw_pairs(b, step, x0.device())?;
        let x_next = x0 + x0.randn_like() * append_dims(&t_next, x0.dim());
        let w = self.config.w_sampler.scales(
            &Tensor::rand([b], (Kind::Float, x0.device())),
            self.config.w_min,
            self.config.w_max,
        );
        let labels = &match self.config.label_swap {
            None => labels.shallow_clone(),
            Some(rate) => swap_labels(labels, &w, rate, self.null_class),
        };
        // One guided teacher ODE step t_{n+k} -> t_n, without autograd.
        let x_hat = tch::no_grad(|| -> Result<Tensor> {
            let teacher = Preconditioned::eval(&self.teacher, self.teacher_edm.preconditioning());
            let guided = PerExampleGuidance::new(&teacher, &w, self.null_class)?;
            Ok(self.config.solver.step(
                &guided,
                &x_next,
                &t_next,
                &t_n,
                Conditioning::class(labels),
            ))
        })?;
        let cond = if self.embedded {
            Conditioning::class(labels).with_guidance(&w)
        } else {
            Conditioning::class(labels)
        };
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

    /// One-step samples at the default `w`, classes cycling.
    fn sample(&self, model: &Model, latents: &Tensor, _: Conditioning<'_>) -> Result<Tensor> {
        self.sample_times(model, latents, self.config.recipe.consistency.range(), &[])
    }

    /// A multiple of the class count: the grids' classes cycle from 0 in
    /// every call, so chunks of whole cycles keep them in order.
    fn grid_chunk(&self, batch_size: usize) -> Option<usize> {
        let k = self.null_class.max(1) as usize;
        Some((batch_size / k).max(1) * k)
    }
}
