//! Easy Consistency Tuning (ECT, Geng et al. 2024): consistency training
//! that starts from a diffusion model's weights and tightens the pairs over
//! stages. For each example, `t` from a lognormal (truncated to
//! `(sigma_min, sigma_max]`), `r` from ECT's mapping at the current stage
//! ([`cm_core::EctMapping`]), one noise draw `z` for both points, and
//!
//! ```text
//! loss = w(t, r) d(f_theta(x0 + t z, t), stopgrad f_theta(x0 + r z, r))
//! ```
//!
//! The target is the same network under no-grad (no EMA target, no copy),
//! evaluated with the student's dropout mask (both forwards start from one
//! generator seed, as the authors' shared `rng_state`). `w = 1 / (t - r)`
//! by default (iCT's and ECT's CIFAR weighting), `d` is L2 or pseudo-Huber,
//! and the authors' adaptive weighting `d / (d + c)^p` (with `d + c`
//! detached) is an option. Evaluation uses the loop's EMA.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use cm_core::config::{describe_metric, describe_noise_conditioning, describe_weighting};
use cm_core::{
    append_dims, BoundWeighting, Conditioning, ConsistencyConfig, CoreError, Denoiser,
    DistanceMetric, EctMapping, EctStages, LognormalSigma, LossWeighting, MetricConfig,
    TruncatedLognormal, Weighting,
};
use cm_nets::{Model, Preconditioned};
use cm_sample::consistency_sample;

use crate::error::Result;
use crate::objective::{Batch, Objective};

pub use cm_core::MIN_DECAY;

/// The adaptive weighting `d / (d + c)^p` of ECT (`p = 0.5` is the
/// authors' CIFAR-10 choice: it behaves like a pseudo-Huber of L2).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveWeighting {
    /// The power `p` in `[0, 1]` (0: off).
    pub p: f64,
    /// The offset `c` (> 0), in the distance's units.
    pub c: f64,
}

impl Default for AdaptiveWeighting {
    /// Off (`p = 0`), `c = 1e-8`.
    fn default() -> Self {
        AdaptiveWeighting { p: 0.0, c: 1e-8 }
    }
}

/// The ECT objective's settings (`[ect]`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EctConfig {
    /// Parameterization and noise range (the teacher's).
    pub consistency: ConsistencyConfig,
    /// `ln t ~ N(p_mean, p_std^2)`, truncated to `(sigma_min, sigma_max]`.
    pub noise: LognormalSigma,
    /// The `t -> r` mapping.
    pub mapping: EctMapping,
    /// When the stage advances.
    pub stages: EctStages,
    /// `w(t, r)`: `inverse_step` is `1 / (t - r)`.
    pub weighting: Weighting,
    /// `d(x, y)`.
    pub metric: MetricConfig,
    /// `d / (d + c)^p` (off by default).
    pub adaptive: AdaptiveWeighting,
    /// The intermediate time of 2-step sampling (the authors' 0.821 for
    /// `T = 80`; `cm search-timesteps` finds a better one for a model).
    pub two_step_tau: f64,
}

impl Default for EctConfig {
    /// The authors' CIFAR-10 recipe where it applies: `P_mean = -1.1`,
    /// `P_std = 2.0`, `q = 2`, `k = 8`, `b = 1`, `w = 1/(t - r)`,
    /// pseudo-Huber, 2-step time 0.821.
    fn default() -> Self {
        EctConfig {
            consistency: ConsistencyConfig::default(),
            noise: LognormalSigma {
                p_mean: -1.1,
                p_std: 2.0,
            },
            mapping: EctMapping::default(),
            stages: EctStages::default(),
            weighting: Weighting::InverseStep,
            metric: MetricConfig::PseudoHuber { c: None },
            adaptive: AdaptiveWeighting::default(),
            two_step_tau: 0.821,
        }
    }
}

