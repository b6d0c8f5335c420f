//! Adam (Kingma & Ba 2015) and RAdam (Liu et al. 2020, the reference
//! consistency code's optimizer) written on tensors, so that their moment
//! estimates can be checkpointed and a resumed run continues exactly (tch's
//! built-in optimizers do not expose their state). Also decoupled weight
//! decay (AdamW, Loshchilov & Hutter 2019), global-norm gradient clipping,
//! linear learning-rate warm-up and a cosine decay (Loshchilov & Hutter
//! 2017, SGDR without restarts).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use cm_core::CoreError;

/// Which update rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam.
    #[default]
    Adam,
    /// Rectified Adam: plain momentum SGD while the variance estimate is
    /// unreliable (first few steps), then variance-rectified Adam.
    Radam,
}

/// The learning rate after warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Flat at `lr`.
    #[default]
    Constant,
    /// Half a cosine from `lr` at the end of warm-up down to
    /// `min_lr_ratio * lr` at the run's last step.
    Cosine,
}

/// Optimizer hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Update rule.
    pub kind: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Linear warm-up from 0 to `lr` over this many steps (0: none).
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    pub grad_clip: Option<f64>,
    // The three below are left out of the written config at their defaults:
    // stage folders are keyed by the config's TOML text (teacher_dir), and
    // configs written before they existed must keep their keys.
    /// Decoupled weight decay (AdamW): every step multiplies the weights by
    /// `1 - lr * weight_decay` before the update, as PyTorch's `AdamW` and
    /// `RAdam(decoupled_weight_decay=True)`. In [0, 1]; 0: none.
    #[serde(skip_serializing_if = "is_zero")]
    pub weight_decay: f64,
    /// The learning rate after warm-up: `constant` or `cosine`.
    #[serde(skip_serializing_if = "is_constant")]
    pub schedule: LrSchedule,
    /// The cosine schedule's last rate as a fraction of `lr`, in [0, 1].
    #[serde(skip_serializing_if = "is_zero")]
    pub min_lr_ratio: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_constant(s: &LrSchedule) -> bool {
    *s == LrSchedule::Constant
}

impl Default for OptimizerConfig {
    /// Adam, lr 2e-4, betas (0.9, 0.999), eps 1e-8, no warm-up, no clipping,
    /// no weight decay, constant rate.
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 0,
            grad_clip: None,
            weight_decay: 0.0,
            schedule: LrSchedule::Constant,
            min_lr_ratio: 0.0,
        }
    }
}

impl OptimizerConfig {
    /// Checks the ranges; `prefix` is the dotted path of the section.
    pub fn validate_at(&self, prefix: &str) -> cm_core::Result<()> {
        let f = |n: &str| format!("{prefix}{n}");
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(CoreError::invalid(f("lr"), self.lr, "a finite number > 0"));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(CoreError::invalid(f(name), b, "a value in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(CoreError::invalid(
                f("eps"),
                self.eps,
                "a finite number > 0",
            ));
        }
        if let Some(c) = self.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(CoreError::invalid(f("grad_clip"), c, "a finite number > 0"));
            }
        }
        // `lr * weight_decay` above 1 would flip the weights' sign each step.
        if !(0.0..=1.0).contains(&self.weight_decay) || self.lr * self.weight_decay > 1.0 {
            return Err(CoreError::invalid(
                f("weight_decay"),
                self.weight_decay,
                format!(
                    "a value in [0, 1] with lr * weight_decay <= 1 (lr {})",
                    self.lr
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(CoreError::invalid(
                f("min_lr_ratio"),
                self.min_lr_ratio,
                "a fraction of lr in [0, 1]",
            ));
        }
        Ok(())
    }

    /// The settings in words and numbers, for reports.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            OptimizerKind::Adam => "Adam",
            OptimizerKind::Radam => "RAdam",
        };
        let mut text = format!(
            "{kind}, lr {}, betas ({}, {}), eps {:e}",
            self.lr, self.beta1, self.beta2, self.eps
        );
        if self.warmup_steps > 0 {
            text += &format!(", linear warm-up over {} steps", self.warmup_steps);
        }
        if self.schedule == LrSchedule::Cosine {
            text += &format!(", cosine decay to {} x lr", self.min_lr_ratio);
        }
        if self.weight_decay > 0.0 {
            text += &format!(", decoupled weight decay {}", self.weight_decay);
        }
        if let Some(c) = self.grad_clip {
            text += &format!(", gradient norm clipped at {c}");
        }
        text
    }

    /// The learning rate at step `step` (0-based) of a run of `total`
    /// steps: linear warm-up over `warmup_steps`, then flat or half a
    /// cosine, `lr_min + (lr - lr_min) (1 + cos(pi p)) / 2` with `p` going
    /// from 0 after warm-up to 1 at the last step (`total - 1`).
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => {
                let span = total.saturating_sub(1).saturating_sub(self.warmup_steps);
                let p = if span == 0 {
                    1.0
                } else {
                    ((step - self.warmup_steps) as f64 / span as f64).min(1.0)
                };
                let lr_min = self.min_lr_ratio * self.lr;
                lr_min + (self.lr - lr_min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}

/// Adam / RAdam over a fixed, named set of parameters.
#[derive(Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    params: BTreeMap<String, Tensor>,
    exp_avg: BTreeMap<String, Tensor>,
    exp_avg_sq: BTreeMap<String, Tensor>,
    /// Updates applied so far (Adam's `t`).
    steps: u64,
}

