//! Helpers shared by cm-distill's integration tests.

/// A feature network small enough for a test's FID search (seconds to
/// train); the presets use cm-eval's default.
pub fn tiny_feature_network() -> cm_eval::ClassifierConfig {
    cm_eval::ClassifierConfig {
        channels: [4, 8, 8],
        features: 16,
        steps: 20,
        ..Default::default()
    }
}
