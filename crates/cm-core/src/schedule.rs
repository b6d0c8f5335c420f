//! Discretization schedules over the training step `k`: how many grid points
//! `N(k)` the training grid has and which EMA rate `mu(k)` the target network
//! uses. Fixed (CD, Song et al. 2023, Algorithm 2), the CT adaptive schedule
//! (Algorithm 3 and Appendix C, following the reference code), and the iCT
//! exponential curriculum (Song & Dhariwal 2023, Section 3.4).

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::sigmas::MAX_GRID_POINTS;

/// The discretization in force at one training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Discretization {
    /// Number of points `N` of the training grid `t_1..t_N`.
    pub n: usize,
    /// EMA rate of the target network, `theta- <- mu theta- + (1 - mu) theta`.
    pub mu: f64,
}

/// `N(k)` and `mu(k)` at training step `k` (0-based).
pub trait DiscretizationSchedule {
    /// The discretization at step `k`.
    fn at(&self, step: u64) -> Discretization;
}

/// A fixed `N` and `mu` (consistency distillation; CIFAR-10: N = 18, mu = 0.95).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FixedSchedule {
    /// Number of grid points `N` (at least 2).
    pub n: usize,
    /// Target EMA rate in `[0, 1)`; 0 makes the target a stop-gradient copy.
    pub mu: f64,
}

impl Default for FixedSchedule {
    /// The CM paper's CIFAR-10 CD setting: N = 18, mu = 0.95.
    fn default() -> Self {
        FixedSchedule { n: 18, mu: 0.95 }
    }
}

impl FixedSchedule {
    /// Checks `n >= 2` and `mu` in `[0, 1)`.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        if !(2..=MAX_GRID_POINTS).contains(&self.n) {
            return Err(CoreError::invalid(
                format!("{prefix}n"),
                self.n,
                format!("2 to {MAX_GRID_POINTS} grid points"),
            ));
        }
        check_unit_interval(&format!("{prefix}mu"), self.mu)
    }
}

impl DiscretizationSchedule for FixedSchedule {
    fn at(&self, _step: u64) -> Discretization {
        Discretization {
            n: self.n,
            mu: self.mu,
        }
    }
}

/// The CT adaptive schedule (Song et al. 2023, Algorithm 3, Appendix C):
/// `N(k) = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1` and
/// `mu(k) = exp(s0 ln(mu0) / N(k))`.
///
/// Follows the reference code (`create_ema_and_scales_fn` in
/// openai/consistency_models), which produced the published results: the
/// value before the final `+ 1` is clamped to at least 1 and `mu` divides by
/// that value, not by `N(k)`; so at `k = 0` with `s0 = 2`, `mu0 = 0.9`:
/// `N = 2`, `mu = 0.81`. (The paper's formula would divide by `N(k)`.)
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CtAdaptiveSchedule {
    /// Initial discretization steps `s0`.
    pub s0: u64,
    /// Final discretization steps `s1` (>= `s0`).
    pub s1: u64,
    /// EMA rate at the start of training, in `[0, 1)`.
    pub mu0: f64,
    /// Total training steps `K` the schedule spans.
    pub total_steps: u64,
}

impl Default for CtAdaptiveSchedule {
    /// The CM paper's CIFAR-10 CT setting: s0 = 2, s1 = 150, mu0 = 0.9, K = 800k.
    fn default() -> Self {
        CtAdaptiveSchedule {
            s0: 2,
            s1: 150,
            mu0: 0.9,
            total_steps: 800_000,
        }
    }
}

impl CtAdaptiveSchedule {
    /// Checks `s0 >= 1`, `s1 >= s0`, `mu0` in `[0, 1)`, `total_steps >= 1`.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        check_steps(prefix, self.s0 as f64, self.s1 as f64, self.total_steps)?;
        check_unit_interval(&format!("{prefix}mu0"), self.mu0)
    }

    /// The reference code's `scales` before the final `+ 1`:
    /// `max(ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1), 1)`.
    fn scales(&self, step: u64) -> f64 {
        let k = step.min(self.total_steps) as f64 / self.total_steps as f64;
        let (s0, s1) = (self.s0 as f64, self.s1 as f64);
        let inner = k * ((s1 + 1.0).powi(2) - s0 * s0) + s0 * s0;
        (inner.sqrt() - 1.0).ceil().max(1.0)
    }
}

