//! Conditioning and classifier-free guidance: `D_w = D_c + w (D_c - D_u)`
//! (LCM's convention) computed in one batch of `2B` equals the two
//! evaluations written out by hand; `w = 0` is the conditional model and
//! `w = -1` the unconditional one; no labels means no guidance; bad scales
//! are refused.

use std::cell::Cell;

use cm_core::{ClassifierFreeGuidance, Conditioning, Denoiser};
use tch::{Device, Kind, Tensor};

/// `D(x; sigma, c) = x * (1 + c) / (1 + sigma)` with the null class 9:
/// simple enough to compute the guided value independently.
struct ClassScaled {
    calls: Cell<usize>,
    rows: Cell<i64>,
}

impl Denoiser for ClassScaled {
    fn denoise(&self, x: &Tensor, sigma: &Tensor, cond: Conditioning<'_>) -> Tensor {
        self.calls.set(self.calls.get() + 1);
        self.rows.set(x.size()[0]);
        let b = x.size()[0];
        let class = match cond.class {
            Some(c) => c.to_kind(Kind::Double),
            None => Tensor::full([b], 9.0, (Kind::Double, Device::Cpu)),
        };
        x * (class + 1.0).view([b, 1]) / (sigma + 1.0).view([b, 1])
    }
}

fn net() -> ClassScaled {
    ClassScaled {
        calls: Cell::new(0),
        rows: Cell::new(0),
    }
}

#[test]
fn guided_denoiser_matches_the_formula_in_one_batch() {
    let x = Tensor::from_slice(&[1.0f64, -2.0, 0.5, 3.0]).view([2, 2]);
    let sigma = Tensor::from_slice(&[0.5f64, 2.0]);
    let labels = Tensor::from_slice(&[2i64, 4]);
    let inner = net();
    let w = 1.5;
    let guided = ClassifierFreeGuidance::new(&inner, w, 9).unwrap();
    let out = guided.denoise(&x, &sigma, Conditioning::class(&labels));
    assert_eq!((inner.calls.get(), inner.rows.get()), (1, 4));
    // By hand: row i scaled by (c_i + 1)/(1 + s_i) and (9 + 1)/(1 + s_i).
    let (x, s) = ([[1.0, -2.0], [0.5, 3.0]], [0.5, 2.0]);
    let c = [2.0, 4.0];
    for (i, row) in x.iter().enumerate() {
        for (j, &xij) in row.iter().enumerate() {
            let d_c = xij * (c[i] + 1.0) / (1.0 + s[i]);
            let d_u = xij * 10.0 / (1.0 + s[i]);
            let want = d_c + w * (d_c - d_u);
            let got = out.double_value(&[i as i64, j as i64]);
            assert!((got - want).abs() < 1e-12, "[{i},{j}] {got} vs {want}");
        }
    }
}

#[test]
fn zero_scale_and_no_labels_are_the_plain_model() {
    let x = Tensor::from_slice(&[1.0f64, 2.0]).view([1, 2]);
    let sigma = Tensor::from_slice(&[1.0f64]);
    let labels = Tensor::from_slice(&[3i64]);
    let inner = net();
    let plain = inner.denoise(&x, &sigma, Conditioning::class(&labels));
    let guided = ClassifierFreeGuidance::new(&inner, 0.0, 9).unwrap();
    let out = guided.denoise(&x, &sigma, Conditioning::class(&labels));
    assert!(out.equal(&plain));
    let guided = ClassifierFreeGuidance::new(&inner, 3.0, 9).unwrap();
    let unconditional = guided.denoise(&x, &sigma, Conditioning::none());
    assert!(unconditional.equal(&inner.denoise(&x, &sigma, Conditioning::none())));
}

#[test]
fn minus_one_is_the_unconditional_model_and_between_interpolates() {
    let x = Tensor::from_slice(&[1.0f64, -2.0, 0.5, 3.0]).view([2, 2]);
    let sigma = Tensor::from_slice(&[0.5f64, 2.0]);
    let labels = Tensor::from_slice(&[2i64, 4]);
    let inner = net();
    let null = Tensor::from_slice(&[9i64, 9]);
    let d_u = inner.denoise(&x, &sigma, Conditioning::class(&null));
    let d_c = inner.denoise(&x, &sigma, Conditioning::class(&labels));
    let at = |w: f64| {
        ClassifierFreeGuidance::new(&inner, w, 9).unwrap().denoise(
            &x,
            &sigma,
            Conditioning::class(&labels),
        )
    };
    let max_abs = |t: Tensor| f64::try_from(t.abs().max()).unwrap();
    // D_c + (-1)(D_c - D_u) = D_u; D_c - 0.25 (D_c - D_u) = 0.75 D_c + 0.25 D_u.
    assert!(max_abs(at(-1.0) - &d_u) < 1e-12);
    assert!(max_abs(at(-0.25) - (&d_c * 0.75 + &d_u * 0.25)) < 1e-12);
    assert_eq!(cm_core::MIN_GUIDANCE, -1.0);
    // w = -1 and w = 0 take one evaluation of B rows; others one of 2B.
    for (w, calls, rows) in [(-1.0, 1, 2), (0.0, 1, 2), (-0.25, 1, 4), (2.0, 1, 4)] {
        let fresh = net();
        let g = ClassifierFreeGuidance::new(&fresh, w, 9).unwrap();
        let _ = g.denoise(&x, &sigma, Conditioning::class(&labels));
        assert_eq!(
            (fresh.calls.get(), fresh.rows.get()),
            (calls, rows),
            "w = {w}"
        );
        assert_eq!(g.evaluations_per_call(), rows as usize / 2, "w = {w}");
    }
}

