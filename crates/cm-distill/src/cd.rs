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
//!
//! The pairs can instead be continuous, as Easy Consistency Tuning draws
//! them (`[cd.pairs] kind = "ect"`, Geng et al. 2024): `t` from a truncated
//! lognormal, `r` from ECT's stage-dependent mapping (`t - r` halves each
//! stage), the teacher's ODE step `t -> r`, the online network without
//! gradient as the target (ECT's target), and `w = lambda(r, t)`. Early
//! stages are then close to distilling the teacher's denoiser (wide steps,
//! `r` at the boundary for small `t`), later ones pull neighbouring points of
//! the teacher's trajectories together.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use cm_core::{
    append_dims, Conditioning, ConsistencyRecipe, CoreError, EctMapping, EctStages, EdmConfig,
    LognormalSigma, OdeSolver, Solver, TruncatedLognormal,
};
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
    /// How the pairs `(t_n, t_{n+1})` are drawn: on the recipe's grid, or
    /// continuous as ECT draws them.
    pub pairs: CdPairs,
}

/// How consistency distillation draws its pairs (`[cd.pairs]`, by `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CdPairs {
    /// Adjacent points of the recipe's training grid: `N(k)` and the target
    /// EMA `mu(k)` from `recipe.schedule`, the index from `recipe.noise`
    /// (CM Eq. 5, iCT Eq. 10).
    Grid(GridPairs),
    /// ECT's continuous pairs. `recipe.schedule` and `recipe.noise` are not
    /// used and must stay at their defaults (N = 18, mu = 0.95, uniform):
    /// any other value is refused rather than ignored.
    Ect(EctPairs),
}

impl Default for CdPairs {
    fn default() -> Self {
        CdPairs::Grid(GridPairs {})
    }
}

/// `[cd.pairs] kind = "grid"` takes no other keys (a table, so that stray
/// keys are refused instead of skipped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridPairs {}

/// ECT's pair distribution for CD (`[cd.pairs] kind = "ect"`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EctPairs {
    /// `ln t ~ N(p_mean, p_std^2)`, truncated to `(sigma_min, sigma_max]`.
    pub p_mean: f64,
    /// See `p_mean` (> 0).
    pub p_std: f64,
    /// The `t -> r` mapping (q, k, b).
    pub mapping: EctMapping,
    /// When the stage advances.
    pub stages: EctStages,
}

impl Default for EctPairs {
    /// ECT's CIFAR-10 values (`P_mean = -1.1`, `P_std = 2`, q = 2, k = 8,
    /// b = 1), 250 steps per stage up to stage 7.
    fn default() -> Self {
        EctPairs {
            p_mean: -1.1,
            p_std: 2.0,
            mapping: EctMapping::default(),
            stages: EctStages::default(),
        }
    }
}

impl EctPairs {
    fn truncated(&self, recipe: &ConsistencyRecipe) -> TruncatedLognormal {
        TruncatedLognormal {
            p_mean: self.p_mean,
            p_std: self.p_std,
            lo: recipe.consistency.sigma_min,
            hi: recipe.consistency.sigma_max,
        }
    }

    /// The per-example pairs `(r, t)`, `r < t`, for a batch of `n` at `step`.
    fn draw(
        &self,
        recipe: &ConsistencyRecipe,
        n: i64,
        kind: tch::Kind,
        device: tch::Device,
        step: u64,
    ) -> (Tensor, Tensor) {
        let t = self.truncated(recipe).sample(n, kind, device);
        let sigma_min = recipe.consistency.sigma_min;
        let r = self.mapping.r(&t, self.stages.at(step), sigma_min);
        // Where rounding made r = t (t at sigma_min) the pair would be one
        // point with an infinite 1/(t - r) weight: keep r a hair below t.
        let r = r.minimum(&(&t * (1.0 - 1e-6)));
        (r, t)
    }