impl DiscretizationSchedule for CtAdaptiveSchedule {
    fn at(&self, step: u64) -> Discretization {
        let scales = self.scales(step);
        let mu = if self.mu0 == 0.0 {
            0.0
        } else {
            (self.s0 as f64 * self.mu0.ln() / scales).exp()
        };
        Discretization {
            n: scales as usize + 1,
            mu,
        }
    }
}

/// The iCT exponential curriculum (Song & Dhariwal 2023, Eq. 10):
/// `N(k) = min(s0 2^floor(k/K'), s1) + 1` with
/// `K' = floor(K / (log2 floor(s1/s0) + 1))`, and `mu = 0` (no EMA target).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IctExponentialSchedule {
    /// Initial discretization steps `s0`.
    pub s0: u64,
    /// Final discretization steps `s1` (>= `s0`).
    pub s1: u64,
    /// Total training steps `K` the curriculum spans.
    pub total_steps: u64,
}

impl Default for IctExponentialSchedule {
    /// The iCT paper's setting: s0 = 10, s1 = 1280, K = 400k.
    fn default() -> Self {
        IctExponentialSchedule {
            s0: 10,
            s1: 1280,
            total_steps: 400_000,
        }
    }
}

impl IctExponentialSchedule {
    /// Checks `s0 >= 1`, `s1 >= s0` and that `K' >= 1`.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        check_steps(prefix, self.s0 as f64, self.s1 as f64, self.total_steps)?;
        if self.stage_length() < 1 {
            return Err(CoreError::invalid(
                format!("{prefix}total_steps"),
                self.total_steps,
                format!(
                    "at least {} steps, one per doubling of N from s0 = {} to s1 = {}",
                    self.stages(),
                    self.s0,
                    self.s1
                ),
            ));
        }
        Ok(())
    }

    /// `log2 floor(s1/s0) + 1`, the number of curriculum stages.
    fn stages(&self) -> f64 {
        ((self.s1 / self.s0) as f64).log2() + 1.0
    }

    /// `K' = floor(K / (log2 floor(s1/s0) + 1))`, the steps per stage.
    pub fn stage_length(&self) -> u64 {
        (self.total_steps as f64 / self.stages()).floor() as u64
    }
}

impl DiscretizationSchedule for IctExponentialSchedule {
    fn at(&self, step: u64) -> Discretization {
        let doublings = step / self.stage_length().max(1);
        let n = match 1u64.checked_shl(doublings.min(63) as u32) {
            Some(factor) if doublings < 63 => self.s0.saturating_mul(factor).min(self.s1),
            _ => self.s1,
        };
        Discretization {
            n: n as usize + 1,
            mu: 0.0,
        }
    }
}

fn check_unit_interval(field: &str, mu: f64) -> Result<()> {
    if !(0.0..1.0).contains(&mu) {
        return Err(CoreError::invalid(field, mu, "a value in [0, 1)"));
    }
    Ok(())
}

fn check_steps(prefix: &str, s0: f64, s1: f64, total_steps: u64) -> Result<()> {
    if !(s0.is_finite() && s0 >= 1.0) {
        return Err(CoreError::invalid(
            format!("{prefix}s0"),
            s0,
            "a number >= 1",
        ));
    }
    if !(s1.is_finite() && s1 >= s0 && s1 < MAX_GRID_POINTS as f64) {
        return Err(CoreError::invalid(
            format!("{prefix}s1"),
            s1,
            format!(
                "a number >= s0 = {s0} and below {MAX_GRID_POINTS} (the grid has s1 + 1 points)"
            ),
        ));
    }
    if total_steps == 0 {
        return Err(CoreError::invalid(
            format!("{prefix}total_steps"),
            total_steps,
            "at least 1",
        ));
    }
    Ok(())
}
