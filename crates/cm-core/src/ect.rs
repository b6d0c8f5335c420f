//! Easy Consistency Tuning's continuous pairs (Geng et al. 2024, "Consistency
//! Models Made Easy"): a noise level `t` from a lognormal, and the earlier
//! level `r` of the same trajectory from the mapping
//!
//! ```text
//! r = t (1 - q^-(s+1) (1 + k sigmoid(-b t))),  clamped at 0
//! ```
//!
//! (the authors' `t_to_r_sigmoid`, `training/loss.py` of locuslab/ect),
//! where the stage `s` advances on a schedule so that `t - r` shrinks by `q`
//! each stage: stage 0 is close to diffusion training (`r` near 0, the
//! target near the data), later stages pull nearby points of one trajectory
//! together (consistency training with a vanishing step).
//!
//! cm-rs's consistency functions have their boundary at `sigma_min` rather
//! than 0 (`f(x, sigma_min) = x`, CM Eq. 7), so the mapping is applied to the
//! distance from the boundary, `r = sigma_min + (t - sigma_min) (1 - ...)`,
//! clamped at `sigma_min`: with `sigma_min = 0` it is the authors' formula
//! exactly, and where the authors' target is the clean sample (`r = 0`) this
//! one is `f(x_r, sigma_min) = x_r`, the sample with `sigma_min` of noise.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{CoreError, Result};

/// The most stages a schedule may reach: `q^-(s+1)` of the smallest `q`
/// allowed is far below float32 resolution long before.
pub const MAX_ECT_STAGE: u32 = 64;

/// The smallest `q^-(max_stage+1)` a config may reach: `t - r` is that
/// share of `t - sigma_min` (or more), and float32 resolves about 1e-7 of
/// `t`; 1e-5 keeps two orders of margin (q = 2: stages 0 to 15).
pub const MIN_DECAY: f64 = 1e-5;

/// The mapping `t -> r` (ECT's `sigmoid` adjustment).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EctMapping {
    /// `t - r` shrinks by this factor per stage (> 1).
    pub q: f64,
    /// Strength of the extra shrink at small `t` (>= 0; 0 gives the
    /// authors' `const` mapping `r = t (1 - q^-(s+1))`).
    pub k: f64,
    /// Scale of `t` in the sigmoid (>= 0).
    pub b: f64,
}

impl Default for EctMapping {
    /// The authors' CIFAR-10 values: q = 2, k = 8, b = 1.
    fn default() -> Self {
        EctMapping {
            q: 2.0,
            k: 8.0,
            b: 1.0,
        }
    }
}

impl EctMapping {
    /// Checks the ranges; `prefix` is the dotted path of the section.
    pub fn validate_at(&self, prefix: &str) -> Result<()> {
        if !(self.q.is_finite() && self.q > 1.0 && self.q <= 1e3) {
            return Err(CoreError::invalid(
                format!("{prefix}q"),
                self.q,
                "a number in (1, 1000]",
            ));
        }
        for (name, v) in [("k", self.k), ("b", self.b)] {
            if !(v.is_finite() && (0.0..=1e3).contains(&v)) {
                return Err(CoreError::invalid(
                    format!("{prefix}{name}"),
                    v,
                    "a number in [0, 1000]",
                ));
            }
        }
        Ok(())
    }

    /// `q^-(s+1)`: the share of `t - sigma_min` left as the step at stage
    /// `s` (before the sigmoid adjustment).
    pub fn decay(&self, stage: u32) -> f64 {
        self.q.powi(-(stage.min(MAX_ECT_STAGE) as i32 + 1))
    }

    /// `r` for each `t` (any shape) at `stage`, with the boundary at
    /// `sigma_min` (see the module docs); computed in `t`'s dtype.
    pub fn r(&self, t: &Tensor, stage: u32, sigma_min: f64) -> Tensor {
        let adj = (t * -self.b).sigmoid() * self.k + 1.0;
        let ratio = adj * -self.decay(stage) + 1.0;
        ((t - sigma_min) * ratio + sigma_min).clamp_min(sigma_min)
    }

    /// Checks that the last stage's step `q^-(max_stage+1)` stays above
    /// [`MIN_DECAY`]: below float32's resolution the pair `(r, t)` collapses
    /// to one point and teaches nothing. `field` names `max_stage`.
    pub fn check_last_stage(&self, max_stage: u32, field: String) -> Result<()> {
        let decay = self.decay(max_stage);
        if decay < MIN_DECAY {
            return Err(CoreError::invalid(
                field,
                max_stage,
                format!(
                    "a last stage whose step q^-(max_stage+1) = {decay:.1e} stays above {MIN_DECAY:e} \
                     (float32 cannot tell t from r below it; q = {})",
                    self.q
                ),
            ));
        }
        Ok(())
    }

