//! 2-D toy distributions: shapes, determinism, held-out streams, moments,
//! and the 8 Gaussians' modes.

use cm_data::{eight_gaussians_mode_std, eight_gaussians_modes, ToyConfig, ToyDataset, ToyKind};

#[test]
fn shapes_and_determinism() {
    for kind in ToyKind::ALL {
        let cfg = ToyConfig {
            distribution: kind,
            n_train: 1000,
            n_test: 300,
            seed: 11,
        };
        let a = ToyDataset::generate(&cfg).unwrap();
        let b = ToyDataset::generate(&cfg).unwrap();
        assert_eq!(a.train.len(), 1000);
        assert_eq!(a.test.len(), 300);
        assert_eq!(a.train.to_tensor().size(), vec![1000, 2]);
        assert_eq!(a.train.points(), b.train.points(), "{kind}");
        assert_eq!(a.test.points(), b.test.points(), "{kind}");
        // Held-out is another stream, not a prefix of train.
        assert_ne!(&a.train.points()[..600], a.test.points(), "{kind}");
        let other = ToyDataset::generate(&ToyConfig { seed: 12, ..cfg }).unwrap();
        assert_ne!(a.train.points(), other.train.points());
        assert_eq!(a.train.labels().is_some(), kind.num_classes() > 0);
        assert!(a.train.points().iter().all(|v| v.is_finite()));
        assert_eq!(kind.name().parse::<ToyKind>().unwrap(), kind);
    }
    assert!("moons".parse::<ToyKind>().is_ok());
    assert!("spiral".parse::<ToyKind>().is_err());
    assert!(ToyDataset::generate(&ToyConfig {
        n_train: 0,
        ..ToyConfig::new(ToyKind::SwissRoll, 0)
    })
    .is_err());
}

#[test]
fn roughly_unit_variance() {
    for kind in ToyKind::ALL {
        let pts = kind.sample(20_000, 5, 0);
        let (mean, std) = pts.moments();
        for d in 0..2 {
            assert!(mean[d].abs() < 0.05, "{kind}: mean {mean:?}");
            assert!((std[d] - 1.0).abs() < 0.05, "{kind}: std {std:?}");
        }
    }
}

#[test]
fn eight_gaussians_sit_on_their_modes() {
    let modes = eight_gaussians_modes();
    let sigma = eight_gaussians_mode_std();
    assert!((sigma - 0.02 / (2.0f64 + 0.0004).sqrt()).abs() < 1e-12);
    for m in &modes {
        let r = (m[0] * m[0] + m[1] * m[1]).sqrt();
        assert!((r - 1.414).abs() < 0.01, "radius {r}");
    }
    assert!(
        modes[0][1].abs() < 1e-6 && modes[0][0] > 0.0,
        "mode 0 at angle 0"
    );
    let pts = ToyKind::EightGaussians.sample(8000, 1, 0);
    let labels = pts.labels().unwrap();
    let mut counts = [0usize; 8];
    let mut sums = [[0f64; 2]; 8];
    for (i, &k) in labels.iter().enumerate() {
        let p = pts.point(i).unwrap();
        let m = modes[k as usize];
        let dist = (((p[0] - m[0]).powi(2) + (p[1] - m[1]).powi(2)) as f64).sqrt();
        assert!(dist < 6.0 * sigma, "point {i} is {dist} from its mode");
        counts[k as usize] += 1;
        sums[k as usize][0] += f64::from(p[0]);
        sums[k as usize][1] += f64::from(p[1]);
    }
    for k in 0..8 {
        assert!(
            (850..1150).contains(&counts[k]),
            "mode {k}: {} points",
            counts[k]
        );
        for d in 0..2 {
            let mean = sums[k][d] / counts[k] as f64;
            assert!(
                (mean - f64::from(modes[k][d])).abs() < 3e-3,
                "mode {k} mean {mean}"
            );
        }
    }
}

#[test]
fn shapes_of_the_other_distributions() {
    // Two moons: labels split about evenly; moon 0 lies mostly above moon 1.
    let pts = ToyKind::TwoMoons.sample(4000, 2, 1);
    let l = pts.labels().unwrap();
    let ones = l.iter().filter(|&&v| v == 1).count();
    assert!((1800..2200).contains(&ones));
    let mean_y = |k: i64| {
        let ys: Vec<f32> = (0..pts.len())
            .filter(|&i| l[i] == k)
            .map(|i| pts.point(i).unwrap()[1])
            .collect();
        ys.iter().sum::<f32>() / ys.len() as f32
    };
    assert!(mean_y(0) > mean_y(1) + 1.0);
    // Checkerboard: every point is on a square of the right colour and inside
    // the board (scaled by sqrt(3)/2).
    let pts = ToyKind::Checkerboard.sample(4000, 3, 0);
    let s = (4.0f64 / 3.0).sqrt();
    for i in 0..pts.len() {
        let p = pts.point(i).unwrap();
        let (x, y) = (f64::from(p[0]) * s, f64::from(p[1]) * s);
        assert!((-2.0..2.0 + 1e-6).contains(&x) && (-2.0 - 1e-6..2.0 + 1e-6).contains(&y));
        let parity = (x.floor() as i64 + y.floor() as i64).rem_euclid(2);
        // Squares where column + row is even (FFJORD's pattern).
        let near_edge = |v: f64| (v - v.round()).abs() < 1e-5;
        assert!(parity == 0 || near_edge(x) || near_edge(y), "({x}, {y})");
    }
}
