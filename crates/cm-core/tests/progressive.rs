//! Progressive distillation's pieces in cm-core: the nested grid against
//! openai's `progdist_losses` formula written out here, and the
//! Euler-to-denoiser inversion against the Euler step it inverts.

use cm_core::{euler_to_denoiser, Conditioning, Denoiser, KarrasGrid, OdeSolver, Solver};
use tch::{Kind, Tensor};

/// openai's `t = (T^(1/rho) + i/n (eps^(1/rho) - T^(1/rho)))^rho`.
fn openai_time(i: usize, n: usize, g: &KarrasGrid) -> f64 {
    let (lo, hi) = (g.sigma_min.powf(1.0 / g.rho), g.sigma_max.powf(1.0 / g.rho));
    (hi + i as f64 / n as f64 * (lo - hi)).powf(g.rho)
}

#[test]
fn progressive_grid_is_openais_and_nests_under_halving() {
    let _rng = cm_runtime::lock_global_rng();
    let g = KarrasGrid::default();
    for n in [1usize, 2, 4, 7, 64] {
        let grid = g.progressive_sigmas(n).unwrap();
        assert_eq!(grid.len(), n + 1);
        assert_eq!(grid[0], g.sigma_max);
        assert_eq!(grid[n], g.sigma_min);
        for (i, &t) in grid.iter().enumerate() {
            let want = openai_time(i, n, &g);
            assert!(
                (t - want).abs() <= 1e-12 * want,
                "n={n} i={i}: {t} vs {want}"
            );
        }
        // One student step spans two teacher steps of the 2n grid.
        let fine = g.progressive_sigmas(2 * n).unwrap();
        for (i, &t) in grid.iter().enumerate() {
            assert!((fine[2 * i] - t).abs() <= 1e-12 * t, "n={n} i={i}");
        }
        assert!(grid.windows(2).all(|w| w[0] > w[1]));
    }
    // n = 1: the one step goes from sigma_max to sigma_min.
    assert_eq!(g.progressive_sigmas(1).unwrap(), vec![80.0, 0.002]);
    assert!(g.progressive_sigmas(0).is_err());
}

/// `D(x; t) = a x`: a fixed linear denoiser.
struct Scale(f64);

impl Denoiser for Scale {
    fn denoise(&self, x: &Tensor, _sigma: &Tensor, _cond: Conditioning<'_>) -> Tensor {
        x * self.0
    }
}

#[test]
fn euler_to_denoiser_inverts_the_euler_step() {
    let _rng = cm_runtime::lock_global_rng();
    tch::manual_seed(3);
    let x_t = Tensor::randn([5, 3], (Kind::Double, tch::Device::Cpu)) * 4.0;
    let t = Tensor::from_slice(&[4.0f64, 2.0, 1.0, 0.5, 10.0]);
    let s = Tensor::from_slice(&[1.0f64, 1.5, 0.2, 0.002, 3.0]);
    // Any x_s: the returned D makes one Euler step land on it.
    let x_s = Tensor::randn([5, 3], (Kind::Double, tch::Device::Cpu));
    let d = euler_to_denoiser(&x_t, &t, &x_s, &s);
    let back = x_t.shallow_clone() + (&x_t - &d) / t.unsqueeze(1) * (&s - &t).unsqueeze(1);
    assert!(back.allclose(&x_s, 1e-12, 1e-12, false));
    // With x_s from an Euler step of a denoiser, it returns that denoiser's value.
    let den = Scale(0.3);
    let x_s = Solver::Euler.step(&den, &x_t, &t, &s, Conditioning::none());
    let d = euler_to_denoiser(&x_t, &t, &x_s, &s);
    assert!(d.allclose(&(&x_t * 0.3), 1e-12, 1e-12, false));
    // A hand-computed value: x = 2, t = 4 -> s = 1 reaching 1.25: D = 2 - 4 (1.25 - 2) / (1 - 4) = 1.
    let d = euler_to_denoiser(
        &Tensor::from_slice(&[2.0f64]).view([1, 1]),
        &Tensor::from_slice(&[4.0f64]),
        &Tensor::from_slice(&[1.25f64]).view([1, 1]),
        &Tensor::from_slice(&[1.0f64]),
    );
    assert!((d.double_value(&[0, 0]) - 1.0).abs() < 1e-15);
}
