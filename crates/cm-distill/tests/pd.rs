//! Progressive distillation's objective and stages:
//! - the target against a closed form on a Gaussian toy: for data
//!   `N(0, s^2)` the teacher's exact denoiser is linear, `D = s^2/(s^2+t^2) x`,
//!   so Euler and Heun steps are products of scalar factors and the target
//!   `x_t - t (x_t'' - x_t) / (t'' - t)` is one too; on a fine grid it
//!   approaches the value implied by the exact ODE solution
//!   `x(t'') = x(t) sqrt((s^2 + t''^2) / (s^2 + t^2))`;
//! - the halving schedule and its validation.

use cm_core::{Conditioning, Denoiser, Solver};
use cm_distill::{pd_target, PdConfig, MAX_PD_STEPS};
use tch::Tensor;

struct Gaussian(f64);

impl Denoiser for Gaussian {
    fn denoise(&self, x: &Tensor, sigma: &Tensor, _cond: Conditioning<'_>) -> Tensor {
        let s2 = self.0 * self.0;
        x * ((sigma.square() + s2).reciprocal() * s2).reshape([-1, 1])
    }
}

/// `dx/dt = g(t) x` with `g(t) = t / (s^2 + t^2)` for the Gaussian teacher.
fn g(t: f64, s: f64) -> f64 {
    t / (s * s + t * t)
}

fn step_factor(solver: Solver, t: f64, u: f64, s: f64) -> f64 {
    let h = u - t;
    let euler = 1.0 + h * g(t, s);
    match solver {
        Solver::Euler => euler,
        Solver::Heun => 1.0 + h * (g(t, s) + g(u, s) * euler) / 2.0,
    }
}

#[test]
fn pd_target_matches_the_closed_form_on_a_gaussian() {
    let s = 0.5;
    let teacher = Gaussian(s);
    let levels = [(80.0, 20.0, 3.0), (2.0, 1.2, 0.7), (0.1, 0.01, 0.002)];
    let x = Tensor::from_slice(&[1.5f64, -0.3, 2.0]).view([3, 1]);
    let col = |i: usize| Tensor::from_slice(&levels.map(|l| [l.0, l.1, l.2][i]));
    let (t, t_mid, t_next) = (col(0), col(1), col(2));
    for solver in [Solver::Euler, Solver::Heun] {
        let got = pd_target(
            &teacher,
            solver,
            &x,
            (&t, &t_mid, &t_next),
            Conditioning::none(),
        );
        for (i, &(a, b, c)) in levels.iter().enumerate() {
            let xi = x.double_value(&[i as i64, 0]);
            let x_next = xi * step_factor(solver, a, b, s) * step_factor(solver, b, c, s);
            let want = xi - a * (x_next - xi) / (c - a);
            let have = got.double_value(&[i as i64, 0]);
            assert!(
                (have - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{solver:?} level {i}: {have} vs {want}"
            );
        }
    }
    // One student step with the target as its denoiser lands where the
    // teacher's two steps did, and on a fine grid the target is the one the
    // exact ODE solution implies.
    let (a, c) = (1.0f64, 0.99f64);
    let b = (a + c) / 2.0;
    let x = Tensor::from_slice(&[1.0f64]).view([1, 1]);
    let lv = |v: f64| Tensor::from_slice(&[v]);
    let target = pd_target(
        &teacher,
        Solver::Heun,
        &x,
        (&lv(a), &lv(b), &lv(c)),
        Conditioning::none(),
    )
    .double_value(&[0, 0]);
    let exact_next = ((s * s + c * c) / (s * s + a * a)).sqrt();
    let exact_target = 1.0 - a * (exact_next - 1.0) / (c - a);
    // Heun's local error is O(h^3), amplified by t / (t - t'') = 100 here:
    // ~2e-6; Euler's would be ~1e-3.
    assert!(
        (target - exact_target).abs() < 1e-5,
        "{target} vs {exact_target}"
    );
    // ... which for a step this small is close to the teacher's own D.
    assert!((target - s * s / (s * s + a * a)).abs() < 0.01);
}

#[test]
fn stages_halve_from_start_to_end_and_bad_schedules_are_named() {
    let stages = |start, end| {
        PdConfig {
            start_steps: start,
            end_steps: end,
            ..Default::default()
        }
        .stages()
    };
    assert_eq!(PdConfig::default().stages(), [64, 32, 16, 8, 4, 2, 1]);
    assert_eq!(stages(4, 1), [4, 2, 1]);
    assert_eq!(stages(8, 2), [8, 4, 2]);
    assert_eq!(stages(1, 1), [1]);
    for (start, end, field) in [
        (0, 1, "pd.start_steps"),
        (MAX_PD_STEPS * 2, 1, "pd.start_steps"),
        (6, 4, "pd.end_steps"),
        (12, 1, "pd.end_steps"),
        (4, 8, "pd.end_steps"),
        (4, 0, "pd.end_steps"),
    ] {
        let err = PdConfig {
            start_steps: start,
            end_steps: end,
            ..Default::default()
        }
        .validate_at("pd.")
        .unwrap_err();
        assert!(err.to_string().contains(field), "{start}->{end}: {err}");
    }
    let inverse = PdConfig {
        weighting: cm_core::Weighting::InverseStep,
        ..Default::default()
    };
    assert!(inverse
        .validate_at("pd.")
        .unwrap_err()
        .to_string()
        .contains("pd.weighting"));
}