impl Optimizer {
    /// An optimizer over the named variables `params` (a parameter group,
    /// e.g. `Model::trainable_variables`: adapters alone, or everything).
    pub fn new(params: Vec<(String, Tensor)>, config: OptimizerConfig) -> Self {
        let params: BTreeMap<String, Tensor> = params.into_iter().collect();
        let zeros = |t: &Tensor| t.zeros_like().detach();
        Optimizer {
            exp_avg: params.iter().map(|(n, t)| (n.clone(), zeros(t))).collect(),
            exp_avg_sq: params.iter().map(|(n, t)| (n.clone(), zeros(t))).collect(),
            params,
            config,
            steps: 0,
        }
    }

    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for p in self.params.values_mut() {
            p.zero_grad();
        }
    }

    /// The defined gradients, in parameter-name order (what data-parallel
    /// training sums across ranks; the same order on every rank).
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .values()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .collect()
    }

    /// The moment estimates, `exp_avg` then `exp_avg_sq`, each in
    /// parameter-name order, sharing storage with the optimizer's (writing
    /// into them sets its state: rank 0's is broadcast on resume).
    pub fn state_views(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (prefix, state) in [("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)] {
            for (n, t) in state {
                out.push((format!("{prefix}.{n}"), t.shallow_clone()));
            }
        }
        out
    }

    /// Sets the update count (Adam's `t`), e.g. to rank 0's on resume.
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// Global L2 norm of the gradients (one host synchronisation).
    pub fn grad_norm(&self) -> f64 {
        let _guard = tch::no_grad_guard();
        let squares: Vec<Tensor> = self
            .params
            .values()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .map(|g| g.square().sum(Kind::Float))
            .collect();
        if squares.is_empty() {
            return 0.0;
        }
        Tensor::stack(&squares, 0)
            .sum(Kind::Double)
            .double_value(&[])
            .sqrt()
    }

    /// Applies one update at learning rate `lr`, given the gradient norm
    /// `norm` (from [`Optimizer::grad_norm`]) for clipping. Moments and
    /// weights are updated in place, as PyTorch's `Adam` / `RAdam` do.
    pub fn step(&mut self, lr: f64, norm: f64) {
        let _guard = tch::no_grad_guard();
        let clip = match self.config.grad_clip {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        self.steps += 1;
        let c = &self.config;
        let decay = 1.0 - lr * c.weight_decay;
        let t = self.steps as f64;
        let (b1, b2) = (c.beta1, c.beta2);
        let bias1 = 1.0 - b1.powf(t);
        let bias2 = 1.0 - b2.powf(t);
        // RAdam's rectification (Liu et al. 2020, Algorithm 2).
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * b2.powf(t) / bias2;
        for (name, p) in self.params.iter_mut() {
            let mut g = p.grad();
            if !g.defined() {
                continue;
            }
            if clip < 1.0 {
                let _ = g.g_mul_scalar_(clip);
            }
            if decay != 1.0 {
                let _ = p.g_mul_scalar_(decay);
            }
            let m = self
                .exp_avg
                .get_mut(name)
                .expect("state for every parameter");
            let _ = m.lerp_(&g, 1.0 - b1);
            let v = self
                .exp_avg_sq
                .get_mut(name)
                .expect("state for every parameter");
            let _ = v.g_mul_scalar_(b2).addcmul_(&g, &(&g * (1.0 - b2)));
            match c.kind {
                // p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
                OptimizerKind::Adam => {
                    let denom = v.sqrt() / bias2.sqrt() + c.eps;
                    let _ = p.addcdiv_(&*m, &(denom / (-lr / bias1)));
                }
                // PyTorch RAdam: p -= lr * m/bc1 * r * sqrt(bc2) / (sqrt(v) + eps)
                OptimizerKind::Radam if rho_t > 5.0 => {
                    let r = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                        / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                        .sqrt();
                    let denom = v.sqrt() + c.eps;
                    let _ = p.addcdiv_(&*m, &(denom / (-lr * r * bias2.sqrt() / bias1)));
                }
                OptimizerKind::Radam => {
                    let _ = p.g_add_(&(&*m * (-lr / bias1)));
                }
            }
        }
    }

    /// The moment estimates as named tensors (`exp_avg.NAME`,
    /// `exp_avg_sq.NAME`), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (n, t) in &self.exp_avg {
            out.push((format!("exp_avg.{n}"), t.contiguous()));
        }
        for (n, t) in &self.exp_avg_sq {
            out.push((format!("exp_avg_sq.{n}"), t.contiguous()));
        }
        out
    }

    /// Restores the moment estimates and the update count; every parameter's
    /// state must be present with the right shape.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, steps: u64) -> Result<(), String> {
        let mut map: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        let _guard = tch::no_grad_guard();
        for (prefix, state) in [
            ("exp_avg", &mut self.exp_avg),
            ("exp_avg_sq", &mut self.exp_avg_sq),
        ] {
            for (name, t) in state.iter_mut() {
                let key = format!("{prefix}.{name}");
                let src = map
                    .remove(&key)
                    .ok_or_else(|| format!("missing optimizer tensor `{key}`"))?;
                if src.size() != t.size() {
                    return Err(format!(
                        "optimizer tensor `{key}`: expected shape {:?}, found {:?}",
                        t.size(),
                        src.size()
                    ));
                }
                if src.kind() != t.kind() {
                    return Err(format!(
                        "optimizer tensor `{key}`: expected dtype {:?}, found {:?}",
                        t.kind(),
                        src.kind()
                    ));
                }
                t.copy_(&src);
            }
        }
        if let Some(name) = map.keys().next() {
            return Err(format!("unexpected optimizer tensor `{name}`"));
        }
        self.steps = steps;
        Ok(())
    }
}
