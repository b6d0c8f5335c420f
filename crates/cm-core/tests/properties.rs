//! Properties cm-core must hold whatever the inputs: the consistency boundary
//! condition bit for bit, the pseudo-Huber limits, grid ordering, and the
//! samplers' distributions (reproducibility: `tests/seeding.rs`).

mod common;

use cm_core::{
    adjacent_pairs, grid_tensor, ConsistencyConfig, DistanceMetric, EdmPreconditioning,
    IndexSampler, KarrasGrid, LognormalIndex, LognormalSigma, LossWeighting, Parameterization,
    PseudoHuber, UniformIndex, Weighting,
};
use common::{assert_close, to_vec};
use tch::{Device, Kind, Tensor};

#[test]
fn consistency_function_is_identity_at_sigma_min_bit_for_bit() {
    let _rng = cm_runtime::lock_global_rng();
    tch::manual_seed(0);
    for sigma_data in [0.5, 0.3, 1.0 / 3.0] {
        let p = ConsistencyConfig {
            sigma_data,
            ..Default::default()
        }
        .parameterization();
        for kind in [Kind::Float, Kind::Double] {
            let x = Tensor::randn([4, 1, 8, 8], (kind, Device::Cpu));
            let sigma = Tensor::full([4], 0.002, (kind, Device::Cpu));
            // Any finite network output: the boundary must not depend on it.
            let out = p.apply(&x, &sigma, |xin, _| xin * 37.5 + 1.25);
            assert!(
                out.equal(&x),
                "f(x, eps) != x for sigma_data {sigma_data}, {kind:?}"
            );
        }
    }
}

#[test]
fn consistency_scalings_tend_to_edm_away_from_the_boundary() {
    let _rng = cm_runtime::lock_global_rng();
    // For t >> eps the CM scalings approach EDM's (Song et al. 2023, App. C).
    let sigma = Tensor::from_slice(&[10.0f64, 80.0]);
    let cm = ConsistencyConfig::default()
        .parameterization()
        .scalings(&sigma);
    let edm = EdmPreconditioning { sigma_data: 0.5 }.scalings(&sigma);
    assert_close(&to_vec(&cm.c_out), &to_vec(&edm.c_out), 1e-3, 0.0, "c_out");
    assert_close(
        &to_vec(&cm.c_skip),
        &to_vec(&edm.c_skip),
        1e-3,
        0.0,
        "c_skip",
    );
    assert_eq!(to_vec(&cm.c_in), to_vec(&edm.c_in));
}

#[test]
fn edm_denoiser_returns_input_plus_scaled_network_output() {
    let _rng = cm_runtime::lock_global_rng();
    let p = EdmPreconditioning { sigma_data: 0.5 };
    let x = Tensor::from_slice(&[1.0f64, -2.0]).reshape([2, 1]);
    let sigma = Tensor::from_slice(&[0.5f64, 2.0]);
    // F = 1 everywhere: D = c_skip x + c_out.
    let d = to_vec(&p.apply(&x, &sigma, |xin, _| xin.ones_like()));
    let by_hand = |x: f64, s: f64| {
        let n = s * s + 0.25;
        0.25 / n * x + s * 0.5 / n.sqrt()
    };
    assert_close(
        &d,
        &[by_hand(1.0, 0.5), by_hand(-2.0, 2.0)],
        1e-14,
        0.0,
        "D(x)",
    );
}

#[test]
fn pseudo_huber_limits() {
    let _rng = cm_runtime::lock_global_rng();
    let dim = 3 * 32 * 32;
    let metric = PseudoHuber::for_dim(dim);
    assert!((metric.c - 0.00054 * 32.0 * 3f64.sqrt()).abs() < 1e-15);
    let base = Tensor::randn([2, 3, 32, 32], (Kind::Double, Device::Cpu));
    let dir = Tensor::randn([2, 3, 32, 32], (Kind::Double, Device::Cpu));
    let norm = to_vec(
        &dir.square()
            .flatten(1, -1)
            .sum_dim_intlist(1, false, Kind::Double)
            .sqrt(),
    );
    // Near 0: d ~ |x - y|^2 / (2c).
    let tiny = 1e-6;
    let near = to_vec(&metric.distance(&(&base + &dir * tiny), &base));
    for (d, n) in near.iter().zip(&norm) {
        let l2sq = (n * tiny).powi(2);
        assert!(
            (d / (l2sq / (2.0 * metric.c)) - 1.0).abs() < 1e-6,
            "near 0: {d} vs {l2sq}"
        );
    }
    // Far away: d ~ |x - y| - c.
    let huge = 1e3;
    let far = to_vec(&metric.distance(&(&base + &dir * huge), &base));
    for (d, n) in far.iter().zip(&norm) {
        assert!(
            (d / (n * huge) - 1.0).abs() < 1e-4,
            "far: {d} vs {}",
            n * huge
        );
    }
    // float32 keeps precision near 0 (no cancellation).
    let near32 = metric.distance(
        &(&base + &dir * tiny).to_kind(Kind::Float),
        &base.to_kind(Kind::Float),
    );
    assert_close(&to_vec(&near32), &near, 1e-2, 0.0, "float32 near 0");
}

