//! The toy metrics against closed forms: the sliced Wasserstein distance
//! of a shifted copy equals the shift's projected RMS, the energy distance of
//! a set to itself is 0 and grows with a shift, and mode coverage counts.

use cm_eval::{energy_distance, mode_coverage, sliced_wasserstein};
use tch::{Device, Kind, Tensor};

#[test]
fn sliced_wasserstein_of_a_translation_is_its_projected_rms() {
    let _rng = cm_runtime::lock_global_rng();
    tch::manual_seed(0);
    let a = Tensor::randn([500, 2], (Kind::Double, Device::Cpu));
    let shift = Tensor::from_slice(&[0.3f64, -0.4]);
    let b = &a + &shift;
    // A translation by s moves every projection by <s, u>; averaging
    // <s, u>^2 over evenly spaced directions gives |s|^2 / 2.
    let got = sliced_wasserstein(&a, &b, 180).unwrap();
    let want = (0.25f64 / 2.0).sqrt();
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    assert_eq!(sliced_wasserstein(&a, &a, 64).unwrap(), 0.0);
    assert!(sliced_wasserstein(&a, &b.narrow(0, 0, 10), 8).is_none());
}

#[test]
fn energy_distance_is_zero_for_equal_sets_and_grows_with_shift() {
    let _rng = cm_runtime::lock_global_rng();
    tch::manual_seed(1);
    let a = Tensor::randn([300, 2], (Kind::Double, Device::Cpu));
    assert!(energy_distance(&a, &a).abs() < 1e-12);
    let near = energy_distance(&a, &(&a + 0.1));
    let far = energy_distance(&a, &(&a + 1.0));
    assert!(0.0 < near && near < far, "{near} {far}");
    // Far apart point masses: 2|d| - 0 - 0.
    let p = Tensor::zeros([4, 2], (Kind::Double, Device::Cpu));
    let q = Tensor::full([4, 2], 3.0, (Kind::Double, Device::Cpu));
    assert!((energy_distance(&p, &q) - 2.0 * 18f64.sqrt()).abs() < 1e-12);
}

#[test]
fn mode_coverage_counts_modes_with_enough_samples() {
    let _rng = cm_runtime::lock_global_rng();
    let centers = Tensor::from_slice(&[0.0f64, 0.0, 5.0, 5.0, -5.0, 5.0]).reshape([3, 2]);
    let samples =
        Tensor::from_slice(&[0.1f64, 0.0, -0.1, 0.05, 5.0, 5.1, 20.0, 20.0]).reshape([4, 2]);
    let (covered, frac) = mode_coverage(&samples, &centers, 0.5, 1);
    assert_eq!(covered, 2);
    assert!((frac - 0.75).abs() < 1e-12);
    assert_eq!(mode_coverage(&samples, &centers, 0.5, 2).0, 1);
}
