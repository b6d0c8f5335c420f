//! Zero-shot editing (Algorithm 4): the transforms are orthogonal and mean
//! what they say (luma row, patch means), the edit keeps the known part of
//! the reference exactly and changes the rest, matches a hand-written run of
//! the algorithm, calls the network once per step, reproduces under a seed,
//! and rejects bad input with errors naming the field.

use cm_core::{Conditioning, Denoiser, NoiseRange};
use std::cell::{Cell, RefCell};

use cm_sample::{
    box_mask, denoise, half_mask, interpolate, mask_from_image, mask_from_values, sdedit, slerp,
    stroke_mask, zero_shot_edit, EditTask, Identity, LumaChroma, PatchBasis, SeededNoise, Side,
    Transform,
};
use tch::{Device, Kind, Tensor};

const T: f64 = 80.0;
const EPS: f64 = 0.002;
/// The noise range `[EPS, T]`.
const RANGE: NoiseRange = NoiseRange {
    sigma_min: EPS,
    sigma_max: T,
};

/// A deterministic nonlinear stand-in for a consistency function,
/// `f(x, t) = tanh(0.3 x + 0.01 t)`: it moves every pixel, so a missing
/// projection would show. Counts its calls and records the levels.
#[derive(Default)]
struct Tanh {
    calls: Cell<usize>,
    levels: RefCell<Vec<f64>>,
}

impl Denoiser for Tanh {
    fn denoise(&self, x: &Tensor, sigma: &Tensor, _cond: Conditioning<'_>) -> Tensor {
        self.calls.set(self.calls.get() + 1);
        self.levels.borrow_mut().push(sigma.double_value(&[0]));
        assert_eq!(sigma.size(), vec![x.size()[0]], "sigma must be [B]");
        (x * 0.3 + sigma.reshape([-1, 1, 1, 1]) * 0.01).tanh()
    }
}

