//! The teacher baselines and progressive distillation's sampler, checked on
//! a Gaussian toy where everything has a closed form: data `N(0, s^2)`
//! per coordinate has the exact denoiser `D(x; t) = s^2 / (s^2 + t^2) x`.
//! - Ancestral (DDPM-like) sampling: the variance after each step follows
//!   the recursion `V_s = V_t (D-factor + (1 - D-factor) s^2/t^2)^2 +
//!   s^2 (t^2 - s^2) / t^2`, computed here in f64 and compared with the
//!   Monte-Carlo variance of 20,000 samples.
//! - DDIM-like (Euler) and PD-grid sampling are linear maps `x_T -> c x_T`:
//!   the product of the Euler factors `1 + (s - t) t / (s_d^2 + t^2)` over
//!   the grid, per sample.
//! - NFE counts, and the settings that make no sense together refused.

use std::cell::Cell;

use cm_core::{Conditioning, Denoiser, KarrasGrid, Solver};
use cm_sample::{edm_sample, edm_sample_with, EdmSampler, SamplingGrid, SeededNoise};
use tch::{Device, Kind, Tensor};

/// The exact denoiser of `N(0, s^2)` data, counting its calls.
struct Gaussian {
    s2: f64,
    calls: Cell<usize>,
}

impl Gaussian {
    fn new(s: f64) -> Self {
        Gaussian {
            s2: s * s,
            calls: Cell::new(0),
        }
    }
}

impl Denoiser for Gaussian {
    fn denoise(&self, x: &Tensor, sigma: &Tensor, _cond: Conditioning<'_>) -> Tensor {
        self.calls.set(self.calls.get() + 1);
        let factor = (sigma.square() + self.s2).reciprocal() * self.s2;
        x * factor.reshape([-1, 1])
    }
}

#[test]
fn ancestral_sampling_follows_the_ddpm_posterior_variance() {
    let s = 0.5f64;
    let grid = KarrasGrid::default();
    let mut deficits = Vec::new();
    for steps in [8usize, 256] {
        let sampler = EdmSampler {
            steps,
            solver: Solver::Euler,
            ancestral: true,
            ..Default::default()
        };
        let sigmas = grid.sampling_sigmas(steps).unwrap();
        // The exact variance recursion, starting from the latent's T^2.
        let mut v = sigmas[0] * sigmas[0];
        for w in sigmas.windows(2) {
            let (t, u) = (w[0], w[1]);
            let a = s * s / (s * s + t * t);
            if u == 0.0 {
                v *= a * a;
            } else {
                let mean_factor = a + (1.0 - a) * (u / t).powi(2);
                v = v * mean_factor * mean_factor + u * u * (t * t - u * u) / (t * t);
            }
        }
        let d = Gaussian::new(s);
        // Per-sample seeded noise: tests in other threads share libtorch's
        // global generator.
        let count = 20_000;
        let z = SeededNoise::for_range(11, 0, count).draw(&[1], Kind::Double, Device::Cpu);
        let run = |seed: u64| {
            let mut noise = SeededNoise::for_range(seed, 0, count);
            edm_sample_with(&d, &z, &grid, &sampler, Conditioning::none(), &mut noise).unwrap()
        };
        let out = run(12);
        assert_eq!(out.nfe, steps);
        assert_eq!(d.calls.get(), steps);
        let got = out.x.var(true).double_value(&[]);
        // The Monte-Carlo variance of 20,000 draws is within ~2% (4 sigma).
        assert!(
            (got / v - 1.0).abs() < 0.04,
            "{steps} steps: sample variance {got}, recursion {v}"
        );
        // The posterior mean uses E[x0 | x_t], not a draw of x0: each step
        // loses s_d^2 (t^2 - s^2)^2 / (t^2 (s_d^2 + t^2)) of variance, O(h^2),
        // so the variance approaches the data's from below as steps shrink
        // (8 steps: 0.072, 256 steps: 0.238 for s_d^2 = 0.25).
        assert!(v < s * s, "{v}");
        deficits.push(s * s - v);
        // Stochastic: a second draw differs, the same seed repeats.
        assert!(run(12).x.equal(&out.x));
        assert!(!run(13).x.equal(&out.x));
    }
    assert!(
        deficits[1] < 0.25 * deficits[0] && deficits[1] < 0.05 * s * s,
        "{deficits:?}"
    );
}

