//! LCD's per-example guidance scales (`[lcd] w_sampler`): over 200,000
//! draws the empirical CDF of `GuidanceSampler::scales` matches the closed
//! form of each distribution within 5 standard errors, the uniform draw is
//! LCM's `U[w_min, w_max]` exactly, and bad parameters are refused by
//! field name.

mod common;

use cm_distill::{GuidanceSampler, LcdConfig};
use tch::{Device, Kind, Tensor};

const DRAWS: i64 = 200_000;

/// Draws `DRAWS` scales and returns them sorted ascending.
fn draws(sampler: GuidanceSampler, w_min: f64, w_max: f64, seed: i64) -> Vec<f64> {
    tch::manual_seed(seed);
    let u = Tensor::rand([DRAWS], (Kind::Float, Device::Cpu));
    let w = sampler.scales(&u, w_min, w_max).to_kind(Kind::Double);
    let mut w = Vec::<f64>::try_from(&w).unwrap();
    w.sort_by(f64::total_cmp);
    w
}

/// `P(w <= x)` from the sorted draws.
fn empirical_cdf(sorted: &[f64], x: f64) -> f64 {
    sorted.partition_point(|&w| w <= x) as f64 / sorted.len() as f64
}

fn check_cdf(sorted: &[f64], points: &[f64], cdf: impl Fn(f64) -> f64) {
    for &x in points {
        let (want, got) = (cdf(x), empirical_cdf(sorted, x));
        common::assert_share_within_5_se(&format!("P(w <= {x})"), got, want, DRAWS as f64);
    }
}

#[test]
fn split_bands_follow_their_cdf() {
    let (w_min, w_max, at, below) = (-1.0, 4.5, 1.0, 0.6);
    let sorted = draws(GuidanceSampler::Split { at, below }, w_min, w_max, 0);
    assert!(sorted[0] >= w_min && *sorted.last().unwrap() <= w_max);
    // Piecewise linear: slope below / 2 on [-1, 1), 0.4 / 3.5 on [1, 4.5].
    let cdf = |x: f64| {
        if x < at {
            below * (x - w_min) / (at - w_min)
        } else {
            below + (1.0 - below) * (x - at) / (w_max - at)
        }
    };
    check_cdf(
        &sorted,
        &[-0.9, -0.5, 0.0, 0.5, 0.99, 1.5, 2.0, 3.0, 4.0, 4.4],
        cdf,
    );
    // The band below the split holds `below` of the draws: 60%, where the
    // uniform draw would put 2 / 5.5 = 36%.
    let share = empirical_cdf(&sorted, at - 1e-9);
    assert!((share - 0.6).abs() < 0.005, "share below the split {share}");
}

#[test]
fn uniform_is_lcm_draw() {
    let sorted = draws(GuidanceSampler::Uniform, -1.0, 4.5, 1);
    check_cdf(&sorted, &[-0.5, 0.0, 1.0, 2.0, 3.0, 4.0], |x| {
        (x + 1.0) / 5.5
    });
    // Exactly LCM's affine map of the same uniform numbers.
    tch::manual_seed(2);
    let u = Tensor::rand([16], (Kind::Float, Device::Cpu));
    let w = GuidanceSampler::Uniform.scales(&u, 0.0, 3.0);
    let expected = &u * 3.0;
    assert_eq!(
        Vec::<f32>::try_from(&w).unwrap(),
        Vec::<f32>::try_from(&expected).unwrap()
    );
}

#[test]
fn config_reads_checks_and_keeps_uniform_configs_unchanged() {
    // A uniform config serialises without the field, so the folders keyed
    // by the configs of earlier runs keep their names.
    let text = toml::to_string(&LcdConfig::default()).unwrap();
    assert!(!text.contains("w_sampler"), "{text}");

    // The `[lcd]` section as a config file holds it, checked as on load.
    let with = |sampler: &str| format!("w_min = -1.0\nw_max = 4.5\nw_sampler = {sampler}\n");
    let parse = |text: &str| -> Result<LcdConfig, String> {
        let config: LcdConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate_at("lcd.").map_err(|e| e.to_string())?;
        Ok(config)
    };

    let config = parse(&with(r#"{ kind = "split", at = 1.0, below = 0.6 }"#)).unwrap();
    assert_eq!(
        config.w_sampler,
        GuidanceSampler::Split {
            at: 1.0,
            below: 0.6
        }
    );
    let written = toml::to_string(&config).unwrap();
    assert!(written.contains("split"), "{written}");

    let (lo, hi) = (config.w_min, config.w_max);
    let outside = parse(&with(&format!(
        "{{ kind = \"split\", at = {hi}, below = 0.6 }}"
    )))
    .unwrap_err();
    assert!(
        outside.contains("lcd.w_sampler.at"),
        "{outside} ({lo}, {hi})"
    );
    let share = parse(&with(r#"{ kind = "split", at = 1.0, below = 1.0 }"#)).unwrap_err();
    assert!(share.contains("lcd.w_sampler.below"), "{share}");
    let unknown = parse(&with(
        r#"{ kind = "split", at = 1.0, below = 0.5, above = 0.5 }"#,
    ))
    .unwrap_err();
    assert!(unknown.contains("above"), "{unknown}");
}