/// Deterministic f64 images in (-1, 1), independent of the global generator
/// (tests run in parallel).
fn images(seed: u64, shape: [i64; 4]) -> Tensor {
    SeededNoise::for_range(seed, 0, shape[0] as usize)
        .draw(&shape[1..], Kind::Double, Device::Cpu)
        .tanh()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The matrix of `t` on inputs of `shape` (batch 1), found by applying
/// `forward` to every basis vector: row `j` is `A e_j`, i.e. the matrix
/// returned is `A^T`, `[n_in, n_out]`.
fn transposed_matrix(t: &dyn Transform, shape: [i64; 4]) -> Tensor {
    let n: i64 = shape.iter().product();
    let basis =
        Tensor::eye(n, (Kind::Double, Device::Cpu)).reshape([n, shape[1], shape[2], shape[3]]);
    t.forward(&basis).reshape([n, -1])
}

fn assert_orthogonal(t: &dyn Transform, shape: [i64; 4]) {
    let at = transposed_matrix(t, shape);
    let n = at.size()[0];
    assert_eq!(at.size(), vec![n, n], "{}: not square", t.name());
    let eye = Tensor::eye(n, (Kind::Double, Device::Cpu));
    // at = A^T, so A^T A = at at^T.
    let err = max_diff(&at.matmul(&at.tr()), &eye);
    assert!(err < 1e-12, "{} {shape:?}: |A^T A - I| = {err}", t.name());
    // The inverse is the transpose.
    let out = t.output_shape(&shape).unwrap();
    let coeff_basis =
        Tensor::eye(n, (Kind::Double, Device::Cpu)).reshape([n, out[1], out[2], out[3]]);
    let inv = t.inverse(&coeff_basis).reshape([n, -1]);
    let err = max_diff(&inv, &at.tr());
    assert!(err < 1e-12, "{}: inverse is not A^T ({err})", t.name());
    // And undoes forward on a batch.
    let mut batch = shape;
    batch[0] = 3;
    let x = images(5, batch);
    let err = max_diff(&t.inverse(&t.forward(&x)), &x);
    assert!(
        err < 1e-12,
        "{}: inverse(forward(x)) off by {err}",
        t.name()
    );
    // The input's kind is kept.
    let xf = x.to_kind(Kind::Float);
    assert_eq!(t.forward(&xf).kind(), Kind::Float);
    assert_eq!(t.inverse(&t.forward(&xf)).kind(), Kind::Float);
}

#[test]
fn transforms_are_orthogonal() {
    assert_orthogonal(&Identity, [1, 3, 4, 4]);
    assert_orthogonal(&LumaChroma, [1, 3, 4, 4]);
    for factor in [2, 4] {
        for channels in [1, 3] {
            assert_orthogonal(&PatchBasis::new(factor).unwrap(), [1, channels, 8, 8]);
        }
    }
}

#[test]
fn luma_chroma_row_zero_is_the_luma_direction() {
    let l = [0.299f64, 0.587, 0.114];
    let norm = l.iter().map(|v| v * v).sum::<f64>().sqrt();
    let want: Vec<f64> = l.iter().map(|v| v / norm).collect();
    // From the matrix itself ...
    let q = LumaChroma::matrix();
    for k in 0..3 {
        assert!((q[0][k] - want[k]).abs() < 1e-15, "{:?} vs {want:?}", q[0]);
    }
    // ... and from what forward does: A = at^T, row 0 of A = column 0 of at.
    let at = transposed_matrix(&LumaChroma, [1, 3, 1, 1]);
    let row0: Vec<f64> = Vec::try_from(at.select(1, 0)).unwrap();
    for k in 0..3 {
        assert!((row0[k] - want[k]).abs() < 1e-15, "{row0:?} vs {want:?}");
    }
    // On a 3x4x4 image, channel 0 of the output is the luma dot product.
    let x = images(9, [2, 3, 4, 4]);
    let luma = x.select(1, 0) * want[0] + x.select(1, 1) * want[1] + x.select(1, 2) * want[2];
    assert!(max_diff(&LumaChroma.forward(&x).select(1, 0), &luma) < 1e-14);
    // Deterministic: the same matrix every time.
    assert_eq!(LumaChroma::matrix(), q);
}

#[test]
fn patch_basis_coefficient_zero_is_the_scaled_patch_mean() {
    for factor in [2i64, 4] {
        let basis = PatchBasis::new(factor).unwrap();
        let x = images(13, [2, 3, 8, 8]);
        let y = basis.forward(&x);
        let ff = factor * factor;
        assert_eq!(y.size(), vec![2, 3 * ff, 8 / factor, 8 / factor]);
        let means = x.avg_pool2d(
            [factor, factor],
            [factor, factor],
            [0, 0],
            false,
            true,
            None,
        );
        for c in 0..3 {
            let coeff0 = y.select(1, c * ff);
            let err = max_diff(&coeff0, &(means.select(1, c) * factor as f64));
            assert!(err < 1e-13, "factor {factor} channel {c}: {err}");
        }
        // A constant image has nothing but the mean coefficients.
        let flat = Tensor::full([1, 3, 8, 8], 0.25, (Kind::Double, Device::Cpu));
        let coeffs = basis.forward(&flat);
        for k in 0..3 * ff {
            let expect = if k % ff == 0 {
                0.25 * factor as f64
            } else {
                0.0
            };
            let got = coeffs.select(1, k);
            assert!(
                max_diff(&got, &got.full_like(expect)) < 1e-14,
                "coefficient {k}"
            );
        }
    }
}

/// Runs `task` on `y` with the tanh denoiser and two refinement steps.
fn edit(task: &EditTask, y: &Tensor, seed: u64) -> Tensor {
    let f = Tanh::default();
    let mut noise = SeededNoise::for_range(seed, 0, y.size()[0] as usize);
    let out = task
        .run(&f, y, RANGE, &[5.0, 0.5], Conditioning::none(), &mut noise)
        .unwrap();
    assert_eq!(out.nfe, 3);
    assert_eq!(f.calls.get(), 3);
    assert_eq!(out.x.size(), y.size());
    assert_eq!(out.x.kind(), Kind::Double);
    out.x
}

#[test]
fn inpainting_keeps_known_pixels_exactly() {
    let y = images(21, [2, 3, 8, 8]);
    for mask in [
        box_mask(8, 8, 2, 3, 4, 3).unwrap(),
        half_mask(8, 8, Side::Right).unwrap(),
        stroke_mask(8, 8, 2, 2.0, 4).unwrap(),
    ] {
        let x = edit(
            &EditTask::Inpaint {
                mask: mask.shallow_clone(),
            },
            &y,
            1,
        );
        let known = mask.eq(0.0).expand_as(&y);
        let generate = mask.eq(1.0).expand_as(&y);
        assert!(
            x.masked_select(&known).equal(&y.masked_select(&known)),
            "known pixels changed"
        );
        let diff = max_diff(&x.masked_select(&generate), &y.masked_select(&generate));
        assert!(diff > 1e-3, "generated pixels equal the reference ({diff})");
    }
    // A per-sample, per-channel mask works too.
    let mask = Tensor::cat(
        &[
            box_mask(8, 8, 0, 0, 8, 4)
                .unwrap()
                .expand([1, 3, 8, 8], false),
            half_mask(8, 8, Side::Top)
                .unwrap()
                .expand([1, 3, 8, 8], false),
        ],
        0,
    );
    let x = edit(
        &EditTask::Inpaint {
            mask: mask.shallow_clone(),
        },
        &y,
        2,
    );
    let known = mask.eq(0.0);
    assert!(x.masked_select(&known).equal(&y.masked_select(&known)));
}

#[test]
fn zero_shot_edit_matches_a_hand_written_algorithm_4() {
    // Inpainting, A = I: every step is x <- where(mask, f(x + s z, tau), y),
    // starting from y with the masked part zeroed.
    let y = images(31, [2, 3, 4, 4]);
    let mask = box_mask(4, 4, 1, 0, 2, 4).unwrap().to_kind(Kind::Double);
    let taus = [3.0, 0.7];
    let f = Tanh::default();
    let mut noise = SeededNoise::for_range(77, 0, 2);
    let out = zero_shot_edit(
        &f,
        &y,
        &Identity,
        &mask,
        RANGE,
        &taus,
        Conditioning::none(),
        &mut noise,
    )
    .unwrap();
    assert_eq!(*f.levels.borrow(), vec![T, 3.0, 0.7]);

    let g = |x: &Tensor, t: f64| (x * 0.3 + 0.01 * t).tanh();
    let m = mask.gt(0.5);
    let mut z = SeededNoise::for_range(77, 0, 2);
    let mut draw = || z.draw(&[3, 4, 4], Kind::Double, Device::Cpu);
    let start = &y * (1.0 - &mask);
    let mut x = g(&(&start + draw() * T), T).where_self(&m, &y);
    for tau in taus {
        let s = (tau * tau - EPS * EPS).sqrt();
        x = g(&(&x + draw() * s), tau).where_self(&m, &y);
    }
    let err = max_diff(&out.x, &x);
    assert!(err < 1e-12, "differs from the hand-written run by {err}");
}

#[test]
fn colorization_keeps_luma() {
    // A grayscale reference: the same value in all three channels.
    let gray = images(41, [2, 1, 8, 8]);
    let y = gray.expand([2, 3, 8, 8], false).contiguous();
    let x = edit(&EditTask::Colorize, &y, 3);
    let (ax, ay) = (LumaChroma.forward(&x), LumaChroma.forward(&y));
    let err = max_diff(&ax.select(1, 0), &ay.select(1, 0));
    assert!(err < 1e-12, "luma changed by {err}");
    let chroma = max_diff(&ax.narrow(1, 1, 2), &ay.narrow(1, 1, 2));
    assert!(chroma > 1e-3, "chroma not generated ({chroma})");
}

#[test]
fn super_resolution_keeps_patch_means() {
    let y = images(51, [2, 3, 8, 8]);
    for factor in [2i64, 4] {
        let x = edit(&EditTask::SuperResolution { factor }, &y, 4);
        let pool = |t: &Tensor| {
            t.avg_pool2d(
                [factor, factor],
                [factor, factor],
                [0, 0],
                false,
                true,
                None,
            )
        };
        let err = max_diff(&pool(&x), &pool(&y));
        assert!(err < 1e-12, "factor {factor}: patch means changed by {err}");
        let detail = max_diff(&x, &y);
        assert!(
            detail > 1e-3,
            "factor {factor}: nothing generated ({detail})"
        );
    }
}

#[test]
fn each_edit_calls_the_network_once_per_step() {
    let y = images(61, [2, 3, 8, 8]);
    let mask = box_mask(8, 8, 0, 0, 4, 4).unwrap();
    for taus in [vec![], vec![2.0], vec![10.0, 2.0, 0.1]] {
        let f = Tanh::default();
        let mut noise = SeededNoise::for_range(1, 0, 2);
        let out = zero_shot_edit(
            &f,
            &y,
            &Identity,
            &mask,
            RANGE,
            &taus,
            Conditioning::none(),
            &mut noise,
        )
        .unwrap();
        assert_eq!(f.calls.get(), 1 + taus.len());
        assert_eq!(out.nfe, 1 + taus.len());

        let f = Tanh::default();
        let mut noise = SeededNoise::for_range(1, 0, 2);
        let out = sdedit(&f, &y, 20.0, &taus, RANGE, Conditioning::none(), &mut noise).unwrap();
        assert_eq!(f.calls.get(), 1 + taus.len());
        assert_eq!(out.nfe, 1 + taus.len());
        let mut want = vec![20.0];
        want.extend(&taus);
        assert_eq!(*f.levels.borrow(), want);
    }

    let f = Tanh::default();
    let out = denoise(&f, &y, 0.5, RANGE, Conditioning::none()).unwrap();
    assert_eq!((f.calls.get(), out.nfe), (1, 1));
    assert_eq!(*f.levels.borrow(), vec![0.5]);
    assert!(out.x.equal(&(&y * 0.3 + 0.005).tanh()));

    // Interpolation sends all its latents through as one batch.
    let f = Tanh::default();
    let z = images(62, [2, 3, 8, 8]);
    let out = interpolate(
        &f,
        &z.get(0),
        &z.narrow(0, 1, 1),
        5,
        T,
        Conditioning::none(),
    )
    .unwrap();
    assert_eq!((f.calls.get(), out.nfe), (1, 1));
    assert_eq!(out.x.size(), vec![5, 3, 8, 8]);
    let g = |x: Tensor| (x * (0.3 * T) + 0.01 * T).tanh();
    assert!(max_diff(&out.x.get(0), &g(z.get(0))) < 1e-12);
    assert!(max_diff(&out.x.get(4), &g(z.get(1))) < 1e-12);
    assert!(max_diff(&out.x.get(2), &out.x.get(0)) > 1e-3);
}

#[test]
fn edits_reproduce_under_a_seed() {
    let y = images(71, [3, 3, 8, 8]);
    let tasks = [
        EditTask::Inpaint {
            mask: half_mask(8, 8, Side::Left).unwrap(),
        },
        EditTask::Colorize,
        EditTask::SuperResolution { factor: 2 },
    ];
    for task in &tasks {
        let a = edit(task, &y, 7);
        let b = edit(task, &y, 7);
        assert!(a.equal(&b), "{}: not reproducible", task.name());
        let c = edit(task, &y, 8);
        assert!(max_diff(&a, &c) > 1e-6, "{}: seed ignored", task.name());
        // Per-sample seeds: image 2 alone gives the same result as in the batch.
        let f = Tanh::default();
        let mut one = SeededNoise::for_range(7, 2, 1);
        let alone = task
            .run(
                &f,
                &y.narrow(0, 2, 1),
                RANGE,
                &[5.0, 0.5],
                Conditioning::none(),
                &mut one,
            )
            .unwrap();
        assert!(
            max_diff(&alone.x, &a.narrow(0, 2, 1)) < 1e-12,
            "{}: depends on the batch",
            task.name()
        );
    }
    let run = |seed| {
        let mut noise = SeededNoise::for_range(seed, 0, 3);
        sdedit(
            &Tanh::default(),
            &y,
            10.0,
            &[1.0],
            RANGE,
            Conditioning::none(),
            &mut noise,
        )
        .unwrap()
        .x
    };
    assert!(run(5).equal(&run(5)));
    assert!(!run(5).equal(&run(6)));
}

#[test]
fn slerp_keeps_endpoints_and_norm() {
    let z0 = images(81, [3, 2, 4, 4]) * 2.0;
    let z1 = images(82, [3, 2, 4, 4]);
    assert!(slerp(&z0, &z1, 0.0).unwrap().equal(&z0));
    assert!(slerp(&z0, &z1, 1.0).unwrap().equal(&z1));
    assert!(max_diff(&slerp(&z0, &z1, 1e-9).unwrap(), &z0) < 1e-8);

    // Orthogonal rows of equal norm: the midpoint keeps the norm and is
    // (z0 + z1) / sqrt(2).
    let a = z0.reshape([3, -1]);
    let b = z1.reshape([3, -1]);
    let proj = (&a * &b).sum_dim_intlist(1, true, Kind::Double)
        / a.square().sum_dim_intlist(1, true, Kind::Double);
    let b = &b - &a * proj;
    let norm = |t: &Tensor| t.square().sum_dim_intlist(1, true, Kind::Double).sqrt();
    let b = &b * norm(&a) / norm(&b);
    let mid = slerp(&a, &b, 0.5).unwrap();
    assert!(max_diff(&norm(&mid), &norm(&a)) < 1e-12);
    assert!(max_diff(&mid, &((&a + &b) / 2f64.sqrt())) < 1e-12);
    // A quarter of the way: angle pi/8 from a.
    let q = slerp(&a, &b, 0.25).unwrap();
    let cos = (&q * &a).sum_dim_intlist(1, true, Kind::Double) / (norm(&q) * norm(&a));
    assert!(max_diff(&cos, &cos.full_like((std::f64::consts::PI / 8.0).cos())) < 1e-12);

    // Parallel rows fall back to linear interpolation (no NaN).
    let lin = slerp(&a, &(&a * 3.0), 0.5).unwrap();
    assert!(max_diff(&lin, &(&a * 2.0)) < 1e-9);
    // Zero rows too.
    let zero = slerp(&a.zeros_like(), &a, 0.5).unwrap();
    assert!(max_diff(&zero, &(&a * 0.5)) < 1e-12);

    let err = slerp(&z0, &z1.narrow(0, 0, 2), 0.5).unwrap_err();
    assert!(err.to_string().contains("z1"), "{err}");
}

#[test]
fn masks_are_what_they_say() {
    let b = box_mask(6, 5, 1, 2, 3, 2).unwrap();
    assert_eq!(b.size(), vec![1, 1, 6, 5]);
    assert_eq!(b.kind(), Kind::Float);
    assert_eq!(b.sum(Kind::Double).double_value(&[]), 6.0);
    assert_eq!(b.double_value(&[0, 0, 1, 2]), 1.0);
    assert_eq!(b.double_value(&[0, 0, 3, 3]), 1.0);
    assert_eq!(b.double_value(&[0, 0, 4, 3]), 0.0);
    assert_eq!(b.double_value(&[0, 0, 1, 1]), 0.0);

    let cols = |m: &Tensor| -> Vec<f64> {
        Vec::try_from(m.sum_dim_intlist(2, false, Kind::Double).flatten(0, -1)).unwrap()
    };
    let rows = |m: &Tensor| -> Vec<f64> {
        Vec::try_from(m.sum_dim_intlist(3, false, Kind::Double).flatten(0, -1)).unwrap()
    };
    assert_eq!(
        cols(&half_mask(4, 5, Side::Left).unwrap()),
        vec![4.0, 4.0, 0.0, 0.0, 0.0]
    );
    assert_eq!(
        cols(&half_mask(4, 5, Side::Right).unwrap()),
        vec![0.0, 0.0, 0.0, 4.0, 4.0]
    );
    assert_eq!(
        rows(&half_mask(4, 5, Side::Top).unwrap()),
        vec![5.0, 5.0, 0.0, 0.0]
    );
    assert_eq!(
        rows(&half_mask(4, 5, Side::Bottom).unwrap()),
        vec![0.0, 0.0, 5.0, 5.0]
    );

    let s = stroke_mask(32, 32, 3, 3.0, 11).unwrap();
    assert_eq!(s.size(), vec![1, 1, 32, 32]);
    assert!(s.eq(0.0).logical_or(&s.eq(1.0)).all().int64_value(&[]) == 1);
    let area = s.sum(Kind::Double).double_value(&[]);
    assert!(area > 20.0 && area < 1024.0, "stroke area {area}");
    assert!(s.equal(&stroke_mask(32, 32, 3, 3.0, 11).unwrap()));
    assert!(!s.equal(&stroke_mask(32, 32, 3, 3.0, 12).unwrap()));
    assert_eq!(
        stroke_mask(8, 8, 0, 3.0, 1)
            .unwrap()
            .sum(Kind::Double)
            .double_value(&[]),
        0.0
    );

    let v = mask_from_values(&[0, 127, 128, 255, 10, 200], 2, 3).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(v.flatten(0, -1)).unwrap(),
        vec![0.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    );
    let img = Tensor::from_slice(&[-1.0f32, 1.0, 0.5, -0.2, 0.0, 0.9]).reshape([1, 2, 3]);
    let m = mask_from_image(&img).unwrap();
    assert_eq!(m.size(), vec![1, 1, 2, 3]);
    assert_eq!(
        Vec::<f32>::try_from(m.flatten(0, -1)).unwrap(),
        vec![0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    );
    // Channel mean decides for colour masks.
    let rgb = Tensor::from_slice(&[1.0f64, -1.0, 1.0, -1.0, 1.0, -1.0]).reshape([3, 1, 2]);
    let m = mask_from_image(&rgb).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(m.flatten(0, -1)).unwrap(),
        vec![1.0, 0.0]
    );
}

#[test]
fn bad_input_is_an_error_naming_the_field() {
    let y = images(91, [2, 3, 8, 8]);
    let f = Tanh::default();
    fn err_of<T>(r: cm_core::Result<T>) -> String {
        match r {
            Ok(_) => panic!("accepted bad input"),
            Err(e) => e.to_string(),
        }
    }
    let noise = || SeededNoise::for_range(1, 0, 2);

    // Patch side 3 does not divide 8; 1 is no patch at all.
    let err = EditTask::SuperResolution { factor: 3 }
        .plan(&[2, 3, 8, 8])
        .unwrap_err()
        .to_string();
    assert!(err.contains("factor"), "{err}");
    assert!(PatchBasis { factor: 3 }
        .output_shape(&[1, 1, 8, 8])
        .is_err());
    assert!(PatchBasis::new(1)
        .unwrap_err()
        .to_string()
        .contains("factor"));
    let err = err_of(EditTask::SuperResolution { factor: 3 }.run(
        &f,
        &y,
        RANGE,
        &[],
        Conditioning::none(),
        &mut noise(),
    ));
    assert!(err.contains("factor"), "{err}");

    // Colorization needs RGB.
    let gray = images(92, [2, 1, 8, 8]);
    let err =
        err_of(EditTask::Colorize.run(&f, &gray, RANGE, &[], Conditioning::none(), &mut noise()));
    assert!(err.contains("channels"), "{err}");

    // Masks must fit the image and be 0/1.
    for (mask, what) in [
        (box_mask(4, 4, 0, 0, 2, 2).unwrap(), "size"),
        (
            Tensor::ones([3, 1, 8, 8], (Kind::Float, Device::Cpu)),
            "batch",
        ),
        (
            Tensor::ones([1, 2, 8, 8], (Kind::Float, Device::Cpu)),
            "channels",
        ),
        (Tensor::ones([8, 8], (Kind::Float, Device::Cpu)), "rank"),
        (
            Tensor::full([1, 1, 8, 8], 0.5, (Kind::Float, Device::Cpu)),
            "values",
        ),
    ] {
        let err = EditTask::Inpaint {
            mask: mask.shallow_clone(),
        }
        .plan(&[2, 3, 8, 8])
        .unwrap_err()
        .to_string();
        assert!(err.contains("mask"), "{what}: {err}");
        let err = err_of(zero_shot_edit(
            &f,
            &y,
            &Identity,
            &mask,
            RANGE,
            &[],
            Conditioning::none(),
            &mut noise(),
        ));
        assert!(err.contains("omega"), "{what}: {err}");
    }
    // Omega in the wrong space for the transform (pixel-shaped, but the
    // patch basis' output is [B, 12, 4, 4]).
    let pixel_mask = box_mask(8, 8, 0, 0, 4, 4).unwrap();
    let err = err_of(zero_shot_edit(
        &f,
        &y,
        &PatchBasis { factor: 2 },
        &pixel_mask,
        RANGE,
        &[],
        Conditioning::none(),
        &mut noise(),
    ));
    assert!(err.contains("omega"), "{err}");

    // Noise levels and times.
    let err = err_of(denoise(&f, &y, 100.0, RANGE, Conditioning::none()));
    assert!(err.contains("sigma"), "{err}");
    let err = err_of(denoise(&f, &y, 0.001, RANGE, Conditioning::none()));
    assert!(err.contains("sigma"), "{err}");
    let err = err_of(zero_shot_edit(
        &f,
        &y,
        &Identity,
        &pixel_mask,
        RANGE,
        &[1.0, 2.0],
        Conditioning::none(),
        &mut noise(),
    ));
    assert!(err.contains("taus["), "{err}");
    let err = err_of(sdedit(
        &f,
        &y,
        90.0,
        &[],
        RANGE,
        Conditioning::none(),
        &mut noise(),
    ));
    assert!(err.contains("tau_start"), "{err}");
    let err = err_of(sdedit(
        &f,
        &y,
        10.0,
        &[10.0],
        RANGE,
        Conditioning::none(),
        &mut noise(),
    ));
    assert!(err.contains("taus["), "{err}");
    let err = err_of(zero_shot_edit(
        &f,
        &y,
        &Identity,
        &pixel_mask,
        NoiseRange {
            sigma_min: EPS,
            sigma_max: 0.001,
        },
        &[],
        Conditioning::none(),
        &mut noise(),
    ));
    assert!(err.contains("sigma_max"), "{err}");

    // Batch sizes and shapes.
    let class = Tensor::zeros([3], (Kind::Int64, Device::Cpu));
    let err = err_of(zero_shot_edit(
        &f,
        &y,
        &Identity,
        &pixel_mask,
        RANGE,
        &[],
        Conditioning::class(&class),
        &mut noise(),
    ));
    assert!(err.contains("class"), "{err}");
    let err = err_of(denoise(&f, &y.get(0), 1.0, RANGE, Conditioning::none()));
    assert!(err.contains("x_noisy"), "{err}");
    let err = err_of(interpolate(
        &f,
        &y.get(0),
        &y.get(1),
        1,
        T,
        Conditioning::none(),
    ));
    assert!(err.contains("steps"), "{err}");
    let err = err_of(interpolate(&f, &y, &y, 3, T, Conditioning::none()));
    assert!(err.contains("z0"), "{err}");

    // Mask builders.
    assert!(box_mask(8, 8, 6, 0, 4, 2)
        .unwrap_err()
        .to_string()
        .contains("box"));
    assert!(box_mask(0, 8, 0, 0, 1, 1).is_err());
    assert!(stroke_mask(8, 8, 1, 0.0, 1)
        .unwrap_err()
        .to_string()
        .contains("width"));
    assert!(mask_from_values(&[0; 5], 2, 3)
        .unwrap_err()
        .to_string()
        .contains("mask.values"));
    assert!(mask_from_image(&Tensor::zeros([2, 1, 4, 4], (Kind::Float, Device::Cpu))).is_err());

    // Nothing above evaluated the network.
    assert_eq!(f.calls.get(), 0);
}
