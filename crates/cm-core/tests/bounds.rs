//! Sizes and noise levels a config can set are bounded: a `sigma_max` that
//! f32 cannot carry (1e300 passed validation and panicked in tch after a
//! whole training run), grids of a billion points (19.6 GB), and sampling
//! grids of 2^32 steps (a 34 GB allocation) are refused with the field named.

use cm_core::{
    ConsistencyConfig, EdmConfig, FixedSchedule, KarrasGrid, NoiseRange, MAX_GRID_POINTS, MAX_SIGMA,
};

#[test]
fn noise_levels_must_fit_f32_arithmetic() {
    let edm = EdmConfig {
        sigma_max: 1e300,
        ..EdmConfig::default()
    };
    let err = edm.validate_at("edm.").unwrap_err().to_string();
    assert!(
        err.contains("edm.sigma_max") && err.contains("1e5"),
        "{err}"
    );
    let cm = ConsistencyConfig {
        sigma_max: 1e300,
        ..ConsistencyConfig::default()
    };
    assert!(cm.validate_at("").is_err());
    let cm = ConsistencyConfig {
        sigma_data: 1e200,
        ..ConsistencyConfig::default()
    };
    let err = cm.validate_at("c.").unwrap_err().to_string();
    assert!(err.contains("c.sigma_data"), "{err}");
    assert!(NoiseRange::new(0.002, 1e300).is_err());
    // The limit itself is accepted, and its square stays finite in f32.
    assert!(NoiseRange::new(0.002, MAX_SIGMA).is_ok());
    assert!((MAX_SIGMA as f32).powi(2).is_finite());
}

#[test]
fn grid_sizes_are_bounded() {
    let fixed = FixedSchedule {
        n: 1_000_000_000,
        mu: 0.95,
    };
    let err = fixed
        .validate("cd.recipe.schedule.")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cd.recipe.schedule.n"), "{err}");
    let grid = KarrasGrid::default();
    assert!(grid.sampling_sigmas(4_294_967_295).is_err());
    assert!(grid.training_sigmas(1_000_000_000).is_err());
    assert_eq!(
        grid.sampling_sigmas(MAX_GRID_POINTS).unwrap().len(),
        MAX_GRID_POINTS + 1
    );
}