#[test]
fn grids_are_monotone_with_exact_end_points() {
    let _rng = cm_runtime::lock_global_rng();
    let grid = KarrasGrid::default();
    let train = grid.training_sigmas(1281).unwrap();
    assert_eq!(train[0], 0.002);
    assert_eq!(*train.last().unwrap(), 80.0);
    assert!(train.windows(2).all(|w| w[0] < w[1]));
    let sample = grid.sampling_sigmas(18).unwrap();
    assert_eq!(sample.len(), 19);
    assert_eq!(sample[0], 80.0);
    assert_eq!(sample[17], 0.002);
    assert_eq!(sample[18], 0.0);
    assert!(sample.windows(2).all(|w| w[0] > w[1]));
    assert!(grid.training_sigmas(1).is_err());
    assert!(grid.sampling_sigmas(0).is_err());
}

#[test]
fn index_samplers_follow_their_probabilities() {
    let _rng = cm_runtime::lock_global_rng();
    let grid = KarrasGrid::default().training_sigmas(11).unwrap();
    let samplers: [(&str, &dyn IndexSampler); 2] = [
        ("uniform", &UniformIndex {}),
        ("lognormal", &LognormalIndex::default()),
    ];
    for (name, sampler) in samplers {
        tch::manual_seed(7);
        let draws = 200_000;
        let idx = sampler.sample(&grid, draws, Device::Cpu);
        assert_eq!(idx.kind(), Kind::Int64);
        let counts = to_vec(&idx.bincount::<Tensor>(None, 10));
        for (n, (c, p)) in counts.iter().zip(sampler.probabilities(&grid)).enumerate() {
            let freq = c / draws as f64;
            // 5 binomial standard deviations.
            let tol = 5.0 * (p * (1.0 - p) / draws as f64).sqrt() + 1e-9;
            assert!((freq - p).abs() <= tol, "{name} pair {n}: {freq} vs {p}");
        }
    }
}

#[test]
fn adjacent_pairs_gather_both_levels() {
    let _rng = cm_runtime::lock_global_rng();
    let grid = KarrasGrid::default().training_sigmas(5).unwrap();
    let g = grid_tensor(&grid, Kind::Double, Device::Cpu);
    let idx = Tensor::from_slice(&[0i64, 3, 2]);
    let (lo, hi) = adjacent_pairs(&g, &idx);
    assert_eq!(to_vec(&lo), vec![grid[0], grid[3], grid[2]]);
    assert_eq!(to_vec(&hi), vec![grid[1], grid[4], grid[3]]);
}

#[test]
fn lognormal_sigma_has_the_configured_log_moments() {
    let _rng = cm_runtime::lock_global_rng();
    tch::manual_seed(3);
    let dist = LognormalSigma::default();
    let s = dist.sample(400_000, Kind::Double, Device::Cpu);
    let logs = s.log();
    let mean = logs.mean(Kind::Double).double_value(&[]);
    let std = logs.std(true).double_value(&[]);
    assert!((mean - dist.p_mean).abs() < 0.01, "mean of ln sigma {mean}");
    assert!((std - dist.p_std).abs() < 0.01, "std of ln sigma {std}");
}

#[test]
fn weightings_by_hand() {
    let _rng = cm_runtime::lock_global_rng();
    let t_n = Tensor::from_slice(&[0.5f64, 2.0]);
    let t_next = Tensor::from_slice(&[0.75f64, 2.5]);
    let w = |k: Weighting| to_vec(&k.bind(0.5).unwrap().weight(&t_n, &t_next));
    assert_eq!(w(Weighting::Uniform), vec![1.0, 1.0]);
    assert_close(
        &w(Weighting::InverseStep),
        &[4.0, 2.0],
        1e-15,
        0.0,
        "inverse step",
    );
    // (t^2 + 0.25) / (0.25 t^2): t = 0.5 -> 8, t = 2 -> 4.25.
    assert_close(&w(Weighting::Edm), &[8.0, 4.25], 1e-15, 0.0, "edm");
    assert!(Weighting::Edm.bind(0.0).is_err());
}
