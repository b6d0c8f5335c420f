//! KID, precision/recall and the IS-like score against brute-force
//! reference computations (plain loops over f64 vectors) and closed forms.

use cm_eval::kid::{kid, mmd2_unbiased, KidConfig};
use cm_eval::precision_recall::{knn_radii, precision_recall};
use cm_eval::{degrade, inception_score};
use tch::{Device, Kind, Tensor};

/// Deterministic pseudo-random points (a linear congruential generator), so
/// these tests do not touch libtorch's global generator.
fn points(n: usize, d: usize, seed: u64, shift: f64) -> Vec<Vec<f64>> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    (0..n)
        .map(|_| (0..d).map(|_| next() + shift).collect())
        .collect()
}

fn tensor(p: &[Vec<f64>]) -> Tensor {
    let flat: Vec<f64> = p.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).reshape([p.len() as i64, p[0].len() as i64])
}

fn k3(x: &[f64], y: &[f64]) -> f64 {
    let dot: f64 = x.iter().zip(y).map(|(a, b)| a * b).sum();
    (dot / x.len() as f64 + 1.0).powi(3)
}

/// Gretton et al.'s unbiased MMD^2, written out as loops.
fn mmd2_brute(x: &[Vec<f64>], y: &[Vec<f64>]) -> f64 {
    let (m, n) = (x.len() as f64, y.len() as f64);
    let mut xx = 0.0;
    for (i, a) in x.iter().enumerate() {
        for (j, b) in x.iter().enumerate() {
            if i != j {
                xx += k3(a, b);
            }
        }
    }
    let mut yy = 0.0;
    for (i, a) in y.iter().enumerate() {
        for (j, b) in y.iter().enumerate() {
            if i != j {
                yy += k3(a, b);
            }
        }
    }
    let mut xy = 0.0;
    for a in x {
        for b in y {
            xy += k3(a, b);
        }
    }
    xx / (m * (m - 1.0)) + yy / (n * (n - 1.0)) - 2.0 * xy / (m * n)
}

fn dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Kynkäänniemi et al. Eq. 1-2 as loops: k-th neighbour radii by sorting.
fn coverage_brute(queries: &[Vec<f64>], support: &[Vec<f64>], k: usize) -> f64 {
    let radii: Vec<f64> = support
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut d: Vec<f64> = support
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, b)| dist(a, b))
                .collect();
            d.sort_by(|p, q| p.partial_cmp(q).unwrap());
            d[k - 1]
        })
        .collect();
    let inside = queries
        .iter()
        .filter(|q| support.iter().zip(&radii).any(|(s, r)| dist(q, s) <= *r))
        .count();
    inside as f64 / queries.len() as f64
}

#[test]
fn mmd2_matches_the_brute_force_estimator() {
    let x = points(40, 5, 1, 0.0);
    let y = points(30, 5, 2, 0.3);
    let got = mmd2_unbiased(&tensor(&x), &tensor(&y)).unwrap();
    let want = mmd2_brute(&x, &y);
    assert!(
        (got - want).abs() < 1e-12 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    assert!(want > 0.0);
}

#[test]
fn kid_with_whole_set_subsets_is_the_plain_estimate() {
    let x = points(25, 4, 3, 0.0);
    let y = points(25, 4, 4, 0.5);
    // Subsets as large as the sets: every subset is a permutation of the
    // whole set, and the estimator is permutation invariant.
    let cfg = KidConfig {
        subsets: 5,
        subset_size: 1000,
        seed: 7,
    };
    let k = kid(&tensor(&x), &tensor(&y), &cfg).unwrap();
    let want = mmd2_brute(&x, &y);
    assert!((k.mean - want).abs() < 1e-12 * want.abs().max(1.0));
    assert!(k.std < 1e-12);
    // Smaller subsets: a mean of estimates around the same value.
    let small = kid(
        &tensor(&x),
        &tensor(&y),
        &KidConfig {
            subsets: 50,
            subset_size: 10,
            seed: 7,
        },
    )
    .unwrap();
    assert!(small.std > 0.0);
    assert!(
        (small.mean - want).abs() < 4.0 * small.std,
        "{small:?} vs {want}"
    );
}

#[test]
fn kid_of_samples_from_one_distribution_is_near_zero() {
    let x = points(200, 3, 5, 0.0);
    let y = points(200, 3, 6, 0.0);
    let far = points(200, 3, 6, 1.0);
    let same = kid(&tensor(&x), &tensor(&y), &KidConfig::default()).unwrap();
    let shifted = kid(&tensor(&x), &tensor(&far), &KidConfig::default()).unwrap();
    assert!(same.mean.abs() < 0.1 * shifted.mean, "{same:?} {shifted:?}");
}

#[test]
fn knn_radii_match_sorting() {
    let x = points(30, 3, 8, 0.0);
    let r = knn_radii(&tensor(&x), 3).unwrap();
    for (i, a) in x.iter().enumerate() {
        let mut d: Vec<f64> = x
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, b)| dist(a, b))
            .collect();
        d.sort_by(|p, q| p.partial_cmp(q).unwrap());
        assert!((r.double_value(&[i as i64]) - d[2]).abs() < 1e-12);
    }
}