impl EctConfig {
    /// Checks the ranges; `prefix` is the dotted path of the section.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        let c = &self.consistency;
        c.validate_at(&format!("{prefix}consistency."))?;
        self.noise.validate(&format!("{prefix}noise."))?;
        self.mapping.validate_at(&format!("{prefix}mapping."))?;
        self.stages.validate_at(&format!("{prefix}stages."))?;
        self.metric.validate(&format!("{prefix}metric."))?;
        self.mapping
            .check_last_stage(self.stages.max_stage, format!("{prefix}stages.max_stage"))?;
        let a = &self.adaptive;
        if !(0.0..=1.0).contains(&a.p) {
            return Err(CoreError::invalid(
                format!("{prefix}adaptive.p"),
                a.p,
                "a power in [0, 1] (0: off)",
            ));
        }
        if !(a.c.is_finite() && a.c > 0.0) {
            return Err(CoreError::invalid(
                format!("{prefix}adaptive.c"),
                a.c,
                "a finite number > 0",
            ));
        }
        if !(self.two_step_tau > c.sigma_min && self.two_step_tau < c.sigma_max) {
            return Err(CoreError::invalid(
                format!("{prefix}two_step_tau"),
                self.two_step_tau,
                format!(
                    "a time strictly between sigma_min = {} and sigma_max = {}",
                    c.sigma_min, c.sigma_max
                ),
            ));
        }
        self.truncated().check_mass(format!("{prefix}noise"))
    }

    /// The `t` distribution.
    pub fn truncated(&self) -> TruncatedLognormal {
        TruncatedLognormal {
            p_mean: self.noise.p_mean,
            p_std: self.noise.p_std,
            lo: self.consistency.sigma_min,
            hi: self.consistency.sigma_max,
        }
    }

    /// The recipe in words and numbers, one report line each.
    pub fn describe(&self) -> Vec<String> {
        let (m, s, c) = (&self.mapping, &self.stages, &self.consistency);
        let mut lines = vec![
            format!(
                "t: ln t ~ N({}, {}^2) truncated to (sigma_min, sigma_max] = ({}, {}]",
                self.noise.p_mean, self.noise.p_std, c.sigma_min, c.sigma_max
            ),
            format!(
                "r = sigma_min + (t - sigma_min)(1 - q^-(s+1)(1 + k sigmoid(-b t))), q = {}, k = {}, b = {}; \
                 stage s = min(step / {}, {})",
                m.q, m.k, m.b, s.stage_steps, s.max_stage
            ),
            "target: the same network without gradient, with the student's dropout mask (no EMA target)".into(),
            format!("weighting: {}", describe_weighting(self.weighting)),
            format!("distance: {}", describe_metric(&self.metric)),
            format!(
                "parameterization: consistency boundary f(x, eps) = x, sigma_data = {}, eps = {}, T = {}, c_noise = {}",
                c.sigma_data,
                c.sigma_min,
                c.sigma_max,
                describe_noise_conditioning(c.noise_conditioning)
            ),
        ];
        if self.adaptive.p > 0.0 {
            lines.push(format!(
                "adaptive weighting: d / (d + {})^{} (denominator detached)",
                self.adaptive.c, self.adaptive.p
            ));
        }
        lines
    }
}

/// The ECT objective.
pub struct EctObjective {
    config: EctConfig,
    metric: Box<dyn DistanceMetric + Send>,
    weighting: BoundWeighting,
}

impl std::fmt::Debug for EctObjective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EctObjective")
            .field("config", &self.config)
            .field("metric", &self.metric.name())
            .finish_non_exhaustive()
    }
}

impl EctObjective {
    /// The objective for `config` with its distance `metric`
    /// ([`crate::build_metric`] of `config.metric`).
    pub fn new(config: EctConfig, metric: Box<dyn DistanceMetric + Send>) -> Result<Self> {
        config.validate_at("ect.")?;
        Ok(EctObjective {
            metric,
            weighting: config.weighting.bind(config.consistency.sigma_data)?,
            config,
        })
    }

    /// The settings.
    pub fn config(&self) -> &EctConfig {
        &self.config
    }

    /// The per-example pairs `(t, r)` at `step` for a batch of `n` on
    /// `device` (libtorch's generator).
    pub fn pairs(&self, n: i64, kind: Kind, device: Device, step: u64) -> (Tensor, Tensor) {
        let t = self.config.truncated().sample(n, kind, device);
        let r = self.config.mapping.r(
            &t,
            self.config.stages.at(step),
            self.config.consistency.sigma_min,
        );
        (t, r)
    }
}

impl Objective for EctObjective {
    fn name(&self) -> &str {
        "ect"
    }

    fn loss(&mut self, online: &Model, batch: &Batch, step: u64) -> Result<Tensor> {
        let x0 = &batch.x;
        let (t, r) = self.pairs(x0.size()[0], x0.kind(), x0.device(), step);
        // One noise draw for both points of the trajectory.
        let z = x0.randn_like();
        let x_t = x0 + &z * append_dims(&t, x0.dim());
        let x_r = x0 + &z * append_dims(&r, x0.dim());
        let cond = Conditioning::from_class(batch.labels.as_ref());
        let param = self.config.consistency.parameterization();
        let f = Preconditioned {
            model: online,
            param,
            train: true,
        };
        // The student's dropout mask for the target too: one seed for both.
        let dropout_seed =
            Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
        tch::manual_seed(dropout_seed);
        let pred = f.denoise(&x_t, &t, cond);
        tch::manual_seed(dropout_seed);
        let target = tch::no_grad(|| f.denoise(&x_r, &r, cond));
        let mut d = self.metric.distance(&pred, &target);
        let a = self.config.adaptive;
        if a.p > 0.0 {
            d = &d / (d.detach() + a.c).pow_tensor_scalar(a.p);
        }
        // Where rounding made r = t (t at sigma_min), the two points are one
        // and d = 0: a finite weight (t - r at least 1e-6 t, above float32's
        // resolution) keeps the product 0 instead of NaN.
        let r_w = r.minimum(&(&t * (1.0 - 1e-6)));
        let w = self.weighting.weight(&r_w, &t);
        Ok((w * d).mean(Kind::Float))
    }

    fn sample(&self, model: &Model, latents: &Tensor, cond: Conditioning<'_>) -> Result<Tensor> {
        let c = self.config.consistency;
        let f = Preconditioned::eval(model, c.parameterization());
        Ok(consistency_sample(&f, latents, c.range(), &[], cond)?.x)
    }
}
