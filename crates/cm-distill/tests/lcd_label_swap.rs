//! LCD's label swapping (`[lcd] label_swap`): over 200,000 labels per
//! guidance scale the share replaced matches `exp(-r max(w + 1, 0))` of
//! the closed form (a swap draws a class uniformly, so 9 in 10 swaps
//! change the label) within 5 standard errors, swapped labels are uniform
//! over the classes, and the rate is read, checked and written only when
//! set.

mod common;

use cm_distill::{swap_labels, LcdConfig};
use tch::{Device, Kind, Tensor};

const LABELS: i64 = 200_000;
const CLASSES: i64 = 10;

fn check_share(what: &str, got: f64, want: f64) {
    common::assert_share_within_5_se(what, got, want, LABELS as f64);
}

#[test]
fn swap_share_follows_the_guidance_scale() {
    let rate = 0.88;
    for (seed, w) in [
        (0, -2.0),
        (1, -1.0),
        (2, -0.5),
        (3, 0.0),
        (4, 1.0),
        (5, 3.0),
    ] {
        tch::manual_seed(seed);
        let labels = Tensor::full([LABELS], 3, (Kind::Int64, Device::Cpu));
        let scales = Tensor::full([LABELS], w, (Kind::Float, Device::Cpu));
        let out = swap_labels(&labels, &scales, rate, CLASSES);
        assert_eq!(out.kind(), Kind::Int64);
        let changed = out.ne(3).sum(Kind::Int64).int64_value(&[]) as f64 / LABELS as f64;
        let p = (-rate * f64::max(w + 1.0, 0.0)).exp();
        check_share(&format!("changed at w = {w}"), changed, p * 0.9);
        // Nothing outside the classes.
        assert!(out.min().int64_value(&[]) >= 0 && out.max().int64_value(&[]) < CLASSES);
    }
}

#[test]
fn swapped_labels_are_uniform_and_per_example() {
    tch::manual_seed(7);
    // At w <= -1 every label is swapped: the result is independent of
    // the input, uniform over the classes.
    let labels = Tensor::full([LABELS], 0, (Kind::Int64, Device::Cpu));
    let scales = Tensor::full([LABELS], -1.0, (Kind::Float, Device::Cpu));
    let out = swap_labels(&labels, &scales, 2.0, CLASSES);
    let counts = Vec::<i64>::try_from(&out.bincount::<Tensor>(None, CLASSES)).unwrap();
    for (class, &count) in counts.iter().enumerate() {
        check_share(
            &format!("share of class {class}"),
            count as f64 / LABELS as f64,
            0.1,
        );
    }
    // Per example: a large w keeps its label, w = -1 beside it does not
    // necessarily (each example draws on its own scale).
    let labels = Tensor::from_slice(&[4i64, 4, 4, 4]).repeat([LABELS / 4]);
    let scales = Tensor::from_slice(&[40.0f32, -1.0, 40.0, -1.0]).repeat([LABELS / 4]);
    let out = swap_labels(&labels, &scales, 1.0, CLASSES).view([LABELS / 4, 4]);
    let kept = out.select(1, 0).eq(4).all().int64_value(&[]);
    assert_eq!(kept, 1, "exp(-41) swaps nothing in 50,000 draws");
    let changed = out.select(1, 1).ne(4).sum(Kind::Int64).int64_value(&[]) as f64;
    let n = (LABELS / 4) as f64;
    let se = (0.09 / n).sqrt();
    assert!((changed / n - 0.9).abs() <= 5.0 * se, "{}", changed / n);
}

#[test]
fn rate_is_checked_and_written_only_when_set() {
    let text = toml::to_string(&LcdConfig::default()).unwrap();
    assert!(!text.contains("label_swap"), "{text}");
    let parse = |text: &str| -> Result<LcdConfig, String> {
        let config: LcdConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate_at("lcd.").map_err(|e| e.to_string())?;
        Ok(config)
    };
    let config = parse("label_swap = 0.88\n").unwrap();
    assert_eq!(config.label_swap, Some(0.88));
    assert!(toml::to_string(&config)
        .unwrap()
        .contains("label_swap = 0.88"));
    for bad in ["0.0", "-1.0", "nan", "101.0"] {
        let err = parse(&format!("label_swap = {bad}\n")).unwrap_err();
        assert!(err.contains("lcd.label_swap"), "{bad}: {err}");
    }
}