#[test]
fn precision_and_recall_match_the_brute_force_definition() {
    let real = points(60, 4, 9, 0.0);
    let fake = points(60, 4, 10, 0.4);
    let pr = precision_recall(&tensor(&real), &tensor(&fake), 3).unwrap();
    assert_eq!(pr.precision, coverage_brute(&fake, &real, 3));
    assert_eq!(pr.recall, coverage_brute(&real, &fake, 3));
    assert!(pr.precision > 0.0 && pr.precision < 1.0, "{pr:?}");
}

#[test]
fn identical_sets_have_precision_and_recall_one() {
    let x = tensor(&points(50, 6, 11, 0.0));
    let pr = precision_recall(&x, &x, 3).unwrap();
    assert_eq!((pr.precision, pr.recall), (1.0, 1.0));
}

#[test]
fn disjoint_sets_have_precision_and_recall_zero() {
    let a = tensor(&points(40, 2, 12, 0.0));
    let b = tensor(&points(40, 2, 13, 10.0));
    let pr = precision_recall(&a, &b, 3).unwrap();
    assert_eq!((pr.precision, pr.recall), (0.0, 0.0));
}

#[test]
fn a_collapsed_generator_has_low_recall_and_full_precision() {
    // Half the real points, each generated twice: inside the real manifold
    // (precision 1) but missing half of it.
    let real = points(100, 2, 14, 0.0);
    let fake: Vec<Vec<f64>> = real[..50]
        .iter()
        .chain(real[..50].iter())
        .cloned()
        .collect();
    let pr = precision_recall(&tensor(&real), &tensor(&fake), 3).unwrap();
    assert_eq!(pr.precision, 1.0);
    assert_eq!(pr.recall, coverage_brute(&real, &fake, 3));
    assert!(pr.recall < 0.9);
}

#[test]
fn inception_score_closed_forms() {
    // Uniform predictions: p(y|x) = p(y), KL = 0, IS = 1.
    let uniform = Tensor::zeros([100, 10], (Kind::Float, Device::Cpu));
    let s = inception_score(&uniform, 10).unwrap();
    assert!((s.mean - 1.0).abs() < 1e-12 && s.std < 1e-12);
    // Confident and balanced over K classes: IS = K.
    let labels = Tensor::arange(100, (Kind::Int64, Device::Cpu)).remainder(10);
    let confident = labels.one_hot(10).to_kind(Kind::Double) * 60.0;
    let s = inception_score(&confident, 10).unwrap();
    assert!((s.mean - 10.0).abs() < 1e-9, "{s:?}");
    // Confident but one class only: IS = 1.
    let collapsed = Tensor::zeros([100], (Kind::Int64, Device::Cpu))
        .one_hot(10)
        .to_kind(Kind::Double)
        * 60.0;
    let s = inception_score(&collapsed, 5).unwrap();
    assert!((s.mean - 1.0).abs() < 1e-9);
    // Two equally likely classes with p(y|x) = (0.75, 0.25) or (0.25, 0.75):
    // KL = 0.75 ln 1.5 + 0.25 ln 0.5.
    let p = Tensor::from_slice(&[0.75f64, 0.25, 0.25, 0.75])
        .reshape([2, 2])
        .repeat([10, 1]);
    let s = inception_score(&p.log(), 1).unwrap();
    let want = (0.75f64 * 1.5f64.ln() + 0.25 * 0.5f64.ln()).exp();
    assert!((s.mean - want).abs() < 1e-12);
    assert!(inception_score(&uniform, 0).is_err());
}

#[test]
fn blur_keeps_constants_and_its_kernel_sums_to_one() {
    let c = Tensor::full([2, 1, 12, 12], 0.3, (Kind::Float, Device::Cpu));
    let b = degrade::gaussian_blur(&c, 1.5).unwrap();
    assert_eq!(b.size(), c.size());
    assert!((b - 0.3).abs().max().double_value(&[]) < 1e-6);
    // An impulse spreads into the normalised Gaussian (sum preserved away
    // from the border).
    let impulse = Tensor::zeros([1, 1, 21, 21], (Kind::Float, Device::Cpu));
    let _ = impulse.get(0).get(0).get(10).get(10).fill_(1.0);
    let b = degrade::gaussian_blur(&impulse, 1.0).unwrap();
    assert!((b.sum(Kind::Double).double_value(&[]) - 1.0).abs() < 1e-5);
    let centre = b.double_value(&[0, 0, 10, 10]);
    let side = b.double_value(&[0, 0, 10, 11]);
    assert!((side / centre - (-0.5f64).exp()).abs() < 1e-4);
}
