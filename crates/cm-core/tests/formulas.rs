//! cm-core's formulas against values computed independently by
//! `tests/fixtures/make_fixtures.py` (pure Python `math`, from the papers):
//! EDM and CM scalings, Karras grids, CT and iCT schedules, lognormal pair
//! probabilities and the distance metrics.

mod common;

use cm_core::skipping_probabilities;
use cm_core::{
    ConsistencyParameterization, CtAdaptiveSchedule, DiscretizationSchedule, DistanceMetric,
    EdmPreconditioning, IctExponentialSchedule, IndexSampler, KarrasGrid, LognormalIndex,
    NoiseConditioning, Parameterization, PseudoHuber, SquaredL2, UniformIndex, L1,
};
use common::{assert_close, fixtures, floats, to_vec};
use serde_json::Value;
use tch::Tensor;

fn column(rows: &Value, key: &str) -> Vec<f64> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r[key].as_f64().unwrap())
        .collect()
}

fn sigmas() -> Tensor {
    Tensor::from_slice(&floats(&fixtures()["sigmas"]))
}

#[test]
fn edm_preconditioning_matches_reference() {
    let fx = fixtures();
    let edm = EdmPreconditioning { sigma_data: 0.5 };
    let s = edm.scalings(&sigmas());
    let rows = &fx["edm"];
    assert_close(
        &to_vec(&s.c_skip),
        &column(rows, "c_skip"),
        1e-12,
        0.0,
        "c_skip",
    );
    assert_close(
        &to_vec(&s.c_out),
        &column(rows, "c_out"),
        1e-12,
        0.0,
        "c_out",
    );
    assert_close(&to_vec(&s.c_in), &column(rows, "c_in"), 1e-12, 0.0, "c_in");
    assert_close(
        &to_vec(&s.c_noise),
        &column(rows, "c_noise"),
        1e-12,
        0.0,
        "c_noise",
    );
    let w = edm.loss_weight(&sigmas());
    assert_close(
        &to_vec(&w),
        &column(rows, "loss_weight"),
        1e-12,
        0.0,
        "loss_weight",
    );
}

#[test]
fn consistency_scalings_match_reference() {
    let fx = fixtures();
    let rows = &fx["cm"];
    for (conditioning, key) in [
        (NoiseConditioning::Edm, "c_noise_edm"),
        (NoiseConditioning::Adm, "c_noise_adm"),
    ] {
        let p = ConsistencyParameterization {
            sigma_data: 0.5,
            sigma_min: 0.002,
            noise_conditioning: conditioning,
        };
        let s = p.scalings(&sigmas());
        assert_close(
            &to_vec(&s.c_skip),
            &column(rows, "c_skip"),
            1e-12,
            0.0,
            "c_skip",
        );
        // c_out is exactly 0 at t = eps: compare with an absolute floor.
        assert_close(
            &to_vec(&s.c_out),
            &column(rows, "c_out"),
            1e-12,
            1e-15,
            "c_out",
        );
        assert_close(&to_vec(&s.c_in), &column(rows, "c_in"), 1e-12, 0.0, "c_in");
        assert_close(&to_vec(&s.c_noise), &column(rows, key), 1e-12, 0.0, key);
    }
}

#[test]
fn karras_grids_match_reference() {
    let fx = fixtures();
    let grid = KarrasGrid::default();
    for (n, want) in fx["sampling_grid"].as_object().unwrap() {
        let n: usize = n.parse().unwrap();
        let got = grid.sampling_sigmas(n).unwrap();
        assert_close(
            &got,
            &floats(want),
            1e-12,
            0.0,
            &format!("sampling grid n={n}"),
        );
    }
    for (n, want) in fx["training_grid"].as_object().unwrap() {
        let n: usize = n.parse().unwrap();
        let got = grid.training_sigmas(n).unwrap();
        assert_close(
            &got,
            &floats(want),
            1e-12,
            0.0,
            &format!("training grid n={n}"),
        );
    }
}

#[test]
fn ct_adaptive_schedule_matches_reference_code() {
    let fx = fixtures();
    let cases = [
        (
            "ct_cifar10",
            CtAdaptiveSchedule {
                s0: 2,
                s1: 150,
                mu0: 0.9,
                total_steps: 800_000,
            },
        ),
        (
            "ct_imagenet64",
            CtAdaptiveSchedule {
                s0: 2,
                s1: 200,
                mu0: 0.95,
                total_steps: 800_000,
            },
        ),
    ];
    for (key, schedule) in cases {
        for row in fx[key].as_array().unwrap() {
            let k = row["k"].as_u64().unwrap();
            let d = schedule.at(k);
            assert_eq!(d.n as u64, row["n"].as_u64().unwrap(), "{key} N({k})");
            assert_close(
                &[d.mu],
                &[row["mu"].as_f64().unwrap()],
                1e-12,
                0.0,
                &format!("{key} mu({k})"),
            );
        }
    }
    // By hand, from algorithms.md: k = 0 gives N = 2 and mu = 0.9^2 = 0.81.
    let start = CtAdaptiveSchedule::default().at(0);
    assert_eq!(start.n, 2);
    assert!((start.mu - 0.81).abs() < 1e-12);
    // Past the end the schedule stays at s1 + 1.
    assert_eq!(CtAdaptiveSchedule::default().at(5_000_000).n, 151);
}

