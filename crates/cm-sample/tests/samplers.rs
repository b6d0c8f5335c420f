//! Samplers: consistency sampling calls the network exactly once per step
//! (1-step once, k-step k times), reproduces under a seed and keeps the
//! boundary (`tau` must lie in `(eps, T)`); the EDM sampler's NFE count, and
//! its stochastic variant adds noise only within `[s_tmin, s_tmax]`.

use cm_core::{Conditioning, NoiseRange};
use std::cell::Cell;

use cm_core::{Denoiser, KarrasGrid, Solver};
use cm_sample::{consistency_sample, edm_sample, EdmSampler};

/// CM's noise range `[0.002, 80]`.
const RANGE: NoiseRange = NoiseRange {
    sigma_min: 0.002,
    sigma_max: 80.0,
};
use tch::{Device, Kind, Tensor};

/// Counts its calls; returns a fixed shrink of the input.
struct Counting {
    calls: Cell<usize>,
    levels: std::cell::RefCell<Vec<f64>>,
}

impl Denoiser for Counting {
    fn denoise(&self, x: &Tensor, sigma: &Tensor, _cond: Conditioning<'_>) -> Tensor {
        self.calls.set(self.calls.get() + 1);
        self.levels.borrow_mut().push(sigma.double_value(&[0]));
        x * (sigma.square() + 0.25).reciprocal().reshape([-1, 1]) * 0.25
    }
}

fn counting() -> Counting {
    Counting {
        calls: Cell::new(0),
        levels: Default::default(),
    }
}

#[test]
fn consistency_sampling_calls_the_network_once_per_step() {
    let _rng = cm_runtime::lock_global_rng();
    let z = Tensor::randn([4, 2], (Kind::Float, Device::Cpu));
    for taus in [vec![], vec![0.821], vec![5.0, 0.821, 0.1]] {
        let f = counting();
        tch::manual_seed(3);
        let out = consistency_sample(&f, &z, RANGE, &taus, Conditioning::none()).unwrap();
        assert_eq!(f.calls.get(), taus.len() + 1);
        assert_eq!(out.nfe, taus.len() + 1);
        let mut want = vec![80.0];
        want.extend(taus.iter());
        let got = f.levels.borrow().clone();
        assert!(
            got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-5),
            "{got:?} vs {want:?}"
        );
        tch::manual_seed(3);
        let again =
            consistency_sample(&counting(), &z, RANGE, &taus, Conditioning::none()).unwrap();
        assert!(out.x.equal(&again.x), "not reproducible under a seed");
    }
    for bad in [vec![90.0], vec![0.5, 1.0], vec![0.001]] {
        let err =
            consistency_sample(&counting(), &z, RANGE, &bad, Conditioning::none()).unwrap_err();
        assert!(err.to_string().contains("taus["), "{err}");
    }
}

#[test]
fn edm_sampler_counts_evaluations_and_churns_only_in_range() {
    let _rng = cm_runtime::lock_global_rng();
    let grid = KarrasGrid::default();
    let z = Tensor::randn([3, 2], (Kind::Double, Device::Cpu));
    for (steps, solver, nfe) in [
        (18, Solver::Heun, 35),
        (18, Solver::Euler, 18),
        (1, Solver::Euler, 1),
        (5, Solver::Heun, 9),
    ] {
        let d = counting();
        let out = edm_sample(
            &d,
            &z,
            &grid,
            &EdmSampler {
                steps,
                solver,
                ..Default::default()
            },
            Conditioning::none(),
        )
        .unwrap();
        assert_eq!((out.nfe, d.calls.get()), (nfe, nfe), "{steps} {solver:?}");
    }
    let det = edm_sample(
        &counting(),
        &z,
        &grid,
        &EdmSampler::default(),
        Conditioning::none(),
    )
    .unwrap()
    .x;
    tch::manual_seed(1);
    let churn = EdmSampler {
        s_churn: 40.0,
        s_tmin: 0.05,
        s_tmax: 50.0,
        ..Default::default()
    };
    let d = counting();
    let sto = edm_sample(&d, &z, &grid, &churn, Conditioning::none())
        .unwrap()
        .x;
    assert!(
        !sto.allclose(&det, 1e-9, 1e-9, false),
        "churn changed nothing"
    );
    // Churned levels are raised by (1 + gamma); levels outside the range are not.
    let gamma = (40.0f64 / 18.0).min(2f64.sqrt() - 1.0);
    let sigmas = grid.sampling_sigmas(18).unwrap();
    let first_eval = d.levels.borrow()[0];
    assert!(
        (first_eval - sigmas[0]).abs() < 1e-9,
        "80 > s_tmax must not churn"
    );
    let inside = sigmas.iter().position(|&s| s <= 50.0).unwrap();
    let evaluated: Vec<f64> = d.levels.borrow().clone();
    assert!(evaluated
        .iter()
        .any(|&l| (l - sigmas[inside] * (1.0 + gamma)).abs() < 1e-9));
}