    fn validate_at(&self, prefix: &str, recipe: &ConsistencyRecipe) -> cm_core::Result<()> {
        LognormalSigma {
            p_mean: self.p_mean,
            p_std: self.p_std,
        }
        .validate(prefix)?;
        self.mapping.validate_at(&format!("{prefix}mapping."))?;
        self.stages.validate_at(&format!("{prefix}stages."))?;
        self.mapping
            .check_last_stage(self.stages.max_stage, format!("{prefix}stages.max_stage"))?;
        self.truncated(recipe).check_mass(format!("{prefix}p_mean"))
    }

    /// The pairs in words and numbers.
    pub fn describe(&self) -> String {
        let (m, s) = (&self.mapping, &self.stages);
        format!(
            "pairs: ECT's continuous pairs, ln t ~ N({}, {}^2) truncated to (sigma_min, sigma_max], \
             r = sigma_min + (t - sigma_min)(1 - q^-(s+1)(1 + k sigmoid(-b t))) with q = {}, k = {}, b = {}, \
             stage s = min(step / {}, {}); target: the online network without gradient",
            self.p_mean, self.p_std, m.q, m.k, m.b, s.stage_steps, s.max_stage
        )
    }
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
            pairs: CdPairs::default(),
        }
    }
}

impl CdConfig {
    /// Checks the ranges; `prefix` is the dotted path of the section.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        self.recipe.validate_at(&format!("{prefix}recipe."))?;
        if let CdPairs::Ect(pairs) = &self.pairs {
            pairs.validate_at(&format!("{prefix}pairs."), &self.recipe)?;
            // The grid's settings would be silently unused: refuse them.
            let unset = ConsistencyRecipe::cd();
            if self.recipe.schedule != unset.schedule {
                return Err(CoreError::invalid(
                    format!("{prefix}recipe.schedule"),
                    "a schedule",
                    format!(
                        "the default schedule (fixed, n = 18, mu = 0.95), which {prefix}pairs.kind = \"ect\" \
                         does not use: ECT's stages set the pairs and the target is the online network"
                    ),
                ));
            }
            if self.recipe.noise != unset.noise {
                return Err(CoreError::invalid(
                    format!("{prefix}recipe.noise"),
                    "a pair sampler",
                    format!(
                        "the default pair sampler (uniform), which {prefix}pairs.kind = \"ect\" does not use: \
                         its lognormal is [{prefix}pairs] p_mean, p_std"
                    ),
                ));
            }
        }
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
        let mut core = ConsistencyCore::new(config.recipe, student, "cd.recipe.", metric)?;
        if matches!(config.pairs, CdPairs::Ect(_)) {
            core = core.with_online_target();
        }
        Ok(CdObjective {
            config,
            teacher,
            teacher_edm,
            core,
        })
    }

    /// The target network `theta-` (with ECT's pairs the target is the
    /// online network itself, and this copy stays at the initial weights).
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
        let (t_n, t_next) = match &self.config.pairs {
            CdPairs::Grid(_) => self.core.pairs(x0, step)?,
            CdPairs::Ect(pairs) => pairs.draw(
                self.core.recipe(),
                x0.size()[0],
                x0.kind(),
                x0.device(),
                step,
            ),
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// ECT's `t_to_r_sigmoid` written out independently, from the boundary
    /// `sigma_min`: `r = eps + (t - eps)(1 - 2^-(s+1)(1 + 8 / (1 + e^t)))`.
    fn r_by_hand(t: f64, stage: i32, eps: f64) -> f64 {
        let ratio = 1.0 - 0.5f64.powi(stage + 1) * (1.0 + 8.0 / (1.0 + t.exp()));
        (eps + (t - eps) * ratio).max(eps)
    }

    #[test]
    fn ect_pairs_follow_the_authors_mapping_and_tighten_by_stage() {
        let _rng = cm_runtime::lock_global_rng();
        let recipe = ConsistencyRecipe::cd();
        let eps = recipe.consistency.sigma_min;
        let pairs = EctPairs {
            stages: EctStages {
                stage_steps: 100,
                max_stage: 5,
            },
            ..EctPairs::default()
        };
        let mut last_gap = f64::INFINITY;
        for (step, stage) in [(0u64, 0), (150, 1), (420, 4), (10_000, 5)] {
            tch::manual_seed(3);
            let (r, t) = pairs.draw(&recipe, 4096, Kind::Double, Device::Cpu, step);
            let (r, t) = (
                Vec::<f64>::try_from(&r).unwrap(),
                Vec::<f64>::try_from(&t).unwrap(),
            );
            let mut gap = 0.0;
            for (&r, &t) in r.iter().zip(&t) {
                assert!(t > eps && t <= recipe.consistency.sigma_max, "t = {t}");
                assert!(r >= eps && r < t, "r = {r}, t = {t}");
                let want = r_by_hand(t, stage, eps).min(t * (1.0 - 1e-6));
                assert!(
                    (r - want).abs() <= 1e-9 * t,
                    "stage {stage}: t = {t}: r = {r}, want {want}"
                );
                gap += (t - r) / t;
            }
            // The same t (same seed) with a later stage: a smaller mean step.
            assert!(gap < last_gap, "stage {stage}: {gap} >= {last_gap}");
            last_gap = gap;
        }
    }

    #[test]
    fn ect_pairs_refuse_the_grid_settings_they_would_ignore() {
        let mut config = CdConfig {
            pairs: CdPairs::Ect(EctPairs::default()),
            ..CdConfig::default()
        };
        config.validate_at("cd.").unwrap();
        config.recipe.schedule = ConsistencyRecipe::ict().schedule;
        let err = config.validate_at("cd.").unwrap_err().to_string();
        assert!(err.contains("cd.recipe.schedule"), "{err}");
        config.recipe.schedule = ConsistencyRecipe::cd().schedule;
        config.recipe.noise = ConsistencyRecipe::ict().noise;
        let err = config.validate_at("cd.").unwrap_err().to_string();
        assert!(err.contains("cd.recipe.noise"), "{err}");
        config.recipe.noise = ConsistencyRecipe::cd().noise;
        config.pairs = CdPairs::Ect(EctPairs {
            p_std: 0.0,
            ..EctPairs::default()
        });
        let err = config.validate_at("cd.").unwrap_err().to_string();
        assert!(err.contains("cd.pairs.p_std"), "{err}");
    }

    #[test]
    fn ect_pairs_parse_from_toml() {
        let config: CdConfig = toml::from_str(
            "[pairs]\nkind = \"ect\"\np_mean = -1.0\n[pairs.stages]\nstage_steps = 350\nmax_stage = 7\n",
        )
        .unwrap();
        let CdPairs::Ect(p) = config.pairs else {
            panic!("{:?}", config.pairs)
        };
        assert_eq!((p.p_mean, p.p_std, p.stages.stage_steps), (-1.0, 2.0, 350));
        // Without [pairs], and with kind = "grid": the grid.
        let grid = CdPairs::Grid(GridPairs {});
        assert_eq!(toml::from_str::<CdConfig>("").unwrap().pairs, grid);
        let config: CdConfig = toml::from_str("[pairs]\nkind = \"grid\"\n").unwrap();
        assert_eq!(config.pairs, grid);
        // Stray keys are refused, for either kind; so is a missing kind.
        for (text, want) in [
            ("[pairs]\nkind = \"ect\"\nq = 2.0\n", "unknown field `q`"),
            (
                "[pairs]\nkind = \"grid\"\np_mean = -1.0\n",
                "unknown field `p_mean`",
            ),
            ("[pairs]\np_mean = -1.0\n", "missing field `kind`"),
            ("[pairs]\nkind = \"lattice\"\n", "unknown variant `lattice`"),
        ] {
            let err = toml::from_str::<CdConfig>(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