#[test]
fn ict_curriculum_matches_reference() {
    let fx = fixtures();
    let cases = [
        (
            "ict",
            IctExponentialSchedule {
                s0: 10,
                s1: 1280,
                total_steps: 400_000,
            },
        ),
        (
            "ict_uneven",
            IctExponentialSchedule {
                s0: 10,
                s1: 1000,
                total_steps: 1000,
            },
        ),
    ];
    for (key, schedule) in cases {
        for row in fx[key].as_array().unwrap() {
            let k = row["k"].as_u64().unwrap();
            let d = schedule.at(k);
            assert_eq!(d.n as u64, row["n"].as_u64().unwrap(), "{key} N({k})");
            assert_eq!(d.mu, 0.0, "iCT uses no EMA target");
        }
    }
    // K' = floor(400000 / (log2(128) + 1)) = 50000, by hand.
    assert_eq!(IctExponentialSchedule::default().stage_length(), 50_000);
    assert_eq!(IctExponentialSchedule::default().at(u64::MAX).n, 1281);
}

#[test]
fn lognormal_pair_probabilities_match_erf_formula() {
    let fx = fixtures();
    let sampler = LognormalIndex::default();
    let grid = KarrasGrid::default();
    for (n, want) in fx["lognormal_probs"].as_object().unwrap() {
        let n: usize = n.parse().unwrap();
        let probs = sampler.probabilities(&grid.training_sigmas(n).unwrap());
        assert_eq!(probs.len(), n - 1);
        let total: f64 = probs.iter().sum();
        assert!(
            (total - 1.0).abs() < 1e-12,
            "n={n}: probabilities sum to {total}"
        );
        // The reference uses plain erf differences; in the upper tail they
        // cancel to ~1e-16 absolute, which bounds the agreement there.
        assert_close(
            &probs,
            &floats(want),
            1e-9,
            1e-15,
            &format!("lognormal probs n={n}"),
        );
    }
}

