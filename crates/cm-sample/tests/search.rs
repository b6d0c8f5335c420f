//! The timestep search against metrics with known minima.

use cm_core::CoreError;
use cm_core::NoiseRange;
use cm_sample::search::{search_start, search_timesteps, SearchConfig};

/// CM's noise range `[0.002, 80]`.
const RANGE: NoiseRange = NoiseRange {
    sigma_min: 0.002,
    sigma_max: 80.0,
};

fn config() -> SearchConfig {
    SearchConfig::for_range(RANGE)
}

#[test]
fn finds_the_minimum_of_a_two_step_metric() {
    for optimum in [0.05, 0.821, 3.0, 20.0] {
        let mut calls = 0;
        let result = search_timesteps::<CoreError>(2, RANGE, &config(), &mut |taus| {
            calls += 1;
            assert_eq!(taus.len(), 1);
            Ok((taus[0].ln() - f64::ln(optimum)).powi(2) + 1.5)
        })
        .unwrap();
        let (k, best) = &result.best[0];
        assert_eq!(*k, 2);
        // Bracket [0.01, 40] in ln: 8.29 wide; after 2 + 10 probes the
        // minimiser is within 0.618^10 * 8.29 = 0.067 of the optimum in ln tau.
        let err = (best.taus[0] / optimum).ln().abs();
        assert!(
            err < 0.07,
            "optimum {optimum}: found {:?} ({err})",
            best.taus
        );
        assert!((best.score - 1.5 - err * err).abs() < 1e-12);
        assert_eq!(calls, 12);
        assert_eq!(result.probes.len(), 12);
        // The reported best is the smallest probe.
        let min = result
            .probes
            .iter()
            .map(|p| p.score)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(best.score, min);
    }
}

#[test]
fn greedy_three_step_search_fixes_the_first_time() {
    let result = search_timesteps::<CoreError>(3, RANGE, &config(), &mut |taus| {
        let first = (taus[0].ln() - 2f64.ln()).powi(2);
        Ok(match taus {
            [_] => first,
            [_, t2] => first + (t2.ln() - 0.3f64.ln()).powi(2),
            _ => unreachable!("at most two times"),
        })
    })
    .unwrap();
    assert_eq!(result.best.len(), 2);
    let (_, two) = &result.best[0];
    let (k, three) = &result.best[1];
    assert_eq!(*k, 3);
    assert_eq!(three.taus.len(), 2);
    // The 3-step search keeps the 2-step time and searches below it.
    assert_eq!(three.taus[0], two.taus[0]);
    assert!((three.taus[1] / 0.3).ln().abs() < 0.07, "{:?}", three.taus);
    assert!(result.probes[12..].iter().all(|p| p.taus[1] < p.taus[0]));
    assert_eq!(result.probes.len(), 24);
}

#[test]
fn a_minimum_at_the_edge_is_approached() {
    // Monotone metric: the best time is the bracket's lower end.
    let result = search_timesteps::<CoreError>(2, RANGE, &config(), &mut |t| Ok(t[0])).unwrap();
    let tau = result.best[0].1.taus[0];
    assert!(tau > 0.01 && (tau / 0.01).ln() < 0.07, "{tau}");
}

#[test]
fn bad_settings_and_metric_errors() {
    let mut ok = |_: &[f64]| Ok::<f64, CoreError>(0.0);
    let e = search_timesteps(1, RANGE, &config(), &mut ok).unwrap_err();
    assert!(e.to_string().contains("steps"), "{e}");
    let bad = SearchConfig {
        lower: 0.001,
        ..config()
    };
    let e = search_timesteps(2, RANGE, &bad, &mut ok).unwrap_err();
    assert!(e.to_string().contains("bracket"), "{e}");
    let e = search_timesteps(2, RANGE, &config(), &mut |_| {
        Err(CoreError::invalid("metric", "nan", "a number"))
    })
    .unwrap_err();
    assert!(e.to_string().contains("metric"), "{e}");
}