#[test]
fn guidance_scale_is_repeated_for_both_halves() {
    struct Echo;
    impl Denoiser for Echo {
        fn denoise(&self, x: &Tensor, _: &Tensor, cond: Conditioning<'_>) -> Tensor {
            let w = cond
                .guidance
                .expect("the guidance scale reaches the network");
            assert_eq!(w.size(), [x.size()[0]]);
            x.zeros_like()
        }
    }
    let x = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
    let labels = Tensor::from_slice(&[0i64, 1, 2]);
    let w = Tensor::full([3], 4.0, (Kind::Float, Device::Cpu));
    let g = ClassifierFreeGuidance::new(&Echo, 2.0, 10).unwrap();
    let _ = g.denoise(
        &x,
        &Tensor::ones([3], (Kind::Float, Device::Cpu)),
        Conditioning::class(&labels).with_guidance(&w),
    );
}

#[test]
fn bad_guidance_settings_name_the_field() {
    let inner = net();
    for (w, null, field) in [
        (-1.5, 9, "guidance_scale"),
        (100.5, 9, "guidance_scale"),
        (f64::NAN, 9, "guidance_scale"),
        (1.0, 0, "null_class"),
    ] {
        let err = ClassifierFreeGuidance::new(&inner, w, null).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn noise_range_checks_its_ends() {
    use cm_core::{ConsistencyConfig, NoiseRange};
    let r = ConsistencyConfig::default().range();
    assert_eq!((r.sigma_min, r.sigma_max), (0.002, 80.0));
    assert!(r.contains(0.002) && r.contains(80.0) && !r.contains(80.5));
    assert!(NoiseRange::new(0.0, 1.0)
        .unwrap_err()
        .to_string()
        .contains("sigma_min"));
    assert!(NoiseRange::new(1.0, 0.5)
        .unwrap_err()
        .to_string()
        .contains("sigma_max"));
    assert!(NoiseRange::new(0.1, f64::INFINITY).is_err());
}

#[test]
fn per_example_scales_match_the_formula_row_by_row() {
    use cm_core::PerExampleGuidance;
    let x = Tensor::from_slice(&[1.0f64, -2.0, 0.5, 3.0, -1.0, 0.25]).view([3, 2]);
    let sigma = Tensor::from_slice(&[0.5f64, 2.0, 7.0]);
    let labels = Tensor::from_slice(&[2i64, 4, 0]);
    let w = Tensor::from_slice(&[0.0f64, 1.5, 6.0]);
    let inner = net();
    let guided = PerExampleGuidance::new(&inner, &w, 9).unwrap();
    let out = guided.denoise(&x, &sigma, Conditioning::class(&labels));
    assert_eq!((inner.calls.get(), inner.rows.get()), (1, 6));
    let (xs, s, c, ws) = (
        [[1.0, -2.0], [0.5, 3.0], [-1.0, 0.25]],
        [0.5, 2.0, 7.0],
        [2.0, 4.0, 0.0],
        [0.0, 1.5, 6.0],
    );
    for (i, row) in xs.iter().enumerate() {
        for (j, &xij) in row.iter().enumerate() {
            let d_c = xij * (c[i] + 1.0) / (1.0 + s[i]);
            let d_u = xij * 10.0 / (1.0 + s[i]);
            let want = d_c + ws[i] * (d_c - d_u);
            let got = out.double_value(&[i as i64, j as i64]);
            assert!((got - want).abs() < 1e-12, "[{i},{j}] {got} vs {want}");
        }
    }
    // A constant w is the scalar wrapper.
    let same = Tensor::full([3], 2.5, (Kind::Double, Device::Cpu));
    let a = PerExampleGuidance::new(&inner, &same, 9).unwrap().denoise(
        &x,
        &sigma,
        Conditioning::class(&labels),
    );
    let b = ClassifierFreeGuidance::new(&inner, 2.5, 9)
        .unwrap()
        .denoise(&x, &sigma, Conditioning::class(&labels));
    assert!(f64::try_from((a - b).abs().max()).unwrap() < 1e-12);
    // Bad scales are refused by name.
    let bad = Tensor::from_slice(&[1.0f64, -1.5]);
    let err = PerExampleGuidance::new(&inner, &bad, 9)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("guidance scales") && err.contains("-1.5"),
        "{err}"
    );
    let nan = Tensor::from_slice(&[1.0f64, f64::NAN]);
    assert!(PerExampleGuidance::new(&inner, &nan, 9).is_err());
    let unconditional = Tensor::from_slice(&[-1.0f64, -1.0, -1.0]);
    assert!(PerExampleGuidance::new(&inner, &unconditional, 9).is_ok());
    assert!(PerExampleGuidance::new(&inner, &w, 0).is_err());
}