    /// [`EctMapping::r`] of one `t`, in f64.
    pub fn r_f64(&self, t: f64, stage: u32, sigma_min: f64) -> f64 {
        let sigmoid = 1.0 / (1.0 + (self.b * t).exp());
        let ratio = 1.0 - self.decay(stage) * (1.0 + self.k * sigmoid);
        (sigma_min + (t - sigma_min) * ratio).max(sigma_min)
    }
}

/// When the stage advances: `s = min(step / stage_steps, max_stage)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EctStages {
    /// Training steps per stage (>= 1).
    pub stage_steps: u64,
    /// The last stage (<= [`MAX_ECT_STAGE`]); it lasts until the end.
    pub max_stage: u32,
}

impl Default for EctStages {
    /// 250 steps per stage, up to stage 7 (`t - r` down to 1/256 of `t`).
    fn default() -> Self {
        EctStages {
            stage_steps: 250,
            max_stage: 7,
        }
    }
}

impl EctStages {
    /// Checks the ranges; `prefix` is the dotted path of the section.
    pub fn validate_at(&self, prefix: &str) -> Result<()> {
        if self.stage_steps == 0 || self.stage_steps > 1 << 40 {
            return Err(CoreError::invalid(
                format!("{prefix}stage_steps"),
                self.stage_steps,
                "1 to 2^40",
            ));
        }
        if self.max_stage > MAX_ECT_STAGE {
            return Err(CoreError::invalid(
                format!("{prefix}max_stage"),
                self.max_stage,
                format!("0 to {MAX_ECT_STAGE}"),
            ));
        }
        Ok(())
    }

    /// The stage at training step `step` (0-based).
    pub fn at(&self, step: u64) -> u32 {
        (step / self.stage_steps.max(1)).min(self.max_stage as u64) as u32
    }
}

/// `ln t ~ N(P_mean, P_std^2)` truncated to `(lo, hi)`, drawn by inverting
/// the normal CDF of a uniform on the kept interval (no rejection, so a
/// draw costs the same whatever the truncation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TruncatedLognormal {
    /// Mean of `ln t`.
    pub p_mean: f64,
    /// Standard deviation of `ln t` (> 0).
    pub p_std: f64,
    /// Lower end (> 0).
    pub lo: f64,
    /// Upper end (> lo).
    pub hi: f64,
}

impl TruncatedLognormal {
    /// The normal CDF of `ln x` under this lognormal.
    fn cdf(&self, x: f64) -> f64 {
        let z = (x.ln() - self.p_mean) / (std::f64::consts::SQRT_2 * self.p_std);
        0.5 * libm::erfc(-z)
    }

    /// The probability mass the untruncated lognormal puts in `(lo, hi)`.
    pub fn kept_mass(&self) -> f64 {
        self.cdf(self.hi) - self.cdf(self.lo)
    }

    /// Checks that the interval keeps some mass (at least 1e-6) of the
    /// lognormal; `field` names the distribution's settings.
    pub fn check_mass(&self, field: String) -> Result<()> {
        if self.kept_mass() < 1e-6 {
            return Err(CoreError::invalid(
                field,
                format!("p_mean = {}, p_std = {}", self.p_mean, self.p_std),
                format!(
                    "a lognormal with mass in (sigma_min, sigma_max] = ({}, {}]",
                    self.lo, self.hi
                ),
            ));
        }
        Ok(())
    }