#[test]
fn start_search_finds_an_inner_minimum_and_keeps_sigma_max_otherwise() {
    // A minimum inside [5, 80]: found to within the last bracket.
    for optimum in [10.0, 40.0] {
        let mut calls = 0;
        let found = search_start::<CoreError>(RANGE, 5.0, 10, &mut |t| {
            calls += 1;
            assert!((5.0..=80.0).contains(&t), "{t}");
            Ok((t.ln() - f64::ln(optimum)).powi(2))
        })
        .unwrap();
        // ln 80 - ln 5 = 2.77 wide; 0.618^10 of it = 0.023.
        assert!(
            (found.start / optimum).ln().abs() < 0.025,
            "{optimum}: {found:?}"
        );
        assert_eq!(calls, 1 + 2 + 10);
        assert_eq!(found.probes.len(), calls);
        assert_eq!(found.probes[0].0, RANGE.sigma_max);
        let min = found
            .probes
            .iter()
            .map(|p| p.1)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(found.score, min);
    }
    // A metric falling all the way to sigma_max: the paper's start is kept
    // (golden-section never probes the bracket's ends; sigma_max is probed).
    let found = search_start::<CoreError>(RANGE, 5.0, 6, &mut |t| Ok(-t)).unwrap();
    assert_eq!((found.start, found.score), (80.0, -80.0));
    // Ties keep sigma_max too.
    let found = search_start::<CoreError>(RANGE, 5.0, 6, &mut |_| Ok(1.0)).unwrap();
    assert_eq!(found.start, 80.0);
}

#[test]
fn start_search_refuses_a_bracket_outside_the_range() {
    for lower in [0.001, 80.0, 100.0, f64::NAN] {
        let err = search_start::<CoreError>(RANGE, lower, 5, &mut |_| Ok(0.0)).unwrap_err();
        assert!(err.to_string().contains("start_lower"), "{lower}: {err}");
    }
    let err = search_start::<CoreError>(RANGE, 5.0, 0, &mut |_| Ok(0.0)).unwrap_err();
    assert!(err.to_string().contains("rounds"), "{err}");
}

/// Sum over `targets` of the product of the distances in `ln tau` from
/// the target to every time: 0 exactly when every target is among the
/// times. As a function of one new time `u` with the others fixed it is
/// `sum_j c_j |u - ln t_j|`, convex (golden-section finds its minimum in
/// any gap), `c_j` the product of target `j`'s distances to the other
/// times: a target already hit weighs nothing, and the new time goes to
/// the weighted median of the rest.
fn product_of_distances(taus: &[f64], targets: &[f64]) -> f64 {
    targets
        .iter()
        .map(|t| {
            taus.iter()
                .map(|tau| (tau.ln() - t.ln()).abs())
                .product::<f64>()
        })
        .sum()
}

#[test]
fn insertion_finds_times_above_the_earlier_ones_where_cm_order_cannot() {
    // The shape the LCM measured (docs/lcm.md): 2-step best near 1.27,
    // then the 4-step set [2.5, 1.27, 0.74] puts a time above it.
    let targets = [2.5, 1.27, 0.74];
    let run = |insert: bool| {
        let config = SearchConfig {
            insert,
            rounds: 20,
            ..config()
        };
        search_timesteps::<CoreError>(4, RANGE, &config, &mut |taus| {
            assert!(
                taus.windows(2).all(|w| w[0] > w[1]),
                "times decrease: {taus:?}"
            );
            Ok(product_of_distances(taus, &targets))
        })
        .unwrap()
    };
    let inserted = run(true);
    // 2 steps: the median target, as CM's order finds too.
    let two = &inserted.best[0].1;
    assert!((two.taus[0] / 1.27).ln().abs() < 1e-3, "{:?}", two.taus);
    // 3 steps: 2.5 (ln 0.68 from 1.27) outweighs 0.74 (0.54), so the new
    // time goes above the first; 4 steps: the last one below.
    let three = &inserted.best[1].1;
    assert!((three.taus[0] / 2.5).ln().abs() < 1e-3, "{:?}", three.taus);
    let (k, four) = &inserted.best[2];
    assert_eq!(*k, 4);
    for (found, want) in four.taus.iter().zip(targets) {
        assert!((found / want).ln().abs() < 1e-3, "{:?}", four.taus);
    }
    assert!(four.score < 3e-3, "{}", four.score);
    // Each step count searches every gap: 1, 2 then 3 gaps of 22 probes.
    assert_eq!(inserted.probes.len(), (1 + 2 + 3) * 22);
    // CM's order searches below the previous time only: 2.5 is never
    // reached (the cost falls towards it, so each time found sits just
    // below the one before), and the cost stays far from 0.
    let cm = run(false);
    let (_, cm_four) = &cm.best[2];
    assert!(
        cm_four.taus.iter().all(|t| *t <= 1.28),
        "{:?}",
        cm_four.taus
    );
    assert!(cm_four.score > 0.3, "{}", cm_four.score);
    assert_eq!(cm.probes.len(), 3 * 22);
}
