//! The probability-flow ODE of an EDM denoiser, `dx/dt = (x - D(x; t)) / t`
//! (Karras et al. 2022, Eq. 3 with `sigma(t) = t`), and one-step solvers for
//! it behind [`OdeSolver`]: Euler and Heun (EDM Algorithm 1, one iteration).
//! EDM's samplers take many steps; consistency distillation takes one, from
//! `t_{n+1}` to `t_n` (Song et al. 2023, Algorithm 2).

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::cond::Conditioning;
use crate::precond::append_dims;

/// A denoiser `D(x; sigma)`: the expected clean sample given a noisy one.
/// `sigma` is `[B]`; `cond` carries class labels and any other conditioning
/// ([`Conditioning::none`] = unconditional / null class).
pub trait Denoiser {
    /// `D(x; sigma, cond)`, shaped like `x`.
    fn denoise(&self, x: &Tensor, sigma: &Tensor, cond: Conditioning<'_>) -> Tensor;
}

/// The PF-ODE derivative `d = (x - D(x; t)) / t`.
pub fn ode_derivative(
    denoiser: &dyn Denoiser,
    x: &Tensor,
    t: &Tensor,
    cond: Conditioning<'_>,
) -> Tensor {
    let denoised = denoiser.denoise(x, t, cond);
    (x - denoised) / append_dims(t, x.dim())
}

/// The denoiser value that makes one Euler step from `(x_t, t)` land on
/// `(x_s, s)`: `x_t - t (x_s - x_t) / (s - t)`, solving
/// `x_s = x_t + (s - t) (x_t - D) / t` for `D` (openai's `euler_to_denoiser`,
/// the target of progressive distillation: Salimans & Ho 2022, Algorithm 2,
/// written for an `x`-prediction). `t` and `s` are `[B]` with `s != t`.
pub fn euler_to_denoiser(x_t: &Tensor, t: &Tensor, x_s: &Tensor, s: &Tensor) -> Tensor {
    let ndim = x_t.dim();
    x_t - append_dims(t, ndim) * (x_s - x_t) / append_dims(&(s - t), ndim)
}

/// One step of an ODE solver from `t_cur` to `t_next` (both `[B]`).
pub trait OdeSolver {
    /// `x` at `t_next`.
    fn step(
        &self,
        denoiser: &dyn Denoiser,
        x: &Tensor,
        t_cur: &Tensor,
        t_next: &Tensor,
        cond: Conditioning<'_>,
    ) -> Tensor;

    /// Denoiser evaluations of one step; `to_zero` when `t_next = 0`.
    fn evaluations(&self, to_zero: bool) -> usize;
}

/// The solvers cm-rs offers, as written in configs (`solver = "euler" | "heun"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    /// First order: `x + (t_next - t) d(x, t)`.
    Euler,
    /// Second order (EDM Algorithm 1): Euler, then the trapezoidal correction
    /// `x + (t_next - t) (d + d') / 2` where `t_next > 0`.
    #[default]
    Heun,
}

impl OdeSolver for Solver {
    fn step(
        &self,
        denoiser: &dyn Denoiser,
        x: &Tensor,
        t_cur: &Tensor,
        t_next: &Tensor,
        cond: Conditioning<'_>,
    ) -> Tensor {
        let ndim = x.dim();
        let dt = append_dims(&(t_next - t_cur), ndim);
        let d = ode_derivative(denoiser, x, t_cur, cond);
        let euler = x + &dt * &d;
        if *self == Solver::Euler {
            return euler;
        }
        let positive = t_next.gt(0.0);
        let count = positive.sum(tch::Kind::Int64).int64_value(&[]);
        if count == 0 {
            return euler; // the final step to t = 0: no correction (EDM Alg. 1, line 7)
        }
        if count == t_next.numel() as i64 {
            let d_next = ode_derivative(denoiser, &euler, t_next, cond);
            return x + dt * (d + d_next) * 0.5;
        }
        // Examples already at t_next = 0 would divide by zero: evaluate them at
        // a harmless level and keep their Euler value.
        let t_safe = t_next.where_self(&positive, &t_next.ones_like());
        let d_next = ode_derivative(denoiser, &euler, &t_safe, cond);
        let heun = x + dt * (d + d_next) * 0.5;
        heun.where_self(&append_dims(&positive, ndim), &euler)
    }

    fn evaluations(&self, to_zero: bool) -> usize {
        match (self, to_zero) {
            (Solver::Euler, _) | (Solver::Heun, true) => 1,
            (Solver::Heun, false) => 2,
        }
    }
}
