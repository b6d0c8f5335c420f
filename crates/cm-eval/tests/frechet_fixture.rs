//! The Fréchet distance against an independent computation: scipy's
//! `sqrtm` on the same statistics, as pytorch-fid computes FID
//! (`fixtures/make_frechet_fixture.py` wrote `fixtures/frechet_fixture.json`).

use cm_eval::frechet::{frechet_distance, trace_sqrt_product, FeatureStats};
use serde_json::Value;
use tch::{Kind, Tensor};

fn vector(v: &Value) -> Tensor {
    let xs: Vec<f64> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect();
    Tensor::from_slice(&xs)
}

fn matrix(v: &Value) -> Tensor {
    let rows: Vec<Tensor> = v.as_array().expect("array").iter().map(vector).collect();
    Tensor::stack(&rows, 0)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/frechet_fixture.json"
    ))
    .expect("fixture present");
    let json: Value = serde_json::from_str(&text).expect("valid JSON");
    json["cases"].as_array().expect("cases").clone()
}

#[test]
fn frechet_distance_matches_scipy_to_1e_6_relative() {
    let cases = cases();
    assert!(cases.len() >= 4);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let a = FeatureStats {
            mu: vector(&c["mu1"]),
            sigma: matrix(&c["sigma1"]),
            n: 2,
        };
        let b = FeatureStats {
            mu: vector(&c["mu2"]),
            sigma: matrix(&c["sigma2"]),
            n: 2,
        };
        let want = c["fid"].as_f64().unwrap();
        let got = frechet_distance(&a, &b).unwrap();
        let rel = (got - want).abs() / want.abs();
        assert!(
            rel < 1e-6,
            "{name}: ours {got}, scipy {want}, relative error {rel:e}"
        );
        let want_tr = c["trace_sqrt"].as_f64().unwrap();
        let got_tr = trace_sqrt_product(&a.sigma, &b.sigma);
        assert!(
            ((got_tr - want_tr) / want_tr).abs() < 1e-9,
            "{name}: tr sqrt(S1 S2) ours {got_tr}, scipy {want_tr}"
        );
    }
}

#[test]
fn statistics_match_numpy_mean_and_cov() {
    let mut checked = 0;
    for c in &cases() {
        if c["a"].is_null() {
            continue;
        }
        for (feats, mu, sigma) in [("a", "mu1", "sigma1"), ("b", "mu2", "sigma2")] {
            // Features as f64 (the stats are computed in f64 whatever comes in).
            let stats = FeatureStats::from_features(&matrix(&c[feats])).unwrap();
            assert!(max_abs_diff(&stats.mu, &vector(&c[mu])) < 1e-12);
            assert!(max_abs_diff(&stats.sigma, &matrix(&c[sigma])) < 1e-12);
            assert_eq!(stats.mu.kind(), Kind::Double);
        }
        // And the whole chain, features to distance.
        let got = cm_eval::frechet_distance_features(&matrix(&c["a"]), &matrix(&c["b"])).unwrap();
        let want = c["fid"].as_f64().unwrap();
        assert!(((got - want) / want).abs() < 1e-6);
        checked += 1;
    }
    assert!(checked >= 2);
}

#[test]
fn identical_statistics_are_at_distance_zero_and_round_trip_through_a_file() {
    let c = &cases()[3];
    let a = FeatureStats {
        mu: vector(&c["mu1"]),
        sigma: matrix(&c["sigma1"]),
        n: 500,
    };
    assert!(frechet_distance(&a, &a).unwrap() < 1e-9);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.safetensors");
    a.save(&path).unwrap();
    let b = FeatureStats::load(&path).unwrap();
    assert_eq!(b.n, 500);
    assert_eq!(max_abs_diff(&a.sigma, &b.sigma), 0.0);
}