    /// Draws `batch` values (shape `[batch]`, dtype `kind`). The inverse CDF
    /// runs in float64, so the tails are exact to float32 output.
    pub fn sample(&self, batch: i64, kind: Kind, device: Device) -> Tensor {
        let (a, b) = (self.cdf(self.lo), self.cdf(self.hi));
        let u = Tensor::rand([batch], (Kind::Double, device)) * (b - a) + a;
        // Phi^-1(u) = sqrt(2) erfinv(2u - 1)
        let z = (u * 2.0 - 1.0).erfinv() * std::f64::consts::SQRT_2;
        (z * self.p_std + self.p_mean)
            .exp()
            .clamp(self.lo, self.hi)
            .to_kind(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The authors' `t_to_r_sigmoid` written out independently (boundary 0).
    fn authors(t: f64, stage: u32, q: f64, k: f64, b: f64) -> f64 {
        let adj = 1.0 + k / (1.0 + (b * t).exp());
        let decay = 1.0 / q.powf(stage as f64 + 1.0);
        (t * (1.0 - decay * adj)).max(0.0)
    }

    #[test]
    fn with_the_boundary_at_zero_the_mapping_is_the_authors_formula() {
        let ts = [1e-3, 0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 80.0];
        for (q, k, b) in [
            (2.0, 8.0, 1.0),
            (4.0, 4.0, 2.0),
            (256.0, 8.0, 1.0),
            (2.0, 0.0, 1.0),
        ] {
            let m = EctMapping { q, k, b };
            for stage in [0, 1, 3, 7] {
                let tensor = m.r(&Tensor::from_slice(&ts), stage, 0.0);
                let got = Vec::<f64>::try_from(&tensor).unwrap();
                for (i, &t) in ts.iter().enumerate() {
                    let want = authors(t, stage, q, k, b);
                    assert!(
                        (got[i] - want).abs() <= 1e-12 * t.max(1.0),
                        "q {q} k {k} b {b} stage {stage} t {t}: {} vs {want}",
                        got[i]
                    );
                    assert!((m.r_f64(t, stage, 0.0) - want).abs() <= 1e-12 * t.max(1.0));
                }
            }
        }
        // Hand-checked value: t = 1, stage 0, q = 2, k = 8, b = 1:
        // sigmoid(-1) = 0.268941..., ratio = 1 - (1 + 2.151529)/2 < 0, r = 0.
        assert_eq!(EctMapping::default().r_f64(1.0, 0, 0.0), 0.0);
        // t = 10, stage 3: r = 10 (1 - (1 + 8 sigmoid(-10))/16).
        let want = 10.0 * (1.0 - (1.0 + 8.0 * 4.5397868702434395e-5) / 16.0);
        assert!((EctMapping::default().r_f64(10.0, 3, 0.0) - want).abs() < 1e-12);
    }

    #[test]
    fn r_never_crosses_the_boundary_and_the_step_shrinks_with_the_stage() {
        let m = EctMapping::default();
        let sigma_min = 0.002;
        let ts: Vec<f64> = (0..200)
            .map(|i| sigma_min * 1.0001f64.max(1.07f64.powi(i)))
            .collect();
        let mut last_gap: Option<Vec<f64>> = None;
        for stage in 0..=10 {
            let r = Vec::<f64>::try_from(&m.r(&Tensor::from_slice(&ts), stage, sigma_min)).unwrap();
            let gap: Vec<f64> = ts.iter().zip(&r).map(|(t, r)| t - r).collect();
            for (i, (&t, &r)) in ts.iter().zip(&r).enumerate() {
                assert!(r >= sigma_min && r <= t, "stage {stage}: t {t} r {r}");
                if let Some(last) = &last_gap {
                    assert!(
                        gap[i] <= last[i] + 1e-15,
                        "stage {stage}, t {t}: gap {} after {}",
                        gap[i],
                        last[i]
                    );
                }
            }
            // Far from the boundary, each stage halves the gap (q = 2) once
            // the sigmoid term has died out.
            if let Some(last) = &last_gap {
                let i = ts.len() - 1;
                assert!(
                    (gap[i] / last[i] - 0.5).abs() < 1e-6,
                    "{} / {}",
                    gap[i],
                    last[i]
                );
            }
            last_gap = Some(gap);
        }
    }

    #[test]
    fn stages_advance_every_stage_steps_and_stop_at_the_last() {
        let s = EctStages {
            stage_steps: 100,
            max_stage: 3,
        };
        let got: Vec<u32> = [0, 99, 100, 250, 399, 400, 10_000]
            .iter()
            .map(|&k| s.at(k))
            .collect();
        assert_eq!(got, vec![0, 0, 1, 2, 3, 3, 3]);
        assert!(EctStages {
            stage_steps: 0,
            max_stage: 3
        }
        .validate_at("ect.")
        .unwrap_err()
        .to_string()
        .contains("ect.stage_steps"));
        assert!(EctStages {
            stage_steps: 1,
            max_stage: 65
        }
        .validate_at("ect.")
        .is_err());
        assert!(EctMapping {
            q: 1.0,
            ..Default::default()
        }
        .validate_at("ect.mapping.")
        .unwrap_err()
        .to_string()
        .contains("ect.mapping.q"));
        assert!(EctMapping {
            k: f64::NAN,
            ..Default::default()
        }
        .validate_at("m.")
        .is_err());
    }

    #[test]
    fn the_truncated_lognormal_stays_inside_and_has_the_right_quantiles() {
        tch::manual_seed(0);
        let d = TruncatedLognormal {
            p_mean: -1.1,
            p_std: 2.0,
            lo: 0.002,
            hi: 80.0,
        };
        let n = 200_000;
        let t = d.sample(n, Kind::Double, Device::Cpu);
        let v = Vec::<f64>::try_from(&t).unwrap();
        assert!(v.iter().all(|&x| x > 0.0 && x >= d.lo && x <= d.hi));
        // The empirical CDF at the untruncated median exp(P_mean) is
        // (0.5 - Phi(lo)) / (Phi(hi) - Phi(lo)).
        let median = (-1.1f64).exp();
        let below = v.iter().filter(|&&x| x < median).count() as f64 / n as f64;
        let want = (0.5 - d.cdf(d.lo)) / d.kept_mass();
        assert!((below - want).abs() < 0.005, "{below} vs {want}");
        // ln 0.002 is 2.557 standard deviations below P_mean (0.53% of the
        // mass below it), ln 80 is 2.741 above (0.31% above): 99.17% kept.
        assert!((d.kept_mass() - 0.9917).abs() < 2e-4, "{}", d.kept_mass());
    }
}
