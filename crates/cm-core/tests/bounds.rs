//! Sizes and noise levels a config can set are bounded: a `sigma_max` that
//! f32 cannot carry (1e300 passed validation and panicked in tch after a
//! whole training run), grids of a billion points (19.6 GB), and sampling
//! grids of 2^32 steps (a 34 GB allocation) are refused with the field named.

use cm_core::{
    ConsistencyConfig, EdmConfig, FixedSchedule, KarrasGrid, NoiseRange, MAX_GRID_POINTS,
    MAX_SIGMA, MIN_SIGMA,
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
    // The lower end: 1e-300 is 0 in f32 (ln(sigma) -inf); the smallest
    // level allowed keeps its square a normal f32 and shows in data near 1.
    let cm = ConsistencyConfig {
        sigma_min: 1e-300,
        ..ConsistencyConfig::default()
    };
    let err = cm.validate_at("c.").unwrap_err().to_string();
    assert!(err.contains("c.sigma_min"), "{err}");
    let edm = EdmConfig {
        sigma_data: 1e-300,
        ..EdmConfig::default()
    };
    let err = edm.validate_at("edm.").unwrap_err().to_string();
    assert!(err.contains("edm.sigma_data"), "{err}");
    assert!(NoiseRange::new(1e-300, 80.0).is_err());
    assert!(NoiseRange::new(MIN_SIGMA, 80.0).is_ok());
    assert!((MIN_SIGMA as f32).powi(2) >= f32::MIN_POSITIVE);
    assert!(1.0f32 - (MIN_SIGMA as f32) < 1.0);
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

/// Config reads are bounded and do not echo foreign files: `/dev/zero` is
/// refused before reading, an oversized file by its size, and a `.toml`
/// linked to a non-TOML file fails without quoting that file's lines.
#[test]
fn config_files_are_regular_bounded_and_not_echoed() {
    let err = cm_core::load_toml::<EdmConfig>("/dev/zero")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; cm_core::MAX_CONFIG_BYTES as usize + 1]).unwrap();
    let err = cm_core::load_toml::<EdmConfig>(&big)
        .unwrap_err()
        .to_string();
    assert!(err.contains("limit"), "{err}");
    let secret = dir.path().join("passwd");
    std::fs::write(&secret, "root:x:0:0:secret-line:/root:/bin/bash\n").unwrap();
    let link = dir.path().join("sidecar.toml");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let err = cm_core::load_toml::<EdmConfig>(&link)
        .unwrap_err()
        .to_string();
    assert!(!err.contains("secret-line"), "{err}");
    assert!(err.contains("sidecar.toml"), "{err}");
    // Nor through an include of the linked file.
    let outer = dir.path().join("outer.toml");
    std::fs::write(&outer, "include = \"passwd\"\n").unwrap();
    let err = cm_core::load_toml::<EdmConfig>(&outer)
        .unwrap_err()
        .to_string();
    assert!(!err.contains("secret-line"), "{err}");
    // A real .toml with an error still shows the line, which helps.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "sigma_data = = 1\n").unwrap();
    let err = cm_core::load_toml::<EdmConfig>(&bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sigma_data = = 1"), "{err}");
}