/// The product of Euler factors along `sigmas` for the Gaussian denoiser.
fn euler_factor(sigmas: &[f64], s: f64) -> f64 {
    sigmas
        .windows(2)
        .map(|w| 1.0 + (w[1] - w[0]) * w[0] / (s * s + w[0] * w[0]))
        .product()
}

#[test]
fn euler_on_either_grid_is_the_product_of_its_steps() {
    let s = 0.5;
    let grid = KarrasGrid::default();
    let z = Tensor::randn([5, 1], (Kind::Double, Device::Cpu));
    for (steps, kind, nfe) in [
        (50usize, SamplingGrid::Karras, 50usize),
        (4, SamplingGrid::Progressive, 4),
        (1, SamplingGrid::Progressive, 1),
    ] {
        let sampler = EdmSampler {
            steps,
            solver: Solver::Euler,
            grid: kind,
            ..Default::default()
        };
        let sigmas = match kind {
            SamplingGrid::Karras => grid.sampling_sigmas(steps).unwrap(),
            SamplingGrid::Progressive => grid.progressive_sigmas(steps).unwrap(),
        };
        let d = Gaussian::new(s);
        let out = edm_sample(&d, &z, &grid, &sampler, Conditioning::none()).unwrap();
        assert_eq!((out.nfe, d.calls.get()), (nfe, nfe));
        let want = &z * (80.0 * euler_factor(&sigmas, s));
        assert!(
            out.x.allclose(&want, 1e-10, 1e-12, false),
            "{steps} steps on {kind:?}"
        );
    }
    // DDIM-like Euler with 50 steps is close to the exact ODE end point
    // `x_0 = s / sqrt(s^2 + T^2) x_T` for a Gaussian.
    let sigmas = grid.sampling_sigmas(50).unwrap();
    let exact = s / (s * s + 80.0f64 * 80.0).sqrt();
    let euler = euler_factor(&sigmas, s);
    assert!((euler / exact - 1.0).abs() < 0.1, "{euler} vs {exact}");
    // Heun on the PD grid never reaches 0: two evaluations per step.
    let d = Gaussian::new(s);
    let heun = EdmSampler {
        steps: 3,
        solver: Solver::Heun,
        grid: SamplingGrid::Progressive,
        ..Default::default()
    };
    assert_eq!(
        edm_sample(&d, &z, &grid, &heun, Conditioning::none())
            .unwrap()
            .nfe,
        6
    );
}

#[test]
fn contradictory_sampler_settings_are_refused_by_name() {
    let grid = KarrasGrid::default();
    let z = Tensor::zeros([1, 1], (Kind::Double, Device::Cpu));
    let d = Gaussian::new(0.5);
    for (sampler, field) in [
        (
            EdmSampler {
                ancestral: true,
                solver: Solver::Heun,
                ..Default::default()
            },
            "sampler.solver",
        ),
        (
            EdmSampler {
                ancestral: true,
                solver: Solver::Euler,
                s_churn: 10.0,
                ..Default::default()
            },
            "sampler.s_churn",
        ),
        (
            EdmSampler {
                steps: 0,
                ..Default::default()
            },
            "sampler.steps",
        ),
    ] {
        let err = edm_sample(&d, &z, &grid, &sampler, Conditioning::none()).unwrap_err();
        assert!(err.to_string().contains(field), "{field}: {err}");
        assert_eq!(d.calls.get(), 0);
    }
    let described = EdmSampler {
        steps: 256,
        solver: Solver::Euler,
        ancestral: true,
        ..Default::default()
    }
    .describe();
    assert_eq!(described, "ancestral (DDPM-like), 256 steps");
}
