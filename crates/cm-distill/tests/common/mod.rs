//! Helpers shared by cm-distill's integration tests.

/// A feature network small enough for a test's FID search (seconds to
/// train); the presets use cm-eval's default.
#[allow(dead_code)]
pub fn tiny_feature_network() -> cm_eval::ClassifierConfig {
    cm_eval::ClassifierConfig {
        channels: [4, 8, 8],
        features: 16,
        steps: 20,
        ..Default::default()
    }
}

/// Asserts that an observed share `got` of `draws` Bernoulli draws lies
/// within 5 standard errors of the expected `want` (the standard error
/// floored at 1e-6, so a share of 0 or 1 is checked exactly enough).
#[allow(dead_code)]
pub fn assert_share_within_5_se(what: &str, got: f64, want: f64, draws: f64) {
    let se = (want * (1.0 - want) / draws).sqrt().max(1e-6);
    assert!(
        (got - want).abs() <= 5.0 * se,
        "{what}: {got}, expected {want} (5 se = {})",
        5.0 * se
    );
}