/// The skipping-step pair probabilities against an independent computation:
/// the lognormal density of `ln t` integrated by Simpson's rule from `t_n`
/// to `t_{n+k}` (no erf), normalised over `n` in `0..N-k`; a uniform sampler
/// stays uniform over the `N - k` pairs; `k = 1` is the sampler itself.
#[test]
fn skipping_pair_probabilities_are_the_mass_between_t_n_and_t_n_plus_k() {
    let sampler = LognormalIndex {
        p_mean: -0.4,
        p_std: 2.0,
    };
    let density = |u: f64| {
        let z = (u - sampler.p_mean) / sampler.p_std;
        (-0.5 * z * z).exp() / (sampler.p_std * (2.0 * std::f64::consts::PI).sqrt())
    };
    let simpson = |a: f64, b: f64| {
        let m = 2000;
        let h = (b - a) / m as f64;
        let inner: f64 = (1..m)
            .map(|i| density(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
            .sum();
        (density(a) + density(b) + inner) * h / 3.0
    };
    let grid = KarrasGrid::default().training_sigmas(41).unwrap();
    for k in [1usize, 2, 3, 7] {
        let got = skipping_probabilities(&sampler, &grid, k);
        assert_eq!(got.len(), grid.len() - k, "k = {k}");
        let mass: Vec<f64> = (0..grid.len() - k)
            .map(|n| simpson(grid[n].ln(), grid[n + k].ln()))
            .collect();
        let total: f64 = mass.iter().sum();
        let want: Vec<f64> = mass.iter().map(|m| m / total).collect();
        assert_close(&got, &want, 1e-9, 1e-12, &format!("skip k = {k}"));
        let uniform = skipping_probabilities(&UniformIndex {}, &grid, k);
        let n_pairs = (grid.len() - k) as f64;
        assert_close(
            &uniform,
            &vec![1.0 / n_pairs; grid.len() - k],
            1e-12,
            1e-15,
            &format!("uniform, skip k = {k}"),
        );
    }
    assert_eq!(
        skipping_probabilities(&sampler, &grid, 1),
        sampler.probabilities(&grid)
    );
}

#[test]
fn distance_metrics_match_reference() {
    let fx = fixtures();
    for (name, case) in fx["distances"].as_object().unwrap() {
        let dim = case["dim"].as_u64().unwrap() as usize;
        let scale = case["scale"].as_f64().unwrap();
        // Rebuild the same deterministic batch as make_fixtures.py.
        let (b, d) = (3usize, dim);
        let mut x = Vec::with_capacity(b * d);
        let mut y = Vec::with_capacity(b * d);
        for j in 0..b {
            for i in 0..d {
                let xv = (0.37 * i as f64 + 0.1 * j as f64).sin();
                x.push(xv);
                y.push(xv + scale * (0.11 * i as f64 * (j + 1) as f64 + 0.3).cos());
            }
        }
        let x = Tensor::from_slice(&x).reshape([b as i64, 3, 2, 2]);
        let y = Tensor::from_slice(&y).reshape([b as i64, 3, 2, 2]);
        let huber = PseudoHuber::for_dim(dim);
        assert!((huber.c - case["c"].as_f64().unwrap()).abs() < 1e-15);
        let metrics: [(&str, &dyn DistanceMetric); 3] =
            [("l2", &SquaredL2), ("l1", &L1), ("pseudo_huber", &huber)];
        for (key, metric) in metrics {
            let got = to_vec(&metric.distance(&x, &y));
            // The reference's textbook pseudo-Huber cancels in the "near"
            // case; agreement is bounded by ~1e-16 / c there.
            assert_close(
                &got,
                &floats(&case[key]),
                1e-9,
                1e-14,
                &format!("{key} ({name})"),
            );
        }
    }
}

#[test]
fn lcm_times_match_diffusers_lcm_scheduler() {
    // diffusers' LCMScheduler, 1000 training steps, 50 original steps
    // (k = 20): lcm_origin_timesteps = 19, 39, ..., 999; 4 and 2 inference
    // steps give [999, 759, 499, 259] and [999, 499] (its docs' values).
    let grid: Vec<f64> = (0..1000).map(f64::from).collect();
    assert_eq!(
        cm_core::lcm_times(&grid, 20, 4).unwrap(),
        vec![999.0, 759.0, 499.0, 259.0]
    );
    assert_eq!(
        cm_core::lcm_times(&grid, 20, 2).unwrap(),
        vec![999.0, 499.0]
    );
    assert_eq!(cm_core::lcm_times(&grid, 20, 1).unwrap(), vec![999.0]);
    // 3 steps: floor(linspace(0, 50, 3, endpoint=False)) = [0, 16, 33].
    assert_eq!(
        cm_core::lcm_times(&grid, 20, 3).unwrap(),
        vec![999.0, 999.0 - 16.0 * 20.0, 999.0 - 33.0 * 20.0]
    );
    // sigma_min (index 0) is never a time: with N = 29 and k = 4 the
    // skipping grid is 28, 24, ..., 4, so 8 steps end at index 4.
    let grid: Vec<f64> = (0..29).map(f64::from).collect();
    let eight = cm_core::lcm_times(&grid, 4, 7).unwrap();
    assert_eq!(eight, vec![28.0, 24.0, 20.0, 16.0, 12.0, 8.0, 4.0]);
    assert!(cm_core::lcm_times(&grid, 4, 8).is_err());
    // Bounds are refused by name.
    assert!(cm_core::lcm_times(&grid, 0, 2)
        .unwrap_err()
        .to_string()
        .contains("skip"));
    assert!(cm_core::lcm_times(&grid, 20, 51)
        .unwrap_err()
        .to_string()
        .contains("steps"));
}

#[test]
fn skipping_pairs_are_k_grid_points_apart() {
    // On the CM training grid with N = 12, pairs k = 3 apart are
    // (t_n, t_{n+3}) for n in 0..9, computed here from the grid formula.
    let grid = cm_core::ConsistencyConfig::default()
        .grid()
        .training_sigmas(12)
        .unwrap();
    let t = cm_core::grid_tensor(&grid, tch::Kind::Double, tch::Device::Cpu);
    let index = tch::Tensor::from_slice(&[0i64, 4, 8, 5]);
    let (a, b) = cm_core::skipping_pairs(&t, &index, 3);
    let a = Vec::<f64>::try_from(a).unwrap();
    let b = Vec::<f64>::try_from(b).unwrap();
    for (i, &n) in [0usize, 4, 8, 5].iter().enumerate() {
        assert_eq!((a[i], b[i]), (grid[n], grid[n + 3]));
        assert!(b[i] > a[i]);
    }
    // k = 1 is CD's adjacent pairs.
    let (c, d) = cm_core::adjacent_pairs(&t, &index);
    let (e, f) = cm_core::skipping_pairs(&t, &index, 1);
    assert!(c.equal(&e) && d.equal(&f));
}
