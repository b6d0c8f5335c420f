//! cm-nets' parallel dropout: the mask's statistics against the Bernoulli
//! distribution it replaces, reproducibility under `tch::manual_seed`, the
//! memory format it keeps, and its gradient.

use cm_nets::layers::{dropout, dropout_mask};
use tch::{Device, Kind, Tensor};

#[test]
fn mask_has_bernoulli_statistics() {
    let _rng = cm_runtime::lock_global_rng();
    for p in [0.1, 0.3, 0.5] {
        let n = 1_000_003; // odd: the last pair is half used
        let mask = dropout_mask(n, p, 42);
        let scale = (1.0 / (1.0 - p)) as f32;
        assert!(mask.iter().all(|&v| v == 0.0 || v == scale));
        let kept = mask.iter().filter(|&&v| v != 0.0).count() as f64;
        // Binomial(n, 1 - p): within 5 standard deviations.
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (kept - n as f64 * (1.0 - p)).abs() < 5.0 * sd,
            "p = {p}: kept {kept} of {n}"
        );
        // Neighbours (same hash word and adjacent words) are independent:
        // P(both kept) = (1 - p)^2 within 5 standard deviations.
        for lag in [1usize, 2, 3, 64] {
            let both = (0..n - lag)
                .filter(|&i| mask[i] != 0.0 && mask[i + lag] != 0.0)
                .count() as f64;
            let q = (1.0 - p) * (1.0 - p);
            let m = (n - lag) as f64;
            let sd = (m * q * (1.0 - q)).sqrt();
            assert!(
                (both - m * q).abs() < 5.0 * sd,
                "p = {p}, lag {lag}: {both} vs {}",
                m * q
            );
        }
        // The mean of the scaled mask is 1: dropout keeps the expectation.
        let mean = mask.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        assert!(
            (mean - 1.0).abs() < 5.0 * sd / n as f64 * scale as f64 + 1e-6,
            "{mean}"
        );
    }
}

#[test]
fn masks_are_reproducible_and_seeded() {
    let _rng = cm_runtime::lock_global_rng();
    let a = dropout_mask(10_000, 0.2, 7);
    assert_eq!(a, dropout_mask(10_000, 0.2, 7));
    let b = dropout_mask(10_000, 0.2, 8);
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    // Two independent masks agree with probability 0.8^2 + 0.2^2 = 0.68.
    assert!((6_300..7_300).contains(&same), "{same}");
    // A prefix of a longer mask is the shorter mask (chunking is invisible).
    let long = dropout_mask(200_000, 0.2, 7);
    assert_eq!(&long[..10_000], &a[..]);
}

#[test]
fn dropout_follows_the_libtorch_generator() {
    let _rng = cm_runtime::lock_global_rng();
    let x = Tensor::ones([4, 8, 5, 5], (Kind::Float, Device::Cpu));
    tch::manual_seed(3);
    let a = dropout(&x, 0.25, true);
    tch::manual_seed(3);
    let b = dropout(&x, 0.25, true);
    assert!(
        a.equal(&b),
        "same seed, same mask (CD's student and target)"
    );
    let c = dropout(&x, 0.25, true);
    assert!(!a.equal(&c), "the next call draws a new mask");
    // Evaluation and p = 0 are the identity.
    assert!(dropout(&x, 0.25, false).equal(&x));
    assert!(dropout(&x, 0.0, true).equal(&x));
}

#[test]
fn dropout_keeps_channels_last_and_its_gradient_is_the_mask() {
    let _rng = cm_runtime::lock_global_rng();
    let x = Tensor::randn([2, 6, 4, 4], (Kind::Float, Device::Cpu));
    let cl = x
        .permute([0, 2, 3, 1])
        .contiguous()
        .permute([0, 3, 1, 2])
        .set_requires_grad(true);
    tch::manual_seed(11);
    let y = dropout(&cl, 0.5, true);
    assert_eq!(
        y.stride(),
        cl.stride(),
        "channels-last in, channels-last out"
    );
    let kept = y.ne(0.0);
    // Kept elements are scaled by 2, dropped ones are 0.
    let expected = (&cl * 2.0).where_self(&kept, &cl.zeros_like());
    assert!(y.allclose(&expected, 1e-6, 1e-6, false));
    y.sum(Kind::Float).backward();
    let g = cl.grad();
    let expected_grad = kept.to_kind(Kind::Float) * 2.0;
    assert!(g.allclose(&expected_grad, 1e-6, 1e-6, false));
    // A non-dense view falls back to libtorch's dropout, with the same law.
    let strided = Tensor::ones([64, 64], (Kind::Float, Device::Cpu)).slice(1, 0, 64, 2);
    let z = dropout(&strided, 0.5, true);
    let frac = z
        .ne(0.0)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!((frac - 0.5).abs() < 0.1, "{frac}");
}
